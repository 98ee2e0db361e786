"""Zoo models build from their config, start at the identity warp, and load tutorial weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stn_deploy.models import ModelError, build_model
from stn_deploy.models.sampling import WARPS
from stn_deploy.models.zoo import ARCHS, TutorialSTN, convert_tutorial_state_dict

ST_ARCHS = ["tutorial", "st-cnn", "st-fcn", "st2-cnn"]


def _shapes(arch: str) -> list[tuple[int, int, int]]:
    return [(1, 28, 28)] if arch == "tutorial" else [(1, 28, 28), (3, 32, 24)]


@pytest.mark.parametrize("arch", ST_ARCHS)
@pytest.mark.parametrize("transform", sorted(WARPS))
def test_st_models_start_at_identity(arch, transform):
    for c, h, w in _shapes(arch):
        kwargs = {"transform": transform}
        if arch != "tutorial":
            kwargs.update(in_channels=c, input_hw=[h, w], mean=[0.5] * c, std=[0.25] * c)
        model = build_model(arch, **kwargs).eval()
        x = torch.rand(5, c, h, w)
        logits, aux = model(x, return_aux=True)
        assert logits.shape == (5, 10)
        torch.testing.assert_close(model(x), logits)
        k = 2 if arch == "st2-cnn" else 1
        assert aux["warped"].shape == (5, k * c, h, w)
        # Zero weight + identity bias: every transformer reproduces the raw input.
        torch.testing.assert_close(aux["warped"], x.repeat(1, k, 1, 1), atol=2e-5, rtol=0)
        warp = model.warp if arch == "tutorial" else model.warps[0]
        theta = aux["theta"] if k == 1 else aux["theta"][:, 0]
        expected = warp.to_theta(warp.identity_params()[None].expand(5, -1))
        torch.testing.assert_close(theta, expected)
        if k == 2:
            torch.testing.assert_close(aux["theta"][:, 1], expected)


@pytest.mark.parametrize("arch", ["cnn", "fcn"])
def test_baselines_classify_any_input_size(arch):
    model = build_model(arch, in_channels=3, input_hw=[60, 60], mean=0.5, std=0.2).eval()
    assert model(torch.rand(4, 3, 60, 60)).shape == (4, 10)
    assert model.localisation_parameters() == []


def test_normalisation_happens_inside():
    model = build_model("cnn", mean=0.3, std=0.2).eval()
    x = torch.rand(3, 1, 28, 28)
    shifted = build_model("cnn", mean=0.0, std=1.0).eval()
    shifted.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), shifted((x - 0.3) / 0.2))


def test_localisation_parameters_are_the_localiser():
    model = build_model("st-cnn", transform="projective")
    loc = {id(p) for p in model.localisation_parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in loc]
    assert names and all(n.startswith("localisers.") for n in names)
    assert names[-1].endswith("regressor.bias")


def test_unknown_arch_and_transform_are_model_errors():
    with pytest.raises(ModelError, match="unknown architecture 'resnet'"):
        build_model("resnet")
    with pytest.raises(ModelError, match="unknown transform 'shear'"):
        build_model("st-cnn", transform="shear")
    with pytest.raises(ModelError, match="bad arguments"):
        build_model("cnn", transform="affine")
    assert set(ARCHS) == {"tutorial", "cnn", "fcn", "st-cnn", "st-fcn", "st2-cnn"}


class _TutorialNet(nn.Module):
    """The PyTorch STN tutorial's Net, written out here the way the tutorial defines it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)
        self.localization = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=7), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2, stride=2), nn.ReLU(True),
        )
        self.fc_loc = nn.Sequential(nn.Linear(10 * 3 * 3, 32), nn.ReLU(True), nn.Linear(32, 6))

    def forward(self, x):  # x is already normalised, as the tutorial's DataLoader does
        theta = self.fc_loc(self.localization(x).view(-1, 90)).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size(), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.view(-1, 320)))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_tutorial_state_dict_loads_and_matches(prefix):
    ref = _TutorialNet().eval()
    with torch.no_grad():  # a non-identity transform, so the warp matters
        ref.fc_loc[2].weight.normal_(0, 0.05)
        ref.fc_loc[2].bias.copy_(torch.tensor([0.9, 0.2, 0.1, -0.15, 1.1, -0.05]))
    saved = {prefix + k: v.clone() for k, v in ref.state_dict().items()}
    expected_names = {"localization.0.weight", "localization.3.bias", "fc_loc.0.weight",
                      "fc_loc.2.bias", "conv1.weight", "conv2.bias", "fc1.weight", "fc2.bias"}
    assert expected_names <= set(convert_tutorial_state_dict(saved))
    ours = TutorialSTN().eval()
    ours.load_state_dict(convert_tutorial_state_dict(saved), strict=True)
    x = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(ours(x), ref((x - 0.1307) / 0.3081), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        _, aux = ours(x, return_aux=True)
    assert aux["theta"].shape == (6, 2, 3)
    # The aux image is the tutorial's warp of the normalised input, back in raw pixel units.
    normed = (x - 0.1307) / 0.3081
    grid = F.affine_grid(aux["theta"], list(x.shape), align_corners=False)
    expected = F.grid_sample(normed, grid, align_corners=False) * 0.3081 + 0.1307
    torch.testing.assert_close(aux["warped"], expected, atol=1e-5, rtol=1e-5)
