"""Concurrent inference calls share runs, and each caller still gets exactly its own rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from genreid.service.batching import Coalescer


class SlowDouble:
    """A stand-in network: doubles its input, records batch sizes, and can be held mid-run."""

    def __init__(self, fail_on: float | None = None):
        self.sizes: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        self.entered.set()
        self.release.wait(5)
        if self.fail_on is not None and (images == self.fail_on).any():
            raise RuntimeError("network failed")
        return images * 2


def _batch(value: float, rows: int = 1) -> np.ndarray:
    return np.full((rows, 3), value, np.float32)


def test_a_lone_caller_runs_its_own_batch():
    net = SlowDouble()
    runner = Coalescer(net, max_batch=64)
    np.testing.assert_array_equal(runner(_batch(1.5, 3)), _batch(3.0, 3))
    assert net.sizes == [3] and runner.runs == 1


def test_callers_arriving_during_a_run_share_the_next_one():
    net = SlowDouble()
    runner = Coalescer(net, max_batch=64)
    net.release.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(runner, _batch(0.0))
        assert net.entered.wait(5)  # the leader is inside the network; the rest must queue
        rest = [pool.submit(runner, _batch(float(i), rows=i)) for i in range(1, 8)]
        while len(runner._queue) < 7:  # noqa: SLF001 - wait until all seven are queued
            threading.Event().wait(0.001)
        net.release.set()
        results = [first.result(5)] + [f.result(5) for f in rest]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, _batch(2.0 * i, rows=max(i, 1)))
    assert net.sizes == [1, sum(range(1, 8))]  # everyone who waited went in one run
    assert runner.runs == 2


def test_runs_never_exceed_max_batch_unless_one_caller_does():
    net = SlowDouble()
    runner = Coalescer(net, max_batch=4)
    net.release.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(runner, _batch(9.0, rows=10))  # alone over the limit: still one run
        assert net.entered.wait(5)
        rest = [pool.submit(runner, _batch(float(i), rows=2)) for i in range(5)]
        while len(runner._queue) < 5:  # noqa: SLF001
            threading.Event().wait(0.001)
        net.release.set()
        assert first.result(5).shape == (10, 3)
        for i, future in enumerate(rest):
            np.testing.assert_array_equal(future.result(5), _batch(2.0 * i, rows=2))
    assert net.sizes[0] == 10 and all(size <= 4 for size in net.sizes[1:])
    assert sum(net.sizes[1:]) == 10


def test_a_failed_run_reaches_its_callers_and_the_runner_recovers():
    net = SlowDouble(fail_on=7.0)
    runner = Coalescer(net, max_batch=64)
    with pytest.raises(RuntimeError, match="network failed"):
        runner(_batch(7.0))
    np.testing.assert_array_equal(runner(_batch(1.0)), _batch(2.0))


def test_many_threads_each_get_their_own_rows():
    runner = Coalescer(SlowDouble(), max_batch=16)

    def call(i: int) -> bool:
        rows = i % 5 + 1
        return bool(np.array_equal(runner(_batch(float(i), rows)), _batch(2.0 * i, rows)))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(call, range(400)))
