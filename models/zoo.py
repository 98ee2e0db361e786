"""The model zoo: STNs and their baselines, built by name from a JSON-able config.

Every model takes raw pixels in [0, 1] ([N, C, H, W]); the mean/std normalisation happens
inside, so an exported model needs no preprocessing. ``forward(x)`` returns class scores
[N, num_classes]; a spatial transformer model's ``forward(x, return_aux=True)`` also returns
``{"theta": ..., "warped": ...}``: theta in the warp's natural shape (2x3, 3x3, or K control
points) and the warped image in raw pixel units. Warping goes only through
:mod:`stn_deploy.models.sampling`; every localisation net ends in a linear layer with zero
weight and the warp's identity parameters as bias, so training starts at the identity.

Architectures (``ARCHS``):

- ``tutorial``: the PyTorch STN tutorial's ``Net`` with the tutorial's parameter names, so its
  state_dict loads unchanged (see :func:`convert_tutorial_state_dict`). It returns
  log-probabilities, as the tutorial does (valid logits: softmax/argmax are unchanged).
- ``cnn`` / ``fcn``: the paper's baselines (two conv+pool layers / three dense layers).
- ``st-cnn`` / ``st-fcn``: one spatial transformer in front of that classifier.
- ``st2-cnn``: two transformers in parallel on the same input; their outputs are concatenated
  along channels for the classifier. Aux: theta stacked [N, 2, ...], warped [N, 2*C, Ho, Wo]
  (transformer 0's channels first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn_deploy.models.errors import ModelError
from stn_deploy.models.sampling import WARPS, SamplerConfig, TPSWarp, Warp

__all__ = [
    "ARCHS",
    "MNIST_MEAN",
    "MNIST_STD",
    "build_model",
    "convert_tutorial_state_dict",
    "TutorialSTN",
    "CNN",
    "FCN",
    "STCNN",
    "STFCN",
    "ST2CNN",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class Normalize(nn.Module):
    """(x - mean) / std per channel; constants are not weights (not in the state_dict)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> list[float]:
    values = [float(value)] * channels if isinstance(value, int | float) else list(value)
    if len(values) != channels:
        raise ModelError(f"{name} has {len(values)} values for {channels} channels; e.g. [0.5]")
    return values


def _make_warp(
    transform: str,
    out_hw: tuple[int, int],
    sampler: Mapping[str, Any] | None,
    tps_grid: Sequence[int],
) -> Warp:
    if transform not in WARPS:
        raise ModelError(
            f"unknown transform {transform!r}; choose one of {sorted(WARPS)}, e.g. 'affine'"
        )
    config = SamplerConfig(**(sampler or {}))
    if transform == "tps":
        return TPSWarp(out_hw, config, grid_size=(int(tps_grid[0]), int(tps_grid[1])))
    return WARPS[transform](out_hw, config)


def _regressor(in_features: int, warp: Warp) -> nn.Linear:
    """The localisation net's last layer: zero weight, identity bias."""
    layer = nn.Linear(in_features, warp.num_params)
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.copy_(warp.identity_params())
    return layer


