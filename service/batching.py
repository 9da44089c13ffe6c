"""Dynamic batcher: one execution lane with a bounded queue, a few compute threads, batches formed by key.

The engine runs one batcher per lane (meshes and occupancy; grasps), so a lane's long jobs never
hold another lane's queue or workers. Requests put work items on the queue (all of a request's items
or none: a full queue refuses the whole request). When a compute worker is free, a single scheduler task takes the oldest live item,
waits up to ``max_delay_s`` for more items with the same key (for meshes: the resolution) until
``max_batch_size``, and runs the batch's function in a compute thread, so the event loop never does
model work. With several workers, batches run side by side. Items whose caller went away (future
cancelled) or whose deadline passed are dropped before compute. If a batch raises, its items are
retried one by one so a single failure never fails its batch-mates.

A lane's worker threads can run at a lower CPU priority (``nice``): on Linux each thread has its
own nice value, so when both lanes compete for a core the OS gives it to the other lane first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.errors import DeadlineExceededError, QueueFullError
from service.metrics import Metrics

log = logging.getLogger("halo.batching")

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass(eq=False)
class _Item:
    payload: Any
    key: Hashable
    run: BatchFn
    future: asyncio.Future
    deadline: float
    eager: bool
    enqueued: float = field(default_factory=time.monotonic)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux gives every thread its own; elsewhere a no-op)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    thread_id = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + nice)
    except OSError as error:
        log.warning("could not lower a worker thread's priority", extra={"reason": str(error)})


class Batcher:
    """One lane: groups queued work items by key into batches run off the event loop by ``workers`` threads."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        lane: str,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        workers: int = 1,
        nice: int = 0,
    ):
        self.metrics = metrics
        self.lane = lane
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._queue: list[_Item] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"halo-{lane}",
            initializer=lower_thread_priority,
            initargs=(nice,),
        )
        self._free_workers = asyncio.Semaphore(workers)
        metrics.lane_workers.labels(lane).set(workers)
        self._computing: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the scheduler task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name=f"halo-{self.lane}-batcher")

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in one of the lane's threads, outside the queue (start-up, warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(
        self, payloads: Sequence[Any], key: Hashable, run: BatchFn, deadline: float, eager: bool = False
    ) -> list[Any]:
        """Queue ``payloads`` (batched with others of the same ``key`` through ``run``) and await results.

        ``deadline`` is a ``time.monotonic()`` instant. ``eager`` (live stream frames): the batch starts
        as soon as a worker is free, with the same-key items queued by then, instead of waiting
        ``max_delay_s`` for more batch-mates. Raises QueueFullError at once when the queue cannot take
        every payload, DeadlineExceededError if the deadline passes while queued.
        """
        if len(self._queue) + len(payloads) > self.max_queue_size:
            self.metrics.reject(self.lane, "queue_full")
            raise QueueFullError(
                f"queue full: the {self.lane} lane has {len(self._queue)} of {self.max_queue_size} items waiting"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(p, key, run, loop.create_future(), deadline, eager) for p in payloads]
        self._queue.extend(items)
        self._changed()
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:
                item.future.cancel()
            raise

    @property
    def depth(self) -> int:
        """Items waiting (not yet computing)."""
        return len(self._queue)

    @property
    def computing(self) -> int:
        """Batches being computed now (readable from a compute thread)."""
        return len(self._computing)

    async def drain(self) -> None:
        """Wait until the queue is empty and no batch is computing."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop the scheduler, fail anything still queued, and release the compute threads."""
        for task in [self._task, *self._computing]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(RuntimeError("server stopped"))
        self._queue.clear()
        self._changed()
        self._executor.shutdown(wait=True)

    def _changed(self) -> None:
        self.metrics.set_lane_depth(self.lane, len(self._queue))
        if not self._queue:
            self._arrived.clear()

    def _prune(self) -> None:
        """Drop items whose caller went away or whose deadline passed."""
        now = time.monotonic()
        live = []
        for item in self._queue:
            if item.future.done():
                self.metrics.dropped.labels("cancelled").inc()
            elif now >= item.deadline:
                self.metrics.dropped.labels("deadline").inc()
                item.future.set_exception(DeadlineExceededError("deadline passed while queued"))
            else:
                live.append(item)
        self._queue = live
        self._changed()

    def _same_key(self, key: Hashable) -> list[_Item]:
        return [item for item in self._queue if item.key == key][: self.max_batch_size]

    async def _schedule(self) -> None:
        while True:
            await self._arrived.wait()
            await self._free_workers.acquire()  # form the batch only when a worker can take it
            self._prune()
            if not self._queue:
                self._free_workers.release()
                continue
            first = self._queue[0]
            fill_until = first.enqueued + (0.0 if first.eager else self.max_delay_s)
            while len(self._same_key(first.key)) < self.max_batch_size and time.monotonic() < fill_until:
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), fill_until - time.monotonic())
            self._prune()
            batch = self._same_key(first.key)
            if not batch:
                self._free_workers.release()
                continue
            taken = set(map(id, batch))
            self._queue = [item for item in self._queue if id(item) not in taken]
            self._idle.clear()
            self._changed()
            if self._queue:
                self._arrived.set()
            task = asyncio.get_running_loop().create_task(self._compute(batch))
            self._computing.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._computing.discard(task)
        self._free_workers.release()
        if not self._computing:
            self._idle.set()

    async def _compute(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        for item in batch:
            self.metrics.observe_queue_wait(self.lane, started - item.enqueued)
        busy = self.metrics.lane_busy_workers.labels(self.lane)
        busy.inc()
        try:
            await self._compute_batch(batch)
        finally:
            busy.dec()

    async def _compute_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        run = batch[0].run
        try:
            results = await loop.run_in_executor(self._executor, run, [item.payload for item in batch])
            outcomes: list[tuple[_Item, Any, BaseException | None]] = [
                (item, result, None) for item, result in zip(batch, results, strict=True)
            ]
        except Exception as error:
            if len(batch) == 1:
                outcomes = [(batch[0], None, error)]
            else:
                outcomes = []
                for item in batch:
                    try:
                        (result,) = await loop.run_in_executor(self._executor, run, [item.payload])
                        outcomes.append((item, result, None))
                    except Exception as item_error:
                        outcomes.append((item, None, item_error))
        for item, result, error in outcomes:
            if item.future.done():
                continue
            if error is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(error)
