"""Coalesce concurrent inference calls into one batched run (leader/follower, no extra thread).

The first caller to find the runner idle becomes the leader: it runs its own images together with whatever
other callers queued meanwhile (up to `max_batch` images), hands each caller its rows, and passes leadership
to the next waiter if any are left. A caller alone runs at once, with no hand-off and no waiting window; under
load, concurrent requests share one ONNX Runtime call, which is where batched inference earns its throughput
(a little on a CPU, a lot on a GPU).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class _Call:
    images: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to lead the next run rather than with a result
    result: np.ndarray | None = None
    error: BaseException | None = None

    def outcome(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Coalescer:
    """Calls `run` on the concatenation of concurrent callers' image batches; each caller gets its rows."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int,
                 observe: Callable[[int], None] | None = None):
        """`observe` is told the size of every batch run (metrics), so this module needs no metrics library."""
        self._run = run
        self._max_batch = max_batch
        self.observe = observe
        self._lock = threading.Lock()
        self._queue: deque[_Call] = deque()
        self._busy = False
        self.runs = 0  # calls of `run` so far (batching shows as runs < callers)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        call = _Call(images)
        with self._lock:
            self._queue.append(call)
            leader = not self._busy
            self._busy = True
        if not leader:
            call.done.wait()
            if not call.lead:
                return call.outcome()
            call.done.clear()
        self._lead()
        return call.outcome()

    def _take(self) -> list[_Call]:
        """The queue's head and as many followers as fit in `max_batch` (the head alone may exceed it)."""
        with self._lock:
            batch = [self._queue.popleft()]
            size = len(batch[0].images)
            while self._queue and size + len(self._queue[0].images) <= self._max_batch:
                batch.append(self._queue.popleft())
                size += len(batch[-1].images)
        return batch

    def _lead(self) -> None:
        batch = self._take()
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([c.images for c in batch])
            outputs = self._run(images)
            if self.observe is not None:
                self.observe(len(images))
            start = 0
            for call in batch:
                call.result = outputs[start : start + len(call.images)]
                start += len(call.images)
        except BaseException as err:  # every caller in the batch gets it
            for call in batch:
                call.error = err
        with self._lock:
            self.runs += 1
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].done.set()
            else:
                self._busy = False
        for call in batch:
            call.done.set()
