"""The dynamic batcher as a plain unit: no HTTP, a fake session that records every batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from stn_deploy.runtime.serving.batcher import DynamicBatcher
from stn_deploy.runtime.serving.batcher_config import (
    BatcherClosedError,
    BatcherConfig,
    DeadlineExceededError,
    QueueFullError,
    RequestTooLargeError,
)
from stn_deploy.runtime.session import InputError, Session, SessionError, TensorSpec


class _Recorder(Session):
    """out = input * 3 + row marker; fails any batch containing a sample whose value is -999."""

    backend = "fake"

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.gate = gate
        self.batches: list[int] = []

    def _open(self) -> None:
        self.inputs = (TensorSpec("input", (None, 2), "float32"),)
        self.outputs = (TensorSpec("logits", (None, 2), "float32"),)

    def _infer(self, feeds):
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay)
        x = feeds["input"]
        self.batches.append(x.shape[0])
        if (x == -999).any():
            raise SessionError("backend exploded on this batch")
        return {"logits": x * 3, "theta": x.sum(axis=1)}


def _x(rng, n):
    return rng.standard_normal((n, 2)).astype(np.float32)


def test_concurrent_requests_coalesce_and_each_gets_its_own_rows(rng):
    sess = _Recorder(delay=0.01).open()
    sizes = [1, 3, 2, 5, 1, 4, 7, 2] * 4
    feeds = [_x(rng, n) for n in sizes]
    cfg = BatcherConfig(max_batch=16, max_delay_ms=20)
    with DynamicBatcher(sess, cfg) as b, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: b.infer({"input": x}), feeds))
    for x, out in zip(feeds, results):
        np.testing.assert_array_equal(out["logits"], x * 3)
        np.testing.assert_array_equal(out["theta"], x.sum(axis=1))
    assert sum(sess.batches) == sum(sizes)
    assert max(sess.batches) <= 16
    assert len(sess.batches) < len(sizes)  # some coalescing happened


def test_fifo_order_within_batches(rng):
    gate = threading.Event()
    sess = _Recorder(gate=gate).open()
    with DynamicBatcher(sess, BatcherConfig(max_batch=4, max_delay_ms=0)) as b:
        first = b.submit({"input": _x(rng, 1)})  # occupies the worker behind the gate
        time.sleep(0.05)
        futs = [b.submit({"input": np.full((1, 2), i, np.float32)}) for i in range(8)]
        gate.set()
        outs = [f.result(5)["logits"][0, 0] for f in futs]
        first.result(5)
    assert outs == [3.0 * i for i in range(8)]
    assert sess.batches == [1, 4, 4]


def test_single_request_waits_at_most_the_delay(rng):
    sess = _Recorder().open()
    with DynamicBatcher(sess, BatcherConfig(max_batch=64, max_delay_ms=30)) as b:
        t0 = time.monotonic()
        b.infer({"input": _x(rng, 1)})
        waited = time.monotonic() - t0
    assert 0.025 <= waited < 0.5


def test_full_batch_does_not_wait_for_the_delay(rng):
    sess = _Recorder().open()
    with DynamicBatcher(sess, BatcherConfig(max_batch=8, max_delay_ms=2000)) as b:
        t0 = time.monotonic()
        b.infer({"input": _x(rng, 8)})
        assert time.monotonic() - t0 < 1.0


def test_oversized_request_is_split_into_max_batch_chunks(rng):
    sess = _Recorder().open()
    x = _x(rng, 23)
    with DynamicBatcher(sess, BatcherConfig(max_batch=8, max_delay_ms=0)) as b:
        out = b.infer({"input": x})
    np.testing.assert_array_equal(out["logits"], x * 3)
    assert sess.batches == [8, 8, 7]


def test_backend_failure_fails_only_its_own_batch(rng):
    gate = threading.Event()
    sess = _Recorder(gate=gate).open()
    with DynamicBatcher(sess, BatcherConfig(max_batch=2, max_delay_ms=0)) as b:
        blocker = b.submit({"input": _x(rng, 1)})
        time.sleep(0.05)
        good_a = [b.submit({"input": _x(rng, 1)}) for _ in range(2)]  # batch 2
        bad = b.submit({"input": np.full((1, 2), -999, np.float32)})  # batch 3 with next
        victim = b.submit({"input": _x(rng, 1)})
        good_b = [b.submit({"input": _x(rng, 1)}) for _ in range(2)]  # batch 4
        gate.set()
        blocker.result(5)
        with pytest.raises(SessionError, match="exploded"):
            bad.result(5)
        with pytest.raises(SessionError, match="exploded"):
            victim.result(5)
        for f in good_a + good_b:
            assert f.result(5)["logits"].shape == (1, 2)
    assert sess.batches == [1, 2, 2, 2]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_request_fails_alone_and_the_rest_of_its_batch_runs(rng, bad_value):
    gate = threading.Event()
    sess = _Recorder(gate=gate).open()
    cfg = BatcherConfig(max_batch=8, max_delay_ms=0, reject_non_finite=True)
    with DynamicBatcher(sess, cfg) as b:
        blocker = b.submit({"input": _x(rng, 1)})
        time.sleep(0.05)  # the next five queue up behind it and become one batch
        goods = [_x(rng, n) for n in (2, 1)]
        bad = _x(rng, 3)
        bad[2, 1] = bad_value
        futures = [b.submit({"input": goods[0]}), b.submit({"input": bad}),
                   b.submit({"input": goods[1]})]  # fmt: skip
        big = _x(rng, 11)  # chunked 8 + 3: a bad chunk fails the whole request
        big[9, 0] = bad_value
        chunked = b.submit({"input": big})
        gate.set()
        blocker.result(5)
        np.testing.assert_array_equal(futures[0].result(5)["logits"], goods[0] * 3)
        np.testing.assert_array_equal(futures[2].result(5)["logits"], goods[1] * 3)
        with pytest.raises(InputError, match=r"1 NaN/Inf values \(first at flat index 5\)"):
            futures[1].result(5)
        with pytest.raises(InputError, match=r"first at flat index 2\)"):
            chunked.result(5)
    # the blocker; the good 2 + 1 rows of [good, bad, good]; the clean first chunk (8 rows);
    # the bad request and the bad second chunk never reach the session
    assert sess.batches == [1, 3, 8]


def test_non_finite_values_pass_through_unless_asked(rng):
    sess = _Recorder().open()
    x = _x(rng, 2)
    x[0, 0] = np.nan
    with DynamicBatcher(sess, BatcherConfig(max_batch=4, max_delay_ms=0)) as b:
        out = b.infer({"input": x})
    assert np.isnan(out["logits"][0, 0]) and np.isfinite(out["logits"][1]).all()


def test_bad_request_is_rejected_at_submit_and_never_batched(rng):
    sess = _Recorder().open()
    with DynamicBatcher(sess) as b:
        with pytest.raises(InputError, match="shape \\[1, 3\\], expected input"):
            b.submit({"input": np.zeros((1, 3), np.float32)})
        with pytest.raises(InputError, match="dtype float64"):
            b.submit({"input": np.zeros((1, 2), np.float64)})
    assert sess.batches == []


def test_queue_full_rejects_immediately_then_recovers(rng):
    gate = threading.Event()
    sess = _Recorder(gate=gate).open()
    cfg = BatcherConfig(max_batch=4, max_delay_ms=0, max_queue=8)
    with DynamicBatcher(sess, cfg) as b:
        running = b.submit({"input": _x(rng, 4)})
        time.sleep(0.05)
        queued = [b.submit({"input": _x(rng, 4)}) for _ in range(2)]
        assert b.queued_rows == 8
        with pytest.raises(QueueFullError, match="8 of 8 samples waiting") as err:
            b.submit({"input": _x(rng, 1)})
        assert err.value.retry_after_s > 0
        with pytest.raises(RequestTooLargeError, match="at most 8"):
            b.submit({"input": _x(rng, 9)})
        gate.set()
        for f in [running, *queued]:
            f.result(5)
        x = _x(rng, 1)
        np.testing.assert_array_equal(b.infer({"input": x})["logits"], x * 3)


def test_deadline_passed_in_queue_fails_without_running(rng):
    gate = threading.Event()
    sess = _Recorder(gate=gate).open()
    with DynamicBatcher(sess, BatcherConfig(max_batch=1, max_delay_ms=0)) as b:
        blocker = b.submit({"input": _x(rng, 1)})
        time.sleep(0.05)
        late = b.submit({"input": _x(rng, 1)}, timeout=0.05)
        time.sleep(0.15)
        gate.set()
        blocker.result(5)
        with pytest.raises(DeadlineExceededError, match="past its deadline"):
            late.result(5)
    assert sess.batches == [1]


def test_close_drains_in_flight_and_queued_work_then_refuses(rng):
    sess = _Recorder(delay=0.02).open()
    b = DynamicBatcher(sess, BatcherConfig(max_batch=2, max_delay_ms=50)).start()
    feeds = [_x(rng, 1) for _ in range(7)]
    futs = [b.submit({"input": x}) for x in feeds]
    b.close(timeout=5)
    for x, f in zip(feeds, futs):
        assert f.done()
        np.testing.assert_array_equal(f.result()["logits"], x * 3)
    with pytest.raises(BatcherClosedError):
        b.submit({"input": feeds[0]})


def test_observer_sees_every_batch(rng):
    seen = []

    class Obs:
        def on_batch(self, size, queue_seconds, infer_seconds, failed, phases):
            seen.append((size, len(queue_seconds), failed))
            assert len(phases) == 3 and min(phases) >= 0
            assert sum(phases) == pytest.approx(infer_seconds, abs=1e-6)  # the run, in 3 parts

    sess = _Recorder().open()
    with DynamicBatcher(sess, BatcherConfig(max_batch=4, max_delay_ms=0), observer=Obs()) as b:
        b.infer({"input": _x(rng, 3)})
        with pytest.raises(SessionError):
            b.infer({"input": np.full((2, 2), -999, np.float32)})
    assert seen == [(3, 1, False), (2, 1, True)]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_batch": 0}, {"max_delay_ms": -1}, {"max_batch": 8, "max_queue": 4}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="e.g."):
        BatcherConfig(**kwargs)


def test_asyncio_callers_coalesce_and_get_their_own_rows(rng):
    import asyncio

    sess = _Recorder(delay=0.005).open()
    feeds = [_x(rng, n) for n in [1, 2, 3, 1, 4, 1, 2, 9] * 3]  # 9 > max_batch: chunked

    async def run(b):
        return await asyncio.gather(*(b.infer_async({"input": x}) for x in feeds))

    with DynamicBatcher(sess, BatcherConfig(max_batch=8, max_delay_ms=20)) as b:
        results = asyncio.run(run(b))
    for x, out in zip(feeds, results):
        np.testing.assert_array_equal(out["logits"], x * 3)
    assert max(sess.batches) <= 8
    assert len(sess.batches) < len(feeds)


def test_asyncio_deadline_and_cancellation(rng):
    import asyncio

    gate = threading.Event()
    sess = _Recorder(gate=gate).open()

    async def run(b):
        blocker = b.submit_async({"input": _x(rng, 1)})
        await asyncio.sleep(0.05)
        late = b.submit_async({"input": _x(rng, 1)}, timeout=0.05)
        gone = b.submit_async({"input": _x(rng, 1)})
        gone.cancel()
        await asyncio.sleep(0.15)
        gate.set()
        await blocker
        with pytest.raises(DeadlineExceededError):
            await late
        return gone.cancelled()

    with DynamicBatcher(sess, BatcherConfig(max_batch=1, max_delay_ms=0)) as b:
        assert asyncio.run(run(b)) is True
    assert sess.batches == [1]  # neither the late nor the cancelled request ran


def test_dispatch_when_idle_skips_the_delay_unless_a_request_is_on_its_way(rng):
    sess = _Recorder().open()
    cfg = BatcherConfig(max_batch=8, max_delay_ms=400, dispatch_when_idle=True)
    with DynamicBatcher(sess, cfg) as b:
        t0 = time.monotonic()
        with b.incoming():
            alone = b.submit({"input": _x(rng, 1)})
        alone.result(5)
        assert time.monotonic() - t0 < 0.2  # nobody else coming: no 400 ms wait
        with b.incoming():  # a second request is being received while the first is queued
            first = b.submit({"input": _x(rng, 1)})
            time.sleep(0.1)
            assert not first.done()
            second = b.submit({"input": _x(rng, 2)})
        first.result(5), second.result(5)
    assert sess.batches == [1, 3]


class _AnyThread(_Recorder):
    """A recorder that may be called from any thread, noting which thread ran each batch."""

    any_thread = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def _infer(self, feeds):
        self.threads.append(threading.current_thread().name)
        return super()._infer(feeds)


_INLINE = BatcherConfig(
    max_batch=8, max_delay_ms=50, dispatch_when_idle=True, reject_non_finite=True,
    run_inline_when_idle=True,
)  # fmt: skip


def test_a_lone_request_runs_on_the_event_loop_and_a_crowd_goes_to_the_worker(rng):
    import asyncio

    sess = _AnyThread().open()
    xs = [_x(rng, n) for n in (1, 2, 1, 3)]

    async def run(b):
        alone = [await b.submit_async({"input": x}) for x in xs[:2]]  # one at a time
        crowd = await asyncio.gather(*(b.submit_async({"input": x}) for x in xs))  # one pass
        bad = b.submit_async({"input": np.full((1, 2), -999, np.float32)})  # fails alone
        with pytest.raises(SessionError, match="exploded"):
            await bad
        with pytest.raises(InputError, match="NaN"):
            await b.submit_async({"input": np.full((1, 2), np.nan, np.float32)})
        after = await b.submit_async({"input": xs[0]})
        return alone, crowd, after

    with DynamicBatcher(sess, _INLINE) as b:
        alone, crowd, after = asyncio.run(run(b))
    for x, out in zip(xs[:2] + xs + xs[:1], alone + crowd + [after]):
        np.testing.assert_array_equal(out["logits"], x * 3)
    main = threading.main_thread().name
    # lone requests (and the failing one) on the loop's thread; the crowd as one worker batch
    assert sess.threads == [main, main, "stn-batcher", main, main]
    assert sess.batches == [1, 2, 7, 1, 1]


def test_inline_only_when_nothing_else_is_active_and_the_session_allows_any_thread(rng):
    import asyncio

    async def one(b):
        return await b.submit_async({"input": _x(rng, 1)})

    busy = _AnyThread().open()
    with DynamicBatcher(busy, _INLINE, others_active=lambda: True) as b:
        asyncio.run(one(b))
    assert busy.threads == ["stn-batcher"]  # the server has other requests in progress

    pinned = _Recorder().open()  # any_thread False: e.g. a CUDA stream bound to its thread
    seen = []
    pinned._infer = lambda feeds: seen.append(threading.current_thread().name) or {
        "logits": feeds["input"] * 3
    }
    with DynamicBatcher(pinned, _INLINE) as b:
        asyncio.run(one(b))
    assert seen == ["stn-batcher"]


def test_a_lone_request_leaves_the_worker_asleep(rng):
    """The HTTP layer's incoming() block around a lone request must not wake the worker thread:
    a wake-up for nothing cost 50 µs of CPU per request at concurrency 1 (2026-11-30)."""
    import asyncio

    sess = _AnyThread().open()
    xs = [_x(rng, 1) for _ in range(5)]

    async def lone(b, x):
        with b.incoming():  # as the server does: read, decode, submit
            pending = b.submit_async({"input": x})
        return await pending

    async def run(b):
        return [await lone(b, x) for x in xs]

    with DynamicBatcher(sess, _INLINE) as b:
        deadline = time.monotonic() + 5
        while not b._worker_waiting and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker is asleep, waiting for its first request
        wakes = []
        notify = b._cond.notify
        b._cond.notify = lambda n=1: wakes.append(n) or notify(n)
        outs = asyncio.run(run(b))
        woken = list(wakes)  # before close(), which wakes the worker to stop it
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["logits"], x * 3)
    assert sess.threads == [threading.main_thread().name] * 5
    assert woken == []
