"""A short training run writes a loadable checkpoint and figure; eval --json reports it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stn_deploy.cli import main
from stn_deploy.models import ModelError, load_model
from stn_deploy.models.figure import save_rectification_figure
from stn_deploy.models.train import TrainConfig, checkpoint_name, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "st-cnn-projective-R"
    code = main(["train", "--arch", "st-cnn", "--transform", "projective", "--epochs", "1",
                 "--limit", "256", "--batch-size", "32", "--seed", "5", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_train_writes_a_loadable_checkpoint_and_figure(trained):
    assert {p.name for p in trained.iterdir()} == {"config.json", "model.safetensors",
                                                  "figure.png"}
    assert (trained / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["arch"] == "st-cnn" and cfg["kwargs"]["transform"] == "projective"
    assert cfg["dataset"] == "mnist5k" and cfg["distortion"] == "R" and cfg["seed"] == 5
    assert cfg["training"]["epochs"] == 1 and cfg["training"]["loc_lr_scale"] == 0.1
    assert "--transform projective" in cfg["training"]["command"]
    err = cfg["metrics"]["test_error"]
    assert 0.0 < err < 0.9 and cfg["metrics"]["test_samples"] == 1000
    loaded = load_model(trained)
    assert loaded.input_shape == (1, 28, 28)
    # Training moved the localisation net away from the identity.
    bias = loaded.model.localisers[0].regressor.bias.detach()
    assert float((bias - torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0])).abs().max()) > 0


@pytest.mark.slow
def test_eval_json_last_line_matches_recorded_error(trained, capsys):
    assert main(["eval", str(trained), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["accuracy"] == pytest.approx(1 - result["error"])
    recorded = json.loads((trained / "config.json").read_text())["metrics"]["test_error"]
    assert result["error"] == pytest.approx(recorded, abs=1e-6)
    assert result["samples"] == 1000 and result["distortion"] == "R"


@pytest.mark.slow
def test_train_from_a_checkpoint_reproduces_it(trained, tmp_path, capsys):
    assert main(["train", "--from", str(trained), "--no-progress", "--out",
                 str(tmp_path / "again")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["error"] == result["recorded_error"]  # same seed, same threads: same run
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        trained / "model.safetensors").read_bytes()


def test_eval_of_missing_checkpoint_is_a_clean_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    cfg = TrainConfig(arch="st-fcn", transform="attention", epochs=1, limit=128, batch_size=32,
                      seed=11)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert a["metrics"] == b["metrics"]
    wa = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert wa == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_train_config_validation():
    with pytest.raises(ModelError, match="drop --transform"):
        TrainConfig(arch="cnn", transform="affine")
    with pytest.raises(ModelError, match="--transform 'shear'"):
        TrainConfig(arch="st-cnn", transform="shear")
    with pytest.raises(ModelError, match="--distortion"):
        TrainConfig(distortion="Q")
    assert checkpoint_name("st-cnn", "tps", "R") == "st-cnn-tps-R"
    assert checkpoint_name("tutorial", "affine", "R") == "tutorial-R"
    assert checkpoint_name("cnn", None, "RTS") == "cnn-RTS"


def test_figure_has_one_row_per_transformer(tmp_path):
    from PIL import Image

    x = np.random.default_rng().random((5, 1, 28, 28), dtype=np.float32)
    one = save_rectification_figure(x, x, tmp_path / "one.png", "one")
    two = save_rectification_figure(x, np.concatenate([x, x], 1), tmp_path / "two.png")
    h1, h2 = Image.open(one).size[1], Image.open(two).size[1]
    assert h2 > h1
    with pytest.raises(ValueError, match="does not pair"):
        save_rectification_figure(x, x[:3], tmp_path / "bad.png")


@pytest.mark.slow
def test_shipped_checkpoint_reproduces_from_its_config(tmp_path, capsys):
    # cnn-P is the quickest shipped run (about 35 s on 2 idle cores).
    assert main(["train", "--from", "cnn-P", "--no-progress", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Same seed and thread count: identical on this CPU; elsewhere float rounding may differ,
    # so allow three binomial standard errors of the recorded error.
    assert abs(result["error"] - result["recorded_error"]) <= 3 * result["std_error"]
