"""The Coalescer that merges Serve's waiting batches into one forward pass (plain asyncio, no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from raydetect.serve.coalesce import Coalescer


class SlowModel:
    """Doubles its inputs; records each call's size; one call at a time (like a replica's forward)."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None):
        self.seconds, self.fail_on = seconds, fail_on
        self.calls: list[list[int]] = []
        self.running = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        assert self.running.acquire(blocking=False), "two calls overlapped"
        try:
            self.calls.append(list(items))
            time.sleep(self.seconds)
            if self.fail_on is not None and self.fail_on in items:
                raise ValueError(f"bad item {self.fail_on}")
            return [2 * x for x in items]
        finally:
            self.running.release()


def test_groups_waiting_behind_a_busy_model_run_together_in_order():
    model = SlowModel()
    coalescer = Coalescer(model, lambda: 16)

    async def scenario():
        first = asyncio.create_task(coalescer.submit([1]))
        await asyncio.sleep(0.01)  # the model is now busy with [1]; these wait and then run as one call
        rest = [asyncio.create_task(coalescer.submit(group)) for group in ([2, 3], [4], [5, 6, 7])]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert first == [2] and rest == [[4, 6], [8], [10, 12, 14]]
    assert model.calls == [[1], [2, 3, 4, 5, 6, 7]]
    assert (coalescer.calls, coalescer.groups) == (2, 4)


@pytest.mark.parametrize(("cap", "expected"), [(1, [[0], [1], [2], [3], [4]]), (3, [[0], [1, 2, 3], [4]])])
def test_the_cap_bounds_each_call(cap: int, expected: list[list[int]]):
    model = SlowModel(0.02)
    coalescer = Coalescer(model, lambda: cap)

    async def scenario():
        tasks = [asyncio.create_task(coalescer.submit([0]))]
        await asyncio.sleep(0.005)
        tasks += [asyncio.create_task(coalescer.submit([i])) for i in range(1, 5)]
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == [[0], [2], [4], [6], [8]]
    assert model.calls == expected


def test_a_group_larger_than_the_cap_still_runs():
    model = SlowModel(0.0)
    assert asyncio.run(Coalescer(model, lambda: 2).submit([1, 2, 3])) == [2, 4, 6]
    assert model.calls == [[1, 2, 3]]


def test_a_failure_reaches_every_caller_of_that_call_and_the_next_calls_still_run():
    model = SlowModel(0.02, fail_on=3)
    coalescer = Coalescer(model, lambda: 16)

    async def scenario():
        first = asyncio.create_task(coalescer.submit([1]))
        await asyncio.sleep(0.005)
        merged = [asyncio.create_task(coalescer.submit([i])) for i in (2, 3)]
        outcomes = await asyncio.gather(first, *merged, return_exceptions=True)
        later = await coalescer.submit([4])
        return outcomes, later

    outcomes, later = asyncio.run(scenario())
    assert outcomes[0] == [2]
    assert all(isinstance(o, ValueError) and "bad item 3" in str(o) for o in outcomes[1:])
    assert later == [8]


def test_a_wrong_number_of_results_is_an_error_not_a_silent_misalignment():
    coalescer = Coalescer(lambda items: items[:-1], lambda: 16)
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        asyncio.run(coalescer.submit([1, 2, 3]))
