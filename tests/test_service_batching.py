"""The dynamic batcher on its own: grouping, bounds, drops and failure isolation (no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import Batcher, DeadlineExceededError, QueueFullError
from service.metrics import Metrics


class GatedRun:
    """A batch function that records each batch and can hold the compute thread until released."""

    def __init__(self, hold: bool = False):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, payloads):
        self.started.set()
        self.gate.wait(10)
        self.batches.append(list(payloads))
        if any(p == "bad" for p in payloads):
            raise ValueError("bad payload")
        return [f"done:{p}" for p in payloads]


def far() -> float:
    return time.monotonic() + 60


def make_batcher(metrics: Metrics, **kwargs) -> Batcher:
    options = {"lane": "mesh", "max_batch_size": 4, "max_delay_s": 0.05, "max_queue_size": 16} | kwargs
    batcher = Batcher(metrics, **options)
    batcher.start()
    return batcher


def sample(metrics: Metrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_concurrent_items_share_batches_up_to_the_maximum_and_results_keep_their_order():
    async def scenario():
        metrics, run = Metrics(), GatedRun()
        batcher = make_batcher(metrics)
        results = await asyncio.gather(*(batcher.submit([i], "k", run, far()) for i in range(8)))
        await batcher.close()
        return results, run.batches

    results, batches = asyncio.run(scenario())
    assert results == [[f"done:{i}"] for i in range(8)]
    assert sorted(len(b) for b in batches) == [4, 4]


def test_items_with_different_keys_never_share_a_batch():
    async def scenario():
        metrics, run = Metrics(), GatedRun()
        batcher = make_batcher(metrics)
        await asyncio.gather(*(batcher.submit([f"{key}{i}"], key, run, far()) for i in range(3) for key in "ab"))
        await batcher.close()
        return run.batches

    for batch in asyncio.run(scenario()):
        assert len({p[0] for p in batch}) == 1


def test_a_failing_item_does_not_fail_its_batch_mates():
    async def scenario():
        metrics, run = Metrics(), GatedRun()
        batcher = make_batcher(metrics)
        outcomes = await asyncio.gather(
            *(batcher.submit([p], "k", run, far()) for p in ["x", "bad", "y"]), return_exceptions=True
        )
        await batcher.close()
        return outcomes

    good_x, bad, good_y = asyncio.run(scenario())
    assert good_x == ["done:x"] and good_y == ["done:y"]
    assert isinstance(bad, ValueError)


def test_a_full_queue_refuses_the_whole_request_at_once():
    async def scenario():
        metrics, run = Metrics(), GatedRun(hold=True)
        batcher = make_batcher(metrics, max_batch_size=1, max_queue_size=2)
        first = asyncio.ensure_future(batcher.submit(["running"], "k", run, far()))
        await asyncio.to_thread(run.started.wait, 10)
        queued = asyncio.ensure_future(batcher.submit(["a", "b"], "k", run, far()))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(["c"], "k", run, far())
        depth = sample(metrics, "halo_queue_depth")
        run.gate.set()
        await asyncio.gather(first, queued)
        await batcher.close()
        return depth

    assert asyncio.run(scenario()) == 2


def test_cancelled_and_expired_items_are_dropped_before_compute():
    async def scenario():
        metrics, run = Metrics(), GatedRun(hold=True)
        batcher = make_batcher(metrics, max_batch_size=1)
        first = asyncio.ensure_future(batcher.submit(["running"], "k", run, far()))
        await asyncio.to_thread(run.started.wait, 10)
        cancelled = asyncio.ensure_future(batcher.submit(["cancelled"], "k", run, far()))
        expired = asyncio.ensure_future(batcher.submit(["expired"], "k", run, time.monotonic() + 0.01))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        run.gate.set()
        await first
        with pytest.raises(DeadlineExceededError):
            await expired
        await batcher.drain()
        await batcher.close()
        return run.batches, metrics

    batches, metrics = asyncio.run(scenario())
    assert batches == [["running"]]
    assert sample(metrics, "halo_dropped_total", {"reason": "cancelled"}) == 1
    assert sample(metrics, "halo_dropped_total", {"reason": "deadline"}) == 1


def test_drain_waits_for_queued_and_running_work():
    async def scenario():
        metrics, run = Metrics(), GatedRun(hold=True)
        batcher = make_batcher(metrics, max_batch_size=2)
        futures = [asyncio.ensure_future(batcher.submit([i], "k", run, far())) for i in range(5)]
        await asyncio.to_thread(run.started.wait, 10)
        draining = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0.05)
        was_done_early = draining.done()
        run.gate.set()
        await draining
        all_done = all(f.done() for f in futures)
        await batcher.close()
        return was_done_early, all_done

    assert asyncio.run(scenario()) == (False, True)


def test_several_workers_compute_batches_side_by_side():
    async def scenario():
        metrics = Metrics()
        running, both_running = [], threading.Event()
        lock = threading.Lock()

        def run(payloads):
            with lock:
                running.append(payloads[0])
                if len(running) == 2:
                    both_running.set()
            both_running.wait(10)
            return list(payloads)

        batcher = make_batcher(metrics, max_batch_size=1, workers=2)
        results = await asyncio.gather(batcher.submit(["a"], "k", run, far()), batcher.submit(["b"], "k", run, far()))
        await batcher.close()
        return results, both_running.is_set()

    results, overlapped = asyncio.run(scenario())
    assert results == [["a"], ["b"]]
    assert overlapped
