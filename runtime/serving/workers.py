"""Several server processes on one port: how one server uses more than one core.

A single process answers at most what its event loop can decode and encode, whatever the cores
(its loop and batching thread share one GIL). ``serve_workers`` binds host:port once and starts
N spawned worker processes that each open their own model, batcher and event loop and accept on
that port; the kernel gives each new connection to one of them (SO_REUSEPORT on Linux). Their
Prometheus values go to PROMETHEUS_MULTIPROC_DIR, so /metrics on any worker reports the whole
server. A worker that dies is restarted; one that dies while starting stops the server with its
exit code. SIGTERM/SIGINT stop every worker gracefully (each finishes its in-flight and queued
requests) and then return.

Batches form per worker: with N workers, each sees about 1/N of the traffic. With a gRPC port,
every worker serves gRPC too, on that one port (SO_REUSEPORT, as for HTTP).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.uvicorn_runner import run_server
from stn_deploy.runtime.session import SessionError

__all__ = ["serve_workers", "MULTIPROC_ENV"]

log = logging.getLogger("stn_deploy.runtime.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _worker_main(open_model: Callable[[], ServedModel], config: ServerConfig, sock, setup) -> None:
    # Ctrl-C reaches the whole process group; the parent turns it into SIGTERM for each worker,
    # and uvicorn re-raises the signal it stopped on to the previous handler: make that a no-op.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if setup is not None:
        setup()
    model = open_model()
    if sock is None:  # SO_REUSEPORT: a listening socket of its own, once the model is ready
        sock = _bind(config.host, config.port, reuse_port=True)
        sock.listen(2048)
    try:
        run_server(model, config, sockets=[sock])
    finally:
        model.session.close()


def _bind(host: str, port: int, reuse_port: bool):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SessionError(
            f"cannot listen on {host}:{port}: {exc.strerror}; "
            "choose another --port or stop what uses it"
        ) from None
    return sock


def _listen(config: ServerConfig):
    """(socket the parent holds, socket each worker gets, config with the real port).

    On Linux every worker listens on its own SO_REUSEPORT socket and the kernel spreads new
    connections evenly over them; the parent's socket only holds the port. Elsewhere all
    workers accept on the parent's one socket, and whichever is awake first takes a connection.
    """
    reuse_port = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
    sock = _bind(config.host, config.port, reuse_port)
    config = dataclasses.replace(config, port=sock.getsockname()[1])
    if reuse_port:
        return sock, None, config
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock, sock, config


def _reserve_grpc_port(config: ServerConfig):
    """(socket holding the gRPC port, config with its real port): every worker's gRPC server
    listens on that port with SO_REUSEPORT, which gRPC sets on Linux, and the kernel spreads
    connections over them as for HTTP. Without SO_REUSEPORT there is no way to share it."""
    if config.grpc_port is None:
        return None, config
    if not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")):
        raise SessionError(
            "--grpc-port with --workers needs SO_REUSEPORT (Linux) so that every worker can "
            "listen on the one gRPC port; use --workers 1 here"
        )
    sock = _bind(config.host, config.grpc_port, reuse_port=True)
    return sock, dataclasses.replace(config, grpc_port=sock.getsockname()[1])


def serve_workers(
    open_model: Callable[[], ServedModel],
    config: ServerConfig,
    workers: int,
    setup: Callable[[], None] | None = None,
    start_grace_s: float = 10.0,
) -> None:
    """Serve with ``workers`` processes until SIGTERM/SIGINT (blocking; main thread only).

    ``open_model`` and ``setup`` (e.g. logging configuration) run in each worker, so they must
    be picklable: module-level functions or ``functools.partial`` of them. A worker that exits
    within ``start_grace_s`` of its start failed to start: the server stops and raises.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    own_dir = MULTIPROC_ENV not in os.environ
    if own_dir:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="stn-metrics-")
    metrics_dir = os.environ[MULTIPROC_ENV]
    os.makedirs(metrics_dir, exist_ok=True)
    if not own_dir and any(name.endswith(".db") for name in os.listdir(metrics_dir)):
        log.warning(
            "%s=%s holds an earlier run's metric files; their counts add to this run's "
            "(empty the folder before starting)",
            MULTIPROC_ENV,
            metrics_dir,
        )
    sock, shared, config = _listen(config)
    grpc_sock, config = _reserve_grpc_port(config)
    supervisor = _Supervisor((open_model, config, shared, setup), start_grace_s)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start_all(workers)
        while not stop.wait(0.2) and supervisor.check():
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        supervisor.stop_all((config.graceful_timeout_s or 30.0) + 5.0)
        sock.close()
        if grpc_sock is not None:
            grpc_sock.close()
        if own_dir:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if supervisor.failure:
        raise SessionError(supervisor.failure)


class _Supervisor:
    """Starts the workers, replaces one that crashes, notices one that could not start."""

    def __init__(self, args: tuple, start_grace_s: float) -> None:
        self.args = args
        self.start_grace_s = start_grace_s
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads
        self.procs: list = []
        self.started: list[float] = []
        self.failure = ""

    def _start(self, index: int):
        proc = self.ctx.Process(target=_worker_main, args=self.args, name=f"stn-worker-{index}")
        proc.start()
        log.info("worker started", extra={"worker": index, "pid": proc.pid})
        return proc

    def start_all(self, workers: int) -> None:
        for i in range(workers):
            self.procs.append(self._start(i))
            self.started.append(time.monotonic())

    def check(self) -> bool:
        """False once a worker failed to start (the server must stop)."""
        for i, proc in enumerate(self.procs):
            if proc.is_alive():
                continue
            _mark_dead(proc.pid)
            if time.monotonic() - self.started[i] < self.start_grace_s:
                self.failure = (
                    f"worker {i} (pid {proc.pid}) exited with code {proc.exitcode} while "
                    "starting; its log above says why"
                )
                return False
            log.error(
                "worker died; restarting it",
                extra={"worker": i, "pid": proc.pid, "exitcode": proc.exitcode},
            )
            self.procs[i] = self._start(i)
            self.started[i] = time.monotonic()
        return True

    def stop_all(self, timeout_s: float) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker drains its requests, then exits 0
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.join()


def _mark_dead(pid: int | None) -> None:
    """Drop a dead worker's live gauges (its counters stay: they are totals)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
