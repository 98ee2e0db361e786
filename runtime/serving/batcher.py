"""Dynamic batcher: coalesce concurrent requests into one Session.infer call, split results back.

Threads, deliberately: one worker thread owns the session and runs one batch at a time (ONNX
Runtime, TensorRT and PyTorch release the GIL while they compute, so the event loop keeps
decoding the next requests meanwhile). Threads get a ``concurrent.futures.Future``; asyncio code
gets an asyncio Future (:meth:`DynamicBatcher.submit_async`), and the worker answers all of one
batch's asyncio futures with a single event-loop wake-up rather than one per request.

Rules the tests pin down:

- A batch is sent when it holds ``max_batch`` samples or when its oldest request has waited
  ``max_delay_ms``, or (``dispatch_when_idle``) as soon as no request is on its way in;
  requests are taken first-in first-out and never reordered or mixed up.
- A request larger than ``max_batch`` is split into chunks of at most ``max_batch`` samples
  (so a TensorRT profile's maximum is never exceeded); the chunks queue like any request and
  the caller gets one concatenated answer, or the first chunk's error.
- A backend failure fails only the requests of that batch; the worker carries on.
- With ``reject_non_finite``, a request holding NaN/Inf fails alone with :class:`InputError`;
  one vectorised check per batch, per-request checks only when it finds something.
- The queue is bounded in samples: a request that does not fit raises :class:`QueueFullError`
  at once (the server answers 503 + Retry-After) instead of growing memory.
- A request whose deadline passes while queued fails with :class:`DeadlineExceededError`
  without running; a cancelled future is skipped.
- ``close()`` stops accepting, runs everything already queued, then stops the worker.
- With ``run_inline_when_idle`` (and a session that allows any thread), an asyncio request that
  is alone (nothing queued, no batch running, nothing else in progress at the caller) runs on
  the event loop's thread; anything else goes to the worker exactly as without the mode.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stn_deploy.runtime.serving.batcher_config import (
    BatcherClosedError,
    BatcherConfig,
    BatchObserver,
    DeadlineExceededError,
    QueueFullError,
    RequestTooLargeError,
)
from stn_deploy.runtime.session import InputError, Session, SessionError, non_finite_message

__all__ = ["DynamicBatcher"]  # its settings and errors: stn_deploy.runtime.serving.batcher_config


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    enqueued: float
    deadline: float | None
    future: Future | asyncio.Future = field(default_factory=Future)
    loop: asyncio.AbstractEventLoop | None = None  # set for an asyncio future

    def claim(self) -> bool:
        """False if the caller already gave up (cancelled); else the item is now running."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()  # a racy read is fine: _deliver re-checks


def _deliver(pairs: list[tuple[asyncio.Future, Any]]) -> None:
    for fut, outcome in pairs:
        if fut.done():
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


def _settle(pairs: list[tuple[_Item, Any]]) -> None:
    """Give each item its result or exception; one event-loop wake-up per loop, not per item."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for item, outcome in pairs:
        if item.loop is None:
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        else:
            by_loop.setdefault(item.loop, []).append((item.future, outcome))
    for loop, loop_pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody left to answer
            loop.call_soon_threadsafe(_deliver, loop_pairs)


class _Joiner:
    """Completes ``parent`` with the concatenation of its chunks' results, in chunk order."""

    def __init__(self, parent: Future, parts: list[Future]) -> None:
        self.parent = parent
        self.parts = parts
        self.left = len(parts)
        self.lock = threading.Lock()
        for part in parts:
            part.add_done_callback(self._done)

    def _done(self, _: Future) -> None:
        with self.lock:
            self.left -= 1
            if self.left:
                return
        if self.parent.done():
            return
        for part in self.parts:
            if part.cancelled():
                self.parent.cancel()
                return
            if part.exception() is not None:
                self.parent.set_exception(part.exception())
                return
        results = [part.result() for part in self.parts]
        self.parent.set_result(
            {name: np.concatenate([r[name] for r in results]) for name in results[0]}
        )


