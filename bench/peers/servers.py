"""The servers of the peer comparison: how each is installed, configured and started.

- ``ours``: ``stn-deploy serve`` from this checkout (HTTP + ``--grpc-port``);
- ``ours@REF``: the same command from an older commit (``--baseline REF``), for a before/after
  in the same run; its files are ``git archive``d into the cache and imported through a folder
  of links, with this checkout's venv (no gRPC before it existed);
- ``mlserver``: MLServer with a custom ONNX Runtime runtime (``mlserver_runtime.py``), its own
  venv; REST JSON and gRPC (it has no binary tensor extension);
- ``litserve``: LitServe (``litserve_app.py``), its own venv; REST JSON only.

Every server gets the same ONNX file, batches of at most 64 samples and a 2 ms batching delay,
and one ONNX Runtime intra-op thread without spinning (what ``stn-deploy serve`` picks on 2
cores). Peers run their documented defaults otherwise, with access logging off for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# name -> pip requirements of its venv (onnxruntime: the version this checkout runs)
PEER_PACKAGES = {
    # uvloop 0.22 breaks MLServer 1.7.1's inference workers at start ("There is no current event
    # loop", SeldonIO/MLServer#2286, open); the workaround everyone uses is uvloop<0.22.
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22"],
    "litserve": ["litserve==0.2.19"],
}
# what each server speaks, of the three protocols the client drives
PROTOCOLS = {
    "ours": ("json", "binary", "grpc"),
    "mlserver": ("json", "grpc"),
    "litserve": ("json",),
    "baseline": ("json", "binary"),
}


@dataclass
class Server:
    """A started server: where to reach it over HTTP (and gRPC), and its process."""

    name: str
    kind: str  # ours, baseline, mlserver, litserve
    protocols: tuple[str, ...]
    http_port: int
    grpc_port: int | None
    proc: subprocess.Popen
    settings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_python(cache: Path, name: str) -> Path:
    return cache / name / "bin" / "python"


def ensure_venv(cache: Path, name: str, ort_version: str) -> Path:
    """The peer's venv under ``cache`` (created and installed once per requirement set)."""
    requirements = [*PEER_PACKAGES[name], f"onnxruntime=={ort_version}"]
    folder = cache / name
    stamp = folder / "stn-peer-requirements.json"
    python = venv_python(cache, name)
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == requirements:
        return python
    print(f"installing {name} into {folder}: {' '.join(requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    stamp.write_text(json.dumps(requirements))
    return python


def pip_versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    found = {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}
    return {n: found[n] for n in names if n in found}


def baseline_tree(cache: Path, ref: str) -> Path:
    """``git archive`` of REF under the cache, and a folder of links that imports it as
    ``stn_deploy`` (the pyproject maps models/, export/, runtime/, plugins/ into it)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    src = cache / f"ours-{commit[:12]}"
    site = src / "site"
    if not (site / "stn_deploy").exists():
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True,
                                 check=True).stdout  # fmt: skip
        with tempfile.TemporaryFile() as tmp:
            tmp.write(archive)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                tar.extractall(src / "tree", filter="data")
        package = site / "stn_deploy"
        package.mkdir(parents=True)
        for f in (src / "tree" / "stn_deploy").iterdir():
            (package / f.name).symlink_to(f)
        for sub in ("models", "export", "runtime", "plugins"):
            (package / sub).symlink_to(src / "tree" / sub)
    return site


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{url} did not become ready (exit {proc.poll()}):\n{tail}")
        time.sleep(0.25)


def _ours_command(onnx: Path, name: str, port: int, grpc_port: int | None, batch: int,
                  delay_ms: float, python: str) -> list[str]:  # fmt: skip
    cmd = [python, "-m", "stn_deploy.cli", "serve", str(onnx), "--backend", "ort", "--name", name,
           "--port", str(port), "--max-batch", str(batch), "--max-delay-ms", str(delay_ms),
           "--log-format", "text"]  # fmt: skip
    if grpc_port is not None:
        cmd += ["--grpc-port", str(grpc_port)]
    return cmd


def mlserver_files(folder: Path, onnx: Path, name: str, ports: tuple[int, int, int],
                   batch: int, delay_ms: float) -> dict:  # fmt: skip
    """settings.json, the model's model-settings.json and the runtime, in ``folder``."""
    http, grpc, metrics = ports
    settings = {"debug": False, "host": "127.0.0.1", "http_port": http, "grpc_port": grpc,
                "metrics_port": metrics, "parallel_workers": 1}  # fmt: skip
    model = {"name": name, "implementation": "mlserver_runtime.OnnxModel",
             "max_batch_size": batch, "max_batch_time": delay_ms / 1000.0,
             "parameters": {"uri": str(onnx)}}  # fmt: skip
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / name / "model-settings.json").write_text(json.dumps(model, indent=2))
    shutil.copy(HERE / "mlserver_runtime.py", folder / name / "mlserver_runtime.py")
    return {"settings.json": settings, "model-settings.json": model}


@contextlib.contextmanager
def started(kind: str, onnx: Path, name: str, workdir: Path, cache: Path, ort_version: str,
            batch: int = 64, delay_ms: float = 2.0, baseline: str | None = None):  # fmt: skip
    """Start one server; yield its :class:`Server`; SIGTERM (then SIGKILL) at the end."""
    http, grpc_port = free_port(), free_port()
    log = workdir / f"{kind}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    settings: dict = {"max_batch": batch, "max_delay_ms": delay_ms, "ort_intra_op_threads": 1}
    versions: dict = {}
    label = kind
    if kind == "ours":
        cmd = _ours_command(onnx, name, http, grpc_port, batch, delay_ms, sys.executable)
        settings["command"] = " ".join(cmd[1:])
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
    elif kind == "baseline":
        site = baseline_tree(cache, baseline)
        cmd = _ours_command(onnx, name, http, None, batch, delay_ms, sys.executable)
        env["PYTHONPATH"] = str(site)
        env["PYTHONSAFEPATH"] = "1"  # this checkout's folders must not shadow the links
        grpc_port, label = None, f"ours@{baseline}"
        settings["command"] = " ".join(cmd[1:])
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
    elif kind == "mlserver":
        python = ensure_venv(cache, "mlserver", ort_version)
        folder = workdir / "mlserver"
        settings["files"] = mlserver_files(folder, onnx, name, (http, grpc_port, free_port()),
                                           batch, delay_ms)  # fmt: skip
        cmd = [str(python.parent / "mlserver"), "start", str(folder)]
        versions = pip_versions(python, ("mlserver", "onnxruntime", "grpcio", "fastapi",
                                         "uvicorn", "numpy", "protobuf"))  # fmt: skip
        ready = f"http://127.0.0.1:{http}/v2/models/{name}/ready"
    elif kind == "litserve":
        python = ensure_venv(cache, "litserve", ort_version)
        cmd = [str(python), str(HERE / "litserve_app.py"), str(onnx), name, str(http),
               str(batch), str(delay_ms / 1000.0)]  # fmt: skip
        grpc_port = None
        settings.update(workers_per_device=1, accelerator="cpu", log_level="warning")
        versions = pip_versions(python, ("litserve", "onnxruntime", "fastapi", "uvicorn",
                                         "numpy"))  # fmt: skip
        ready = f"http://127.0.0.1:{http}/health"
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=workdir, start_new_session=True)  # fmt: skip
    try:
        _wait_ready(proc, ready, log)
        yield Server(label, kind, PROTOCOLS[kind], http, grpc_port, proc, settings, versions)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (peers run helper processes), then SIGKILL."""
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
