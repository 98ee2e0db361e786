"""Time limits for clients that stall: on their request headers, or on their request body.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``),
but times neither a connection that never completes its request headers (any byte cancels that
timer) nor a body that stops arriving. Each such client would hold its connection forever, and a
stalled body also holds a place among the requests the batcher waits for.

Both limits are enforced by one periodic sweep per server rather than a timer per request: on
uvloop a ``call_later`` + ``cancel`` pair costs about 4 µs and ``asyncio.timeout`` about 8 µs,
against a dictionary insert and a clock read here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from stn_deploy.runtime.serving.protocol_response import error_body

__all__ = ["BodyDeadlines", "BodyTimeoutError", "header_timeout_protocol"]

log = logging.getLogger("stn_deploy.runtime.server")


def _arm(timeout_s: float, sweep) -> asyncio.TimerHandle:
    """The next sweep, soon enough that nothing outlives its limit by more than a quarter."""
    return asyncio.get_running_loop().call_later(min(1.0, timeout_s / 4), sweep)


class BodyTimeoutError(Exception):
    """A request body did not arrive within its deadline (the server answers 408)."""


class BodyDeadlines:
    """Cancels body reads that have taken longer than ``timeout_s`` since they started."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._reading: dict[asyncio.Task, float] = {}  # task -> when its body read started
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, body: Awaitable[bytes]) -> bytes:
        """Await ``body`` (the read of one request's body) under the deadline."""
        task = asyncio.current_task()
        self._reading[task] = time.monotonic()
        if self._timer is None:
            self._timer = _arm(self.timeout_s, self._sweep)
        try:
            return await body
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # shutdown, or the client went away: not a timeout
            self._expired.discard(task)
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled here
                task.uncancel()
            raise BodyTimeoutError(
                f"the request body did not arrive within {self.timeout_s:g} s; "
                "send Content-Length bytes right after the headers"
            ) from None
        finally:
            self._reading.pop(task, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        for task, started in list(self._reading.items()):
            if now - started > self.timeout_s and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._timer = _arm(self.timeout_s, self._sweep) if self._reading else None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_INVALID_400 = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class _HeaderWatch:
    """The connections of one server; closes those waiting too long for request headers."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.protocols: set = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, protocol) -> None:
        self.protocols.add(protocol)
        if self._timer is None:
            self._timer = _arm(self.timeout_s, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for protocol in list(self.protocols):
            since = protocol.stn_waiting_since
            if since is not None and now - since > self.timeout_s:
                self.protocols.discard(protocol)
                protocol.stn_header_timeout(self.timeout_s)
        self._timer = _arm(self.timeout_s, self._sweep) if self.protocols else None


def header_timeout_protocol(timeout_s: float) -> type | None:
    """uvicorn's httptools HTTP protocol, closing connections that take longer than
    ``timeout_s`` to send complete request headers (counted from the connection, or from the
    previous response); a request begun gets 408 first. None when httptools is missing.

    Bytes that do not parse as HTTP get the protocol's JSON 400 instead of uvicorn's plain text.

    It hooks uvicorn's own protocol methods (connection_made/lost, on_message_begin,
    on_headers_complete, on_response_complete, send_400_response);
    tests/runtime/serving/test_slow_clients.py and test_fuzz.py pin them.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn falls back to h11
        return None
    watch = _HeaderWatch(timeout_s)

    class HeaderTimedProtocol(HttpToolsProtocol):
        stn_waiting_since: float | None = None
        stn_partial = False  # some bytes of a request, not yet all its headers

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.stn_waiting_since = time.monotonic()
            watch.add(self)

        def connection_lost(self, exc) -> None:
            watch.protocols.discard(self)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.stn_partial = True

        def on_headers_complete(self) -> None:
            self.stn_waiting_since, self.stn_partial = None, False
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is None or self.cycle.response_complete:  # no pipelined one started
                self.stn_waiting_since = time.monotonic()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to bytes that are no HTTP request, as the protocol's JSON."""
            message = error_body(
                f"{msg.rstrip('.')}: the bytes sent are not an HTTP/1.1 request; expected e.g. "
                "POST /v2/models/NAME/infer with Content-Length and a JSON body"
            )
            self.transport.write(_INVALID_400 % (len(message), message))
            self.transport.close()

        def stn_header_timeout(self, timeout: float) -> None:
            if self.transport.is_closing():
                return
            if self.stn_partial:
                message = (
                    b'{"error": "request headers did not arrive within %g s; send the whole '
                    b'request at once"}' % timeout
                )
                self.transport.write(_TIMEOUT_408 % (len(message), message))
            log.info(
                "closed a connection without complete request headers",
                extra={"client": "%s:%s" % (self.client or ("?", 0)), "after_s": timeout},
            )
            self.transport.close()

    return HeaderTimedProtocol