class DynamicBatcher:
    """Runs ``session`` on batches built from concurrent :meth:`submit` calls.

    The session must already be open; the batcher does not close it. Validation of each
    request's names, shapes and dtypes happens in ``submit`` (``Session.check_feeds``), so one
    bad request never reaches, let alone fails, a shared batch.
    """

    def __init__(
        self,
        session: Session,
        config: BatcherConfig | None = None,
        observer: BatchObserver | None = None,
        others_active: Callable[[], bool] | None = None,
    ) -> None:
        self.session = session
        self.config = config or BatcherConfig()
        self.observer = observer
        # With run_inline_when_idle: does the caller have other requests in progress (being
        # read, awaiting answers, being sent)? Then a lone queued one still goes to the worker:
        # under load the event loop must keep reading while the worker computes.
        self._others_active = others_active or (lambda: False)
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._worker_waiting = False
        self._incoming = 0
        self._thread: threading.Thread | None = None
        self._running = threading.Lock()  # held while a batch runs, by the worker or inline
        self._inline = self.config.run_inline_when_idle and getattr(session, "any_thread", False)
        self._tick_scheduled = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> DynamicBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stn-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, finish every queued request, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def incoming(self):
        """Mark a request on its way in (being received or decoded) until it is submitted.

        With ``dispatch_when_idle`` the worker waits for the batch delay only while some request
        is inside this block; the HTTP layer wraps read + decode + submit in it.
        """
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                # A pending _tick decides for itself (runs a lone request here or wakes the
                # worker): waking the worker now only makes it race the loop for the GIL.
                if self._incoming == 0 and self._worker_waiting and not self._tick_scheduled:
                    self._cond.notify()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def accepting(self) -> bool:
        return not self._closing and self._thread is not None and self._thread.is_alive()

    # -- requests ------------------------------------------------------------------------------
    def submit(self, feeds: Mapping[str, Any], timeout: float | None = None) -> Future:
        """Queue one request; return a Future of its outputs (batch dim = the request's own)."""
        checked = self.session.check_feeds(feeds)
        rows = next(iter(checked.values())).shape[0]
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        step = self.config.max_batch
        items = [
            _Item(
                {k: v[i : i + step] for k, v in checked.items()}, min(step, rows - i), now, deadline
            )
            for i in range(0, rows, step)
        ]
        self._enqueue(items, rows)
        if len(items) == 1:
            return items[0].future
        parent: Future = Future()
        parent.set_running_or_notify_cancel()
        _Joiner(parent, [it.future for it in items])
        return parent

    def submit_async(
        self, feeds: Mapping[str, Any], timeout: float | None = None, *, validated: bool = False
    ):
        """Like :meth:`submit` from a running event loop; returns an awaitable asyncio Future.

        The worker answers a whole batch's futures of one loop with a single wake-up.
        ``validated=True`` skips ``check_feeds`` for feeds already checked against the session's
        input specs (the protocol decoder does exactly that).
        """
        checked = dict(feeds) if validated else self.session.check_feeds(feeds)
        rows = next(iter(checked.values())).shape[0]
        if rows > self.config.max_batch:  # chunked: the thread-safe path joins the chunks
            return asyncio.wrap_future(self.submit(checked, timeout))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        item = _Item(checked, rows, now, deadline, loop.create_future(), loop)
        if not self._inline or self._others_active():
            self._enqueue([item], rows)  # under load: wake the worker now, as ever
            return item.future
        # Alone so far: queue it without waking the worker; once the requests this event-loop
        # pass has read are all queued, _tick runs a lone one right here or wakes the worker.
        self._enqueue([item], rows, wake=False)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            loop.call_soon(self._tick)
        return item.future

    def _tick(self) -> None:
        """After an event-loop pass: one request queued and the batcher idle -> run it here.

        Running it on this thread saves the two thread wake-ups of a hand-off to the worker.
        Anything else (more requests, a batch running, a request still arriving) is the
        worker's, as without this mode; first in, first out holds either way.
        """
        self._tick_scheduled = False
        with self._cond:
            lone = (
                len(self._queue) == 1
                and self._incoming == 0
                and not self._others_active()
                and self._queue[0].loop is asyncio.get_running_loop()  # answerable from here
                and self._running.acquire(blocking=False)
            )
            if lone:
                item = self._queue.popleft()
                self._queued_rows -= item.rows
            elif self._queue and self._worker_waiting:
                self._cond.notify()
        if not lone:
            return
        try:
            outcomes, observed = self._run_batch([item]) if self._admit(item) else ([], None)
        finally:
            self._running.release()
        _deliver([(it.future, outcome) for it, outcome in outcomes])  # on its loop: no wake-up
        self._observe(observed)

    def infer(self, feeds: Mapping[str, Any], timeout: float | None = None) -> dict:
        """Blocking convenience: submit and wait."""
        return self.submit(feeds, timeout).result()

    async def infer_async(self, feeds: Mapping[str, Any], timeout: float | None = None) -> dict:
        """Submit from asyncio code and await the outputs without blocking the event loop."""
        return await self.submit_async(feeds, timeout)

    def _enqueue(self, items: list[_Item], rows: int, wake: bool = True) -> None:
        cfg = self.config
        if rows > cfg.max_queue:
            raise RequestTooLargeError(
                f"request holds {rows} samples, more than the queue's {cfg.max_queue}; "
                f"send at most {cfg.max_queue} per request"
            )
        with self._cond:
            if self._closing or self._thread is None:
                raise BatcherClosedError("the batcher is not running (shutting down?)")
            if self._queued_rows + rows > cfg.max_queue:
                raise QueueFullError(
                    f"queue full: {self._queued_rows} of {cfg.max_queue} samples waiting, "
                    f"request adds {rows}; retry shortly",
                    retry_after_s=1.0,
                )
            was_empty = not self._queue
            self._queue.extend(items)
            self._queued_rows += rows
            # Wake the worker only when its decision changes (first request, or a full batch);
            # every other wake-up is a GIL round trip per request for nothing.
            if (
                self._worker_waiting
                and (wake or self._queued_rows >= cfg.max_batch)
                and (was_empty or self._queued_rows >= cfg.max_batch)
            ):
                self._cond.notify()

    # -- worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch)

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a full batch or the oldest request's delay; None once closed and drained."""
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._wait()
            flush_at = self._queue[0].enqueued + cfg.max_delay_ms / 1000.0
            while self._queued_rows < cfg.max_batch and not self._closing:
                if cfg.dispatch_when_idle and self._incoming == 0:
                    break  # nobody else is coming: waiting would only add latency
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._wait(remaining)
            batch: list[_Item] = []
            rows = 0
            while self._queue and rows + self._queue[0].rows <= cfg.max_batch:
                item = self._queue.popleft()
                self._queued_rows -= item.rows
                if self._admit(item):
                    batch.append(item)
                    rows += item.rows
            return batch

    def _wait(self, timeout: float | None = None) -> None:
        self._worker_waiting = True
        try:
            self._cond.wait(timeout)
        finally:
            self._worker_waiting = False

    @staticmethod
    def _admit(item: _Item) -> bool:
        if not item.claim():
            return False  # the caller went away
        if item.deadline is not None and time.monotonic() > item.deadline:
            waited = time.monotonic() - item.enqueued
            message = f"request waited {waited * 1000:.1f} ms, past its deadline"
            _settle([(item, DeadlineExceededError(message))])
            return False
        return True

    def _execute(self, batch: list[_Item]) -> None:
        with self._running:
            outcomes, observed = self._run_batch(batch)
        _settle(outcomes)
        self._observe(observed)

    def _observe(self, observed: tuple | None) -> None:
        """Metrics after the answers are on their way: they are not the callers' latency."""
        if observed is not None and self.observer is not None:
            self.observer.on_batch(*observed)

    def _run_batch(self, batch: list[_Item]) -> tuple[list[tuple[_Item, Any]], tuple | None]:
        """Run one batch: every item's outputs or exception for the caller to deliver, and
        what the observer is told (None when no request was left to run)."""
        start = time.monotonic()
        rejected: list[tuple[_Item, Any]] = []
        feeds = _concatenate(batch)
        if self.config.reject_non_finite and any(
            non_finite_message(n, v) for n, v in feeds.items()
        ):
            batch, rejected = self._split_non_finite(batch)
            if not batch:
                return rejected, None
            feeds = _concatenate(batch)
        total = sum(it.rows for it in batch)
        failed = False
        inputs_ready = time.monotonic()
        try:
            outputs = self.session.infer(feeds)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != total:
                    raise SessionError(
                        f"output {name!r} has shape {list(value.shape)}; expected the batch "
                        f"dimension first ({total}) so results can be split per request"
                    )
        except Exception as exc:  # the batch's own failure goes to its callers only
            failed = True
            outcomes: list[tuple[_Item, Any]] = [(it, exc) for it in batch]
            inferred = time.monotonic()
        else:
            inferred = time.monotonic()
            offset, outcomes = 0, []
            for it in batch:
                end = offset + it.rows
                outcomes.append((it, {n: v[offset:end] for n, v in outputs.items()}))
                offset = end
        end = time.monotonic()
        phases = (inputs_ready - start, inferred - inputs_ready, end - inferred)
        observed = (total, [start - it.enqueued for it in batch], end - start, failed, phases)
        return rejected + outcomes, observed

    @staticmethod
    def _split_non_finite(batch: list[_Item]) -> tuple[list[_Item], list[tuple[_Item, Any]]]:
        """(the requests to run, InputError for each one holding NaN/Inf: 400 at the HTTP layer)."""
        keep, failed = [], []
        for it in batch:
            message = next(filter(None, (non_finite_message(n, v) for n, v in it.feeds.items())),
                           None)  # fmt: skip
            if message is None:
                keep.append(it)
            else:
                failed.append((it, InputError(message)))
        return keep, failed


def _concatenate(batch: list[_Item]) -> dict[str, np.ndarray]:
    if len(batch) == 1:
        return batch[0].feeds
    return {n: np.concatenate([it.feeds[n] for it in batch]) for n in batch[0].feeds}
