"""PyTorch eager (or torch.compile) backend of the Session interface: the reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stn_deploy.runtime.session import Session, SessionError, TensorSpec

__all__ = ["TorchSession"]


class TorchSession(Session):
    """Runs an ``nn.Module`` in inference mode on numpy feeds.

    The module takes one tensor per input (in ``inputs`` order) and returns a tensor, a tuple,
    or a dict; its outputs are named by ``output_names`` in that order (dicts by key).
    ``compile=True`` wraps it in ``torch.compile``. The caller builds the module (runtime does not
    import training code).
    """

    backend = "torch"

    def __init__(
        self,
        module,
        inputs: Sequence[TensorSpec],
        output_names: Sequence[str] = ("logits",),
        *,
        device: str = "cpu",
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self._input_specs = tuple(inputs)
        self._output_names = tuple(output_names)
        self.device = device
        self.compile = compile
        self.threads = threads
        self._fn = None

    def _open(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.module = self.module.eval().to(self.device)
        self._fn = torch.compile(self.module) if self.compile else self.module
        self.inputs = self._input_specs
        self.outputs = self._probe_outputs()

    def _probe_outputs(self) -> tuple[TensorSpec, ...]:
        """Output specs from one sample of zeros: a module does not declare its output shapes,
        and clients read them from the model's metadata (with torch.compile this is also the
        compilation, at open rather than on the first request). Inputs with a dynamic dimension
        past the batch cannot be probed; their outputs stay rank-unknown."""
        if not all(isinstance(d, int) for s in self.inputs for d in s.shape[1:]):
            return tuple(TensorSpec(n, (None,), "float32") for n in self._output_names)
        zeros = {s.name: np.zeros((1, *s.shape[1:]), s.dtype) for s in self.inputs}
        outs = self._infer(zeros)
        return tuple(
            TensorSpec(n, (None, *outs[n].shape[1:]), outs[n].dtype.name)
            for n in self._output_names
        )

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(feeds[s.name]).to(self.device) for s in self.inputs]
        try:
            with torch.inference_mode():
                result = self._fn(*args)
        except RuntimeError as exc:
            raise SessionError(f"PyTorch failed to run the batch: {exc}") from exc
        if isinstance(result, dict):
            values = [result[n] for n in self._output_names]
        elif isinstance(result, (tuple, list)):
            values = list(result)[: len(self._output_names)]
        else:
            values = [result]
        return {
            n: v.detach().float().cpu().numpy() for n, v in zip(self._output_names, values)
        }
