"""Merge the small batches that `@serve.batch` forms while the model is busy into one forward pass.

Since ray-project/ray#53096 ("make ray.serve.batch concurrent") Serve forms the next batch as soon as
`batch_wait_timeout_s` passes, whether or not the model is free; with `max_concurrent_batches=1` those
batches queue at a semaphore and run one after another, each as small as it was when it was formed. On a
slow device (a CPU) that means batches of 2-3 at concurrency 16, and almost no gain from batching.

`Coalescer` restores the opportunistic batching Serve used to document: when the model becomes free, it
takes everything waiting (whole Serve batches, up to `max_items` images) and runs it as one call. Give the
batched method a `max_concurrent_batches` large enough for every formed batch to reach it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any


class Coalescer:
    """Run `run(items) -> results` (blocking; in a worker thread) on merged groups of waiting items.

    `await submit(group)` returns the results of `group`, in order. One call runs at a time; when it ends,
    the next takes waiting groups in arrival order while their total stays within `max_items()` (always at
    least one group, so a group larger than the cap still runs)."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_items: Callable[[], int]):
        self._run = run
        self._max_items = max_items
        self._waiting: deque[tuple[list[Any], asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None
        self.calls = 0  # merged calls run so far, and the groups they carried
        self.groups = 0

    async def submit(self, group: Sequence[Any]) -> list[Any]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((list(group), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[Any], asyncio.Future]]:
        cap = max(1, int(self._max_items()))
        taken = [self._waiting.popleft()]
        total = len(taken[0][0])
        while self._waiting and total + len(self._waiting[0][0]) <= cap:
            group = self._waiting.popleft()
            taken.append(group)
            total += len(group[0])
        return taken

    async def _drain(self) -> None:
        while self._waiting:
            taken = [(group, future) for group, future in self._take() if not future.cancelled()]
            if not taken:
                continue
            flat = [item for group, _ in taken for item in group]
            try:
                results = list(await asyncio.to_thread(self._run, flat))
                if len(results) != len(flat):
                    raise RuntimeError(f"the batched call returned {len(results)} results for {len(flat)} items")
            except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the failure
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.calls += 1
            self.groups += len(taken)
            start = 0
            for group, future in taken:
                if not future.done():
                    future.set_result(results[start : start + len(group)])
                start += len(group)
