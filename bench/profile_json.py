"""Where a JSON request's server CPU goes: py-spy on ``stn-deploy serve`` under JSON load.

    pip install py-spy   # not a dependency: a profiler, for this script only
    .venv/bin/python bench/profile_json.py [--ref GIT_REF] [--protocol json] [--concurrency 64]
        [--seconds 8] [--out bench/results/profile_json_after.json]

Serves tutorial-R (logits only) from this checkout, or from ``--ref`` (an older commit, through
bench/peers/servers.py's link folder), drives it with the load client's prebuilt requests, and
samples the server with py-spy meanwhile. The report keeps the load figures (server CPU per
request, split into the event loop and the other threads) and py-spy's samples summed per
function: inclusive (the function and what it calls) and self, as percentages of all samples
of the server's threads.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
import servers  # noqa: E402 - bench/peers/servers.py

from stn_deploy.load_client import build_requests, run, run_level  # noqa: E402
from stn_deploy.model_source import checkpoint_onnx  # noqa: E402


def aggregate(raw: str, top: int = 40) -> dict:
    """py-spy's ``--format raw`` (folded stacks, one count each) summed per function."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")[1:]]  # drop the thread, line
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n

    def table(counter) -> list:
        return [{"function": f, "percent": round(100 * n / total, 1)}
                for f, n in counter.most_common(top)]  # fmt: skip

    return {"samples": total, "inclusive": table(inclusive), "self": table(own)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="profile this git ref's server instead of the checkout")
    parser.add_argument("--protocol", default="json", choices=("json", "binary"))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/stn-deploy/peers")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    onnx = checkpoint_onnx("tutorial-R", extra_outputs=())
    port = servers.free_port()
    env = {**os.environ}
    if args.ref:
        env.update(PYTHONPATH=str(servers.baseline_tree(args.cache, args.ref)), PYTHONSAFEPATH="1")
    cmd = [sys.executable, "-m", "stn_deploy.cli", "serve", str(onnx), "--backend", "ort",
           "--name", "tutorial-R", "--port", str(port), "--log-format", "text"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            requests, expected = build_requests(onnx, "tutorial-R", "127.0.0.1", 512,
                                                protocol=args.protocol)  # fmt: skip
            run(run_level("127.0.0.1", port, requests, expected, 8, 300, 2.0))  # warm-up
            out = Path(tmp) / "spy.txt"
            sampler = subprocess.Popen([spy, "record", "-p", str(proc.pid), "-d",
                                        str(int(args.seconds) - 1), "-r", "200", "-f", "raw",
                                        "-o", str(out), "--nonblocking", "--threads"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            level = run(run_level("127.0.0.1", port, requests, expected, args.concurrency,
                                  10**9, args.seconds, proc.pid))  # fmt: skip
            sampler.wait(60)
            profile = aggregate(out.read_text())
        finally:
            proc.terminate()
            proc.wait(30)
    report = {
        "what": f"py-spy on stn-deploy serve (1 worker) under {args.protocol} load, "
                f"concurrency {args.concurrency}, 1 sample per request, tutorial-R",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ref": args.ref or "working tree", "load_average": list(os.getloadavg()),
        "load": asdict(level), "profile": profile,
    }  # fmt: skip
    print(json.dumps({k: report[k] for k in ("ref", "load")}, indent=2))
    for row in profile["inclusive"][:25]:
        print(f"{row['percent']:5.1f}%  {row['function']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
