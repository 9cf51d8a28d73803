"""Dynamic micro-batching: decoded images from concurrent requests are scored together.

Each request puts its images into one bounded queue; a single worker takes the first waiting image,
then keeps taking until it holds `max_batch` images or `max_wait_ms` have passed since it took the
first, and scores them in one call of the runtime (`score`, e.g. OnnxDetector.score_images) on its
own thread, so the event loop keeps accepting requests meanwhile. A request that does not fit in
the queue whole is refused at once (QueueFull -> 503 with Retry-After), never half-queued.
"""
from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(Exception):
    def __init__(self, waiting: int, limit: int, retry_after: int):
        super().__init__(f"{waiting} images are waiting (the queue holds {limit}, --max-queue); retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Item:
    image: object
    name: str
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """`await batcher.submit([(image, name), ...])` -> one result dict per image, in order: what
    `score(images, names)` returned for it plus "timings" {"queue_ms", "score_ms"} and "batch_size".
    `on_batch(size)` is called once per batch (metrics)."""

    def __init__(self, score: Callable[[list, list], list[dict]], *, max_batch: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 256, on_batch: Callable[[int], None] = lambda n: None):
        if max_batch < 1 or max_queue < 1 or not (max_wait_ms >= 0 and math.isfinite(max_wait_ms)):
            raise ValueError(f"max_batch={max_batch}, max_queue={max_queue} must be >= 1 and "
                             f"max_wait_ms={max_wait_ms} >= 0")
        self.score, self.max_batch, self.max_wait = score, max_batch, max_wait_ms / 1000.0
        self.max_queue, self.on_batch = max_queue, on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgsnet-score")
        self._seconds_per_image = 0.05  # running estimate, for Retry-After
        self.in_flight = 0  # images taken from the queue, being scored

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def pending(self) -> int:
        """Images not answered yet: queued, or in the batch being gathered or scored."""
        return self.waiting + self.in_flight

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """After the server stopped taking requests: let the queue empty, then end the worker."""
        while self._queue is not None and (self.waiting or self.in_flight):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    def retry_after(self, backlog: int) -> int:
        """Seconds, at least 1, in which `backlog` images are likely scored (for Retry-After)."""
        return max(1, math.ceil(backlog * self._seconds_per_image))

    async def submit(self, pairs: list[tuple[object, str]]) -> list[dict]:
        if not pairs:
            return []
        if self.waiting + len(pairs) > self.max_queue:
            raise QueueFull(self.waiting, self.max_queue, self.retry_after(self.waiting + self.in_flight + len(pairs)))
        loop = asyncio.get_running_loop()
        items = [_Item(image, name, loop.create_future()) for image, name in pairs]
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self.in_flight = 1
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    self.in_flight = len(batch)
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                    self.in_flight = len(batch)
                except asyncio.TimeoutError:
                    break
            await self._score_batch(loop, batch)
            del batch  # the scored images are not kept while the next one is awaited
            self.in_flight = 0

    async def _score_batch(self, loop, batch: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._pool, self.score, [i.image for i in batch],
                                                 [i.name for i in batch])
        except Exception as exc:  # noqa: BLE001 - the model failed: every waiting request hears it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / len(batch)
        self.on_batch(len(batch))
        for item, result in zip(batch, results):
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result({**result, "batch_size": len(batch), "timings": {
                    "queue_ms": (start - item.queued) * 1000.0, "score_ms": seconds * 1000.0}})
