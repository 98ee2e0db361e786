"""Checkpoints round-trip by both routes; bad ones fail with errors that name the problem."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from stn_deploy.models import (
    CheckpointError,
    LoadedModel,
    build_model,
    load_model,
    load_user_model,
    save_checkpoint,
)
from stn_deploy.models import checkpoint as C


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _save(tmp_path, arch="st-cnn", **kwargs):
    model = _randomised(build_model(arch, **kwargs))
    out = save_checkpoint(model, tmp_path / "ckpt", {
        "arch": arch, "kwargs": kwargs, "dataset": "mnist5k", "distortion": "R", "seed": 3,
        "metrics": {"test_error": 0.25},
    })
    return model, out


@pytest.mark.parametrize("arch,kwargs", [
    ("st-cnn", {"transform": "tps"}),
    ("st2-cnn", {"transform": "projective", "input_hw": [42, 42]}),
    ("tutorial", {}),
    ("fcn", {"in_channels": 3, "input_hw": [20, 24], "mean": [0.1, 0.2, 0.3], "std": 0.5}),
])
def test_our_checkpoint_round_trips(tmp_path, arch, kwargs):
    model, out = _save(tmp_path, arch, **kwargs)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]  # no temp files left
    loaded = load_model(out)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    assert loaded.name == "ckpt" and loaded.dataset == "mnist5k" and loaded.distortion == "R"
    c = kwargs.get("in_channels", 1)
    hw = tuple(kwargs.get("input_hw", (28, 28)))
    assert loaded.input_shape == (c, *hw)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == arch and cfg["input_shape"] == [c, *hw]
    assert cfg["torch_version"] == torch.__version__ and cfg["metrics"]["test_error"] == 0.25
    assert len(cfg["normalisation"]["mean"]) == c
    x = torch.rand(4, c, *hw)
    torch.testing.assert_close(loaded.model(x), model(x), atol=0, rtol=0)


_USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        input_shape = (1, 12, 12)

        def __init__(self, hidden: int = 8):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, hidden), nn.ReLU(),
                                      nn.Linear(hidden, 10))

        def forward(self, x):
            return self.body(x)
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_user_model_round_trips(tmp_path, user_module, suffix):
    import userpkg.nets

    ref = _randomised(userpkg.nets.TinyNet(hidden=5))
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": ref.state_dict()}, path)  # a common wrapper dict
    else:
        save_file(ref.state_dict(), str(path))
    loaded = load_user_model("userpkg.nets:TinyNet", path, {"hidden": 5})
    assert loaded.name == "TinyNet" and loaded.input_shape == (1, 12, 12)
    assert loaded.dataset is None and loaded.distortion is None and not loaded.model.training
    x = torch.rand(3, 1, 12, 12)
    torch.testing.assert_close(loaded.model(x), ref(x), atol=0, rtol=0)
    by_file = load_user_model(f"{user_module / 'nets.py'}:TinyNet", path, {"hidden": 5},
                              input_shape=(1, 12, 12))
    torch.testing.assert_close(by_file.model(x), ref(x), atol=0, rtol=0)


def test_user_model_with_wrong_kwargs_names_the_shapes(tmp_path, user_module):
    import userpkg.nets

    path = tmp_path / "w.safetensors"
    save_file(userpkg.nets.TinyNet(hidden=5).state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"body\.1\.weight: file \(5, 144\) vs model "
                                              r"\(8, 144\)") as info:
        load_user_model("userpkg.nets:TinyNet", path)
    assert "--kwargs" in str(info.value)
    with pytest.raises(CheckpointError, match="cannot import 'userpkg.nope'"):
        load_user_model("userpkg.nope:TinyNet", path)
    with pytest.raises(CheckpointError, match="pkg.mod:Class"):
        load_user_model("userpkg.nets", path)


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path, user_module):
    path = tmp_path / "evil.pt"
    torch.save({"body.1.weight": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        load_user_model("userpkg.nets:TinyNet", path)
    model_file = tmp_path / "whole.pt"
    import userpkg.nets

    torch.save(userpkg.nets.TinyNet(), model_file)  # a whole pickled module, not a state_dict
    with pytest.raises(CheckpointError, match=r"torch.save\(model.state_dict\(\), path\)"):
        load_user_model("userpkg.nets:TinyNet", model_file)


def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path):
    _, out = _save(tmp_path)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(out)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["weights_sha256"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(out)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    _, out = _save(tmp_path)
    state = C.load_state_dict_file(out / "model.safetensors")
    state.pop("classifier.head.1.weight")
    state["extra.bias"] = torch.zeros(3)
    save_file(state, str(out / "model.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("weights_sha256")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as info:
        load_model(out)
    msg = str(info.value)
    assert "missing keys: classifier.head.1.weight" in msg
    assert "unexpected keys: extra.bias" in msg


def test_config_naming_other_kwargs_reports_shape_mismatch(tmp_path):
    _, out = _save(tmp_path, transform="affine")
    cfg = json.loads((out / "config.json").read_text())
    cfg["kwargs"] = {"transform": "projective"}
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"localisers\.0\.regressor\.weight: file \(6, 64\) "
                                              r"vs model \(8, 64\)"):
        load_model(out)


def test_missing_config_and_unknown_arch(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    _, out = _save(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["arch"] = "resnet50"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet50'"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(out)


def test_interrupted_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model, out = _save(tmp_path)
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_randomised(model), out, {"arch": "st-cnn", "kwargs": {}})
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    load_model(out)


def test_shipped_checkpoints_load_by_name_and_score_their_recorded_error():
    from stn_deploy.models.data import load_split
    from stn_deploy.models.train import evaluate

    shipped = C.shipped_checkpoints()
    assert {"tutorial-R", "st-cnn-affine-R", "cnn-R"} <= set(shipped)
    for name, path in shipped.items():
        loaded = load_model(name)
        cfg = loaded.config
        assert loaded.name == name and (path / "model.safetensors").stat().st_size < 2_500_000
        x, y = load_split(cfg["dataset"], cfg["distortion"], "test")
        assert tuple(x.shape[1:]) == loaded.input_shape
        metrics = evaluate(loaded.model, x, y)
        assert metrics["error"] == pytest.approx(cfg["metrics"]["test_error"], abs=1e-6), name
        if loaded.model.localisation_parameters():
            assert (path / "figure.png").is_file()
    # The paper's finding on the same split: the ST-CNN beats the plain CNN.
    errors = {n: json.loads((p / "config.json").read_text())["metrics"]["test_error"]
              for n, p in shipped.items()}
    assert errors["st-cnn-affine-R"] < errors["cnn-R"]


def test_shipped_tutorial_weights_load_through_the_user_route(capsys):
    from stn_deploy.cli import main

    weights = C.shipped_checkpoints()["tutorial-R"] / "model.safetensors"
    assert main(["eval", "--module", "stn_deploy.models.zoo:TutorialSTN", "--weights",
                 str(weights), "--input-shape", "1,28,28", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recorded = load_model("tutorial-R").config["metrics"]["test_error"]
    assert result["name"] == "TutorialSTN" and result["error"] == pytest.approx(recorded)
