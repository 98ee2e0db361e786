"""Export and verify every shipped checkpoint and every ST-CNN transformer type on a test split.

    .venv/bin/python bench/verify_zoo.py [--out bench/results/verify_zoo.json] [--limit N]

Shipped checkpoints are verified in both flavours (plugin where its parts exist) and in fp16.
Transformer types without a trained checkpoint are built from the zoo with random weights whose
localisation regressor is perturbed away from the identity (a zero-weight regressor would only
ever test the identity grid), and verified on the same distorted digits.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

from stn_deploy.export.onnx_export import export_module
from stn_deploy.export.verify import load_test_split, verify
from stn_deploy.models import build_model, shipped_checkpoints
from stn_deploy.models.sampling import Warp
from stn_deploy.runtime.bench import environment

RANDOM_MODELS = [
    ("st-cnn", {"transform": "affine"}),
    ("st-cnn", {"transform": "attention"}),
    ("st-cnn", {"transform": "projective"}),
    ("st-cnn", {"transform": "tps"}),
    ("st-cnn", {"transform": "affine",
                "sampler": {"mode": "bicubic", "padding_mode": "reflection",
                            "align_corners": True}}),
    ("st-fcn", {"transform": "projective", "sampler": {"mode": "nearest"}}),
    ("st2-cnn", {"transform": "affine", "sampler": {"padding_mode": "border"}}),
]


def _perturb_localisers(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    counts = {w.num_params for w in model.modules() if isinstance(w, Warp)}
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear) and layer.out_features in counts:
                layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=gen))
    return model.eval()


def _plugin_available() -> bool:
    names = ("stn_deploy.export.plugin_flavour", "stn_deploy.plugins.ort_ops")
    return all(importlib.util.find_spec(n) is not None for n in names)


def _cases():
    from stn_deploy.models import load_model

    flavours = ["standard", "plugin"] if _plugin_available() else ["standard"]
    for name, path in sorted(shipped_checkpoints().items()):
        loaded = load_model(path)
        for flavour in flavours:
            yield name, loaded.model, loaded, flavour, "fp32"
        yield name, loaded.model, loaded, "standard", "fp16"
    for i, (arch, kwargs) in enumerate(RANDOM_MODELS):
        torch.manual_seed(i)  # reproducible random weights
        model = _perturb_localisers(build_model(arch, **kwargs), seed=i)
        label = f"{arch} {json.dumps(kwargs, sort_keys=True)} (random weights)"
        yield label, model, None, "standard", "fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/verify_zoo.json")
    parser.add_argument("--limit", type=int, default=None, help="first N test digits")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--distortion", default="R")
    args = parser.parse_args()
    records = []
    default_split = load_test_split(args.dataset, args.distortion, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model, loaded, flavour, precision) in enumerate(_cases()):
            split = default_split
            if loaded is not None and loaded.dataset:
                split = load_test_split(loaded.dataset, loaded.distortion, args.limit)
            t0 = time.perf_counter()
            shape = loaded.input_shape if loaded is not None else model.input_shape
            result = export_module(model, shape, Path(tmp) / f"{i}.onnx", flavour=flavour,
                                   precision=precision)
            outcome = verify(model, result.path, *split)
            print(f"{label} [{flavour}/{precision}]: contract {'OK' if result.contract else 'FAIL'}"
                  f"; {outcome.summary()}", flush=True)
            records.append({
                "model": label, "flavour": flavour, "precision": precision,
                "contract_ok": bool(result.contract), "seconds": time.perf_counter() - t0,
                **outcome.to_dict(),
            })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "results": records}, indent=2) + "\n")
    passed = sum(r["passed"] and r["contract_ok"] for r in records)
    print(f"{passed}/{len(records)} passed; wrote {out}")


if __name__ == "__main__":
    main()