def _flat_size(net: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(net(torch.zeros(1, *shape)).flatten(1).shape[1])


class ZooModel(nn.Module):
    """Common constructor state: input shape, class count, normalisation."""

    arch = ""

    def __init__(
        self,
        in_channels: int = 1,
        input_hw: Sequence[int] = (28, 28),
        num_classes: int = 10,
        mean: float | Sequence[float] = MNIST_MEAN,
        std: float | Sequence[float] = MNIST_STD,
    ) -> None:
        super().__init__()
        self.input_shape = (int(in_channels), int(input_hw[0]), int(input_hw[1]))
        self.num_classes = int(num_classes)
        self.norm = Normalize(
            _per_channel(mean, in_channels, "mean"), _per_channel(std, in_channels, "std")
        )

    def localisation_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the lower learning rate (none for a plain classifier)."""
        return []


def _conv_features(in_channels: int, widths: Sequence[int], kernel: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel, padding=kernel // 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_channels = width
    return nn.Sequential(*layers)


class CNN(ZooModel):
    """The paper's CNN baseline, small: two (conv, ReLU, max-pool) blocks and two dense layers."""

    arch = "cnn"

    def __init__(self, widths: Sequence[int] = (16, 32), hidden: int = 64, **common: Any) -> None:
        super().__init__(**common)
        self.classifier = _Classifier("cnn", self.input_shape, self.num_classes, widths, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.norm(x))


class FCN(ZooModel):
    """The paper's FCN baseline: three ReLU dense layers."""

    arch = "fcn"

    def __init__(self, hidden: int = 128, **common: Any) -> None:
        super().__init__(**common)
        self.classifier = _Classifier("fcn", self.input_shape, self.num_classes, (), hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.norm(x))


class _Classifier(nn.Module):
    """The CNN or FCN body shared by the baselines and the ST models."""

    def __init__(
        self,
        kind: str,
        shape: tuple[int, int, int],
        num_classes: int,
        widths: Sequence[int],
        hidden: int,
    ) -> None:
        super().__init__()
        if kind == "cnn":
            self.features = _conv_features(shape[0], widths, kernel=5)
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(_flat_size(self.features, shape), hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(0.3),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.features = nn.Flatten()
            size = shape[0] * shape[1] * shape[2]
            self.head = nn.Sequential(
                nn.Linear(size, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class _Localiser(nn.Module):
    """A localisation net: CNN or FCN features, then the identity-initialised regressor."""

    def __init__(self, kind: str, shape: tuple[int, int, int], warp: Warp, hidden: int) -> None:
        super().__init__()
        if kind == "cnn":
            self.features = nn.Sequential(
                nn.Conv2d(shape[0], 16, 5),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
                nn.Conv2d(16, 32, 5),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
                nn.Flatten(),
            )
        else:
            self.features = nn.Flatten()
        self.hidden = nn.Sequential(
            nn.Linear(_flat_size(self.features, shape), hidden), nn.ReLU(inplace=True)
        )
        self.regressor = _regressor(hidden, warp)

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(self.hidden(self.features(x)))


class _SpatialTransformerModel(ZooModel):
    """One or more transformers in parallel, then a CNN or FCN classifier.

    Order of operations: the localisation net sees the normalised input, the warp reads the
    raw input (so zero padding is the black background) and the classifier sees the
    normalised warped image.
    """

    kind = "cnn"
    num_transformers = 1

    def __init__(
        self,
        transform: str = "affine",
        out_hw: Sequence[int] | None = None,
        sampler: Mapping[str, Any] | None = None,
        tps_grid: Sequence[int] = (4, 4),
        loc_hidden: int = 64,
        widths: Sequence[int] = (16, 32),
        hidden: int = 64,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        c, h, w = self.input_shape
        self.transform = transform
        out = (int(out_hw[0]), int(out_hw[1])) if out_hw else (h, w)
        self.warps = nn.ModuleList(
            _make_warp(transform, out, sampler, tps_grid) for _ in range(self.num_transformers)
        )
        self.localisers = nn.ModuleList(
            _Localiser(self.kind, self.input_shape, warp, loc_hidden) for warp in self.warps
        )
        self.post_norm = Normalize(self.norm.mean.flatten().tolist() * self.num_transformers,
                                   self.norm.std.flatten().tolist() * self.num_transformers)
        shape = (c * self.num_transformers, *out)
        if self.kind == "cnn":
            self.classifier = _Classifier("cnn", shape, self.num_classes, widths, hidden)
        else:
            self.classifier = _Classifier("fcn", shape, self.num_classes, (), hidden)

    def localisation_parameters(self) -> list[nn.Parameter]:
        return list(self.localisers.parameters())

    def forward(self, x: Tensor, return_aux: bool = False):
        normed = self.norm(x)
        warped, thetas = [], []
        for localiser, warp in zip(self.localisers, self.warps):
            out, theta = warp(x, localiser(normed))
            warped.append(out)
            thetas.append(theta)
        v = warped[0] if len(warped) == 1 else torch.cat(warped, dim=1)
        logits = self.classifier(self.post_norm(v))
        if not return_aux:
            return logits
        theta = thetas[0] if len(thetas) == 1 else torch.stack(thetas, dim=1)
        return logits, {"theta": theta, "warped": v}


class STCNN(_SpatialTransformerModel):
    """ST-CNN: a CNN localisation net and a spatial transformer in front of the CNN."""

    arch = "st-cnn"
    kind = "cnn"


class STFCN(_SpatialTransformerModel):
    """ST-FCN: an FCN localisation net and a spatial transformer in front of the FCN."""

    arch = "st-fcn"
    kind = "fcn"

    def __init__(self, hidden: int = 128, loc_hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(hidden=hidden, loc_hidden=loc_hidden, **kwargs)


class ST2CNN(_SpatialTransformerModel):
    """Two spatial transformers in parallel (the paper's 2xST-CNN), channels concatenated."""

    arch = "st2-cnn"
    kind = "cnn"
    num_transformers = 2


class TutorialSTN(ZooModel):
    """The PyTorch STN tutorial's ``Net``, parameter names included.

    Unlike the other models it warps the *normalised* image, exactly as the tutorial does
    (its DataLoader normalises before the model), so tutorial weights give tutorial outputs.
    ``warped`` in the aux dict is converted back to raw pixel units.
    """

    arch = "tutorial"

    def __init__(
        self,
        transform: str = "affine",
        sampler: Mapping[str, Any] | None = None,
        tps_grid: Sequence[int] = (4, 4),
        **common: Any,
    ) -> None:
        common.setdefault("input_hw", (28, 28))
        super().__init__(**common)
        c, h, w = self.input_shape
        if (h, w) != (28, 28):
            raise ModelError(f"the tutorial architecture takes 28x28 inputs, not {h}x{w}")
        self.transform = transform
        self.warp = _make_warp(transform, (h, w), sampler, tps_grid)
        self.localization = nn.Sequential(
            nn.Conv2d(c, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
        )
        self.fc_loc = nn.Sequential(
            nn.Linear(10 * 3 * 3, 32), nn.ReLU(True), _regressor(32, self.warp)
        )
        self.conv1 = nn.Conv2d(c, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, self.num_classes)

    def localisation_parameters(self) -> list[nn.Parameter]:
        return [*self.localization.parameters(), *self.fc_loc.parameters()]

    def forward(self, x: Tensor, return_aux: bool = False):
        x = self.norm(x)
        params = self.fc_loc(self.localization(x).flatten(1))
        v, theta = self.warp(x, params)
        y = F.relu(F.max_pool2d(self.conv1(v), 2))
        y = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(y)), 2))
        y = F.relu(self.fc1(y.flatten(1)))
        y = F.dropout(y, training=self.training)
        out = F.log_softmax(self.fc2(y), dim=1)
        if not return_aux:
            return out
        return out, {"theta": theta, "warped": self.norm.inverse(v)}


# Wrappers other tools add to parameter names: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def convert_tutorial_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a state_dict saved from the PyTorch tutorial's ``Net`` onto :class:`TutorialSTN`.

    :class:`TutorialSTN` keeps the tutorial's names (``localization.0.weight``,
    ``fc_loc.2.bias``, ``conv1.weight``, ``fc1.weight`` ...), so the mapping only strips the
    prefixes DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) add.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        out[name] = value
    return out


ARCHS: dict[str, type[ZooModel]] = {
    cls.arch: cls for cls in (TutorialSTN, CNN, FCN, STCNN, STFCN, ST2CNN)
}


def build_model(arch: str, **kwargs: Any) -> ZooModel:
    """Build ``ARCHS[arch](**kwargs)``; a bad name or argument is a :class:`ModelError`."""
    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
    try:
        return ARCHS[arch](**kwargs)
    except TypeError as exc:
        raise ModelError(f"bad arguments for architecture {arch!r}: {exc}") from exc
