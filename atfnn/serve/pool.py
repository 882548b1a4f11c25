"""Inference off the event loop: a fixed number of worker threads and a bounded queue in front of them.

The event loop only parses requests and answers /healthz; decoding, the network and plotting run in the workers, so
the server keeps answering while every worker is busy. A request that finds `workers + max_queue` jobs already in
flight is refused at once with 503 instead of waiting without bound.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from atfnn.serve.errors import ApiError

T = TypeVar("T")


@dataclass(frozen=True)
class PoolStats:
    workers: int
    capacity: int  # jobs accepted at once: running plus waiting
    in_flight: int


class InferencePool:
    def __init__(self, workers: int, max_queue: int):
        self.workers, self.capacity = workers, workers + max_queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atfnn-inference")
        self._lock = threading.Lock()
        self._in_flight = 0  # counted until the job itself ends, even when its client has gone

    async def run(self, fn: Callable[..., T], *args) -> T:
        with self._lock:
            if self._in_flight >= self.capacity:
                raise ApiError(503, "busy", f"all {self.workers} worker(s) busy and {self.capacity - self.workers} "
                                            "request(s) waiting; retry later (atfnn serve --workers/--max-queue)")
            self._in_flight += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _finished(self, _future) -> None:
        with self._lock:
            self._in_flight -= 1

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(self.workers, self.capacity, self._in_flight)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
