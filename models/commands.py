"""The ``train`` and ``eval`` subcommands."""

from __future__ import annotations

import argparse
import json
import time

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the stn-deploy parser."""
    from stn_deploy.models.data import DISTORTIONS
    from stn_deploy.models.sampling import WARPS
    from stn_deploy.models.zoo import ARCHS

    p = sub.add_parser("train", help="train a zoo model on distorted digits into a checkpoint")
    p.add_argument("--arch", choices=sorted(ARCHS), help="architecture (required unless --from)")
    p.add_argument("--from", dest="from_ckpt", metavar="CKPT",
                   help="repeat the training run recorded in CKPT's config.json and compare")
    p.add_argument("--transform", choices=sorted(WARPS), default=None,
                   help="transformer of an ST model (default affine; none for cnn/fcn)")
    p.add_argument("--distortion", choices=DISTORTIONS, default="R")
    p.add_argument("--data", default="mnist5k", help="mnist5k or idx:/path/to/idx-dir")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loc-lr-scale", type=float, default=0.1,
                   help="localisation-net learning rate as a fraction of --lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on a fixed subset of N digits")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="accuracy of a checkpoint on its own test split")
    e.add_argument("checkpoint", nargs="?", help="checkpoint directory or shipped name")
    e.add_argument("--module", help="a user model instead: pkg.mod:Class or file.py:Class")
    e.add_argument("--weights", help="its .safetensors or .pt state_dict")
    e.add_argument("--kwargs", default=None, help="its constructor arguments as JSON")
    e.add_argument("--input-shape", default=None, help="C,H,W of a user model, e.g. 1,28,28")
    e.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    e.add_argument("--distortion", choices=DISTORTIONS, default=None)
    e.add_argument("--json", action="store_true", help="end with one JSON line of results")
    e.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from stn_deploy.models.errors import ModelError
    from stn_deploy.models.train import TrainConfig, train

    if args.from_ckpt:
        return _reproduce(args)
    if not args.arch:
        raise ModelError("train needs --arch (e.g. --arch st-cnn) or --from CKPT")
    transform = args.transform
    if transform is None and args.arch not in ("cnn", "fcn"):
        transform = "affine"
    cfg = TrainConfig(
        arch=args.arch, transform=transform, distortion=args.distortion, data=args.data,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        loc_lr_scale=args.loc_lr_scale, seed=args.seed, limit=args.limit,
        threads=args.threads or None,
    )
    record = train(cfg, args.out, progress=not args.no_progress)
    m = record["metrics"]
    print(f"wrote {args.out}: test error {100 * m['test_error']:.2f}% on {m['test_samples']} "
          f"{record['dataset']}/{record['distortion']} test digits "
          f"({record['training']['train_seconds']} s)")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from stn_deploy.models.checkpoint import load_model
    from stn_deploy.models.train import config_from_checkpoint, train

    original = load_model(args.from_ckpt)
    cfg = config_from_checkpoint(original.config)
    record = train(cfg, args.out, progress=not args.no_progress)
    before = original.config["metrics"]["test_error"]
    after = record["metrics"]["test_error"]
    n = record["metrics"]["test_samples"]
    # One binomial standard error of the recorded error on this test split.
    noise = (before * (1 - before) / n) ** 0.5
    print(f"{original.name}: recorded test error {100 * before:.2f}%, reproduced "
          f"{100 * after:.2f}% (difference {100 * (after - before):+.2f} points; one standard "
          f"error is {100 * noise:.2f})")
    print(json.dumps({"name": original.name, "recorded_error": before, "error": after,
                      "std_error": round(noise, 6)}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from stn_deploy.models.checkpoint import load_model, load_user_model
    from stn_deploy.models.data import load_split
    from stn_deploy.models.errors import CheckpointError
    from stn_deploy.models.train import evaluate

    if args.module:
        if not args.weights:
            raise CheckpointError("--module needs --weights FILE (.safetensors or .pt)")
        kwargs = json.loads(args.kwargs) if args.kwargs else None
        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(d) for d in args.input_shape.split(","))
            except ValueError as exc:
                raise CheckpointError(f"--input-shape {args.input_shape!r}: use C,H,W, e.g. "
                                      "1,28,28") from exc
        loaded = load_user_model(args.module, args.weights, kwargs, input_shape=shape)
    elif args.checkpoint:
        loaded = load_model(args.checkpoint)
    else:
        raise CheckpointError("give a checkpoint directory, or --module and --weights")
    dataset = args.data or loaded.dataset or "mnist5k"
    distortion = args.distortion or loaded.distortion or "R"
    start = time.perf_counter()
    x, y = load_split(dataset, distortion, "test")
    metrics = evaluate(loaded.model, x, y)
    recorded = loaded.config.get("metrics", {}).get("test_error")
    result = {
        "name": loaded.name,
        "dataset": dataset,
        "distortion": distortion,
        "samples": metrics["samples"],
        "accuracy": round(metrics["accuracy"], 6),
        "error": round(metrics["error"], 6),
        "recorded_error": recorded,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(f"{loaded.name}: accuracy {100 * metrics['accuracy']:.2f}%, error "
          f"{100 * metrics['error']:.2f}% on {metrics['samples']} {dataset}/{distortion} test "
          "digits" + (f" (recorded: {100 * recorded:.2f}%)" if recorded is not None else ""))
    if args.json:
        print(json.dumps(result))
    return 0
