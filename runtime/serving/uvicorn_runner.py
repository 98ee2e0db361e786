"""Run the server's ASGI app under uvicorn: in the foreground until SIGTERM, or in a thread.

:func:`run_server` is what ``stn-deploy serve`` (and each ``--workers`` process) runs;
:class:`ServerThread` serves from a background thread on a socket bound up front, for tests, the
demo and the load benchmark. Both stop the same graceful way: stop accepting, finish in-flight
requests, drain the batcher.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time

from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.http_server import create_app
from stn_deploy.runtime.serving.slow_clients import header_timeout_protocol
from stn_deploy.runtime.session import SessionError

__all__ = ["run_server", "ServerThread"]

log = logging.getLogger("stn_deploy.runtime.server")


def _uvicorn_config(app, config: ServerConfig):
    import uvicorn

    protocol = header_timeout_protocol(config.header_timeout_s)
    if protocol is None:
        log.warning("no httptools: request headers are not timed; pip install httptools")
    return uvicorn.Config(
        app,
        http=protocol or "auto",
        ws="none",  # no WebSocket routes: an upgrade request is answered as plain HTTP
        host=config.host,
        port=config.port,
        access_log=False,
        proxy_headers=False,  # loopback or a trusted front; saves a middleware per request
        log_config=None,  # keep the process's logging (JSON lines under `stn-deploy serve`)
        timeout_graceful_shutdown=config.graceful_timeout_s or None,
        lifespan="on",
    )


def run_server(
    model: ServedModel, config: ServerConfig | None = None, sockets: list | None = None
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (blocking).

    ``sockets``: already-listening sockets to accept on instead of binding host:port (the
    workers of :mod:`stn_deploy.runtime.serving.workers` share the one their parent bound).
    """
    import uvicorn

    config = config or ServerConfig()
    # The batcher's worker needs the GIL back after every backend call; with the default 5 ms
    # switch interval a busy event loop makes it wait up to 5 ms each time (measured: batches
    # of ~10 every 7 ms at concurrency 64). This process is ours, so shorten it.
    sys.setswitchinterval(config.switch_interval_ms / 1000.0)
    server = uvicorn.Server(_uvicorn_config(create_app(model, config), config))
    if threading.current_thread() is not threading.main_thread():
        server.run(sockets=sockets)
        return
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the previous
    # handler; make that a normal return so `stn-deploy serve` exits 0 after a clean stop.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=sockets)
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """SIGTERM arrived and the server has already shut down gracefully."""


def _stopped(signum, frame) -> None:
    raise _Stopped


class ServerThread:
    """Runs the server in a background thread on a socket bound up front (port 0: a free one).

    For tests, the demo and the load benchmark: ``with ServerThread(model, cfg) as srv:
    srv.url``. ``stop()`` is the same graceful shutdown as SIGTERM.
    """

    def __init__(self, model: ServedModel, config: ServerConfig | None = None) -> None:
        import uvicorn

        self.config = config or ServerConfig(port=0)
        self.app = create_app(model, self.config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.config.host, self.config.port))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.config))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name="stn-http",
        )

    @property
    def url(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC server (after ``start``; ``config.grpc_port`` must be set)."""
        port = self.app.state.grpc_port
        if port is None:
            raise SessionError("this server has no gRPC port; set ServerConfig(grpc_port=0)")
        return f"{self.config.host}:{port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SessionError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
