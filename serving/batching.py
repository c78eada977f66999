"""Server-side request batching: concurrent small requests share one model call.

Why: at batch 1 the model call's fixed cost dominates; eight clients sending
one row each are served much faster as one call of eight. A batch closes when
it holds `max_batch_size` rows or `batch_timeout_micros` after its first
request arrived, as in TF Serving's BasicBatchScheduler, with two changes for
latency at low load: a request that finds the batcher idle (nothing queued,
no batch running) runs at once in its own thread, without the two thread
hand-offs through a worker (p50 of a batch-1 `run` around a no-op model:
18 us -> 1 us on the 2-core machine under load; a small share of a model call);
and while no batch is running, a worker does not wait for more requests
(nothing is holding them up, and a lone request would pay the whole
timeout). Requests that arrive meanwhile queue up and form the next, larger
batch; at most `num_batch_threads` batches run at once, inline ones
included. Requests larger than
`max_batch_size` are split (TF Serving's `enable_large_batch_splitting`).
A request whose batch fails is retried alone, so that one malformed request
never fails the requests it happened to be batched with.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np

from serving.configs import BatchingSettings

Arrays = dict[str, np.ndarray]


class QueueFullError(RuntimeError):
    """More rows are waiting than `max_batch_size * max_enqueued_batches`."""


@dataclasses.dataclass
class _Task:
    inputs: Arrays
    size: int
    enqueued: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: BaseException | None = None


class Batcher:
    """Runs `run_fn` on concatenated inputs from worker threads."""

    def __init__(self, run_fn: Callable[[Arrays], Arrays], settings: BatchingSettings, name: str):
        self._run_fn = run_fn
        self._settings = settings
        self._capacity = settings.max_batch_size * settings.max_enqueued_batches
        self._tasks: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._running = 0  # batches being computed, by workers or inline
        self._forming = False  # a worker is collecting the next batch (one at a time)
        self._max_running = max(1, settings.num_batch_threads)
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(self._max_running)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, inputs: Arrays, size: int) -> Arrays:
        """Blocks until the rows of `inputs` (batch-major, `size` rows) are computed."""
        if size > self._capacity:
            raise QueueFullError(
                f"request of {size} rows exceeds the server's queue capacity of {self._capacity} "
                "rows (max_batch_size * max_enqueued_batches); send smaller requests"
            )
        step = self._settings.max_batch_size
        with self._cond:
            if self._queued_rows + size > self._capacity:
                raise QueueFullError(
                    f"the batching queue is full ({self._queued_rows} rows waiting, capacity "
                    f"{self._capacity}); retry later or raise max_enqueued_batches"
                )
            inline = (size <= step and not self._tasks and self._running == 0 and not self._forming
                      and not self._stopping)
            if inline:
                self._running += 1  # later requests queue behind this call, as behind a batch
            else:
                tasks = [
                    _Task({k: v[i:i + step] for k, v in inputs.items()}, min(step, size - i),
                          time.monotonic())
                    for i in range(0, size, step)
                ]
                self._tasks.extend(tasks)
                self._queued_rows += size
                self._cond.notify_all()
        if inline:
            try:
                return self._run_fn(inputs)
            finally:
                with self._cond:
                    self._running -= 1
                    self._wake_workers()
        for task in tasks:
            task.done.wait()
            if task.error is not None:
                raise task.error
        outputs = [t.outputs for t in tasks if t.outputs is not None]  # all set: no error
        if len(outputs) == 1:
            return outputs[0]
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

    def stop(self) -> None:
        """Finishes queued work, then ends the worker threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _next_batch(self) -> list[_Task] | None:
        max_size = self._settings.max_batch_size
        timeout = self._settings.batch_timeout_micros / 1e6
        with self._cond:
            while (not self._tasks or self._forming or self._running >= self._max_running) \
                    and not self._stopping:
                self._cond.wait()
            if not self._tasks:
                return None
            self._forming = True
            batch: list[_Task] = []
            size = 0
            deadline = self._tasks[0].enqueued + timeout
            while True:
                while self._tasks and size + self._tasks[0].size <= max_size:
                    task = self._tasks.popleft()
                    batch.append(task)
                    size += task.size
                full = size >= max_size or bool(self._tasks)
                remaining = deadline - time.monotonic()
                if full or remaining <= 0 or self._stopping or self._running == 0:
                    break
                self._cond.wait(remaining)
            self._forming = False
            self._queued_rows -= size
            self._running += 1
            self._wake_workers()  # the next worker may form a batch from what is left
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._execute(batch)
            finally:
                with self._cond:
                    self._running -= 1
                    self._wake_workers()

    def _wake_workers(self) -> None:
        """Wakes the workers (lock held) only when one can act on it: queued requests wait
        for a free batch slot, a forming batch for the running one to end. Waking idle workers
        after every inline call cost 0.19 ms of a 0.85 ms batch-1 call (GIL hand-offs)."""
        if self._tasks or self._forming or self._stopping:
            self._cond.notify_all()

    def _execute(self, batch: list[_Task]) -> None:
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
            outputs = self._run_fn(inputs)
        except Exception as err:  # noqa: BLE001 - handed to the waiting request threads
            if len(batch) == 1:
                batch[0].error = err
                batch[0].done.set()
            else:
                for task in batch:
                    self._execute([task])
            return
        start = 0
        for task in batch:
            task.outputs = {k: v[start:start + task.size] for k, v in outputs.items()}
            start += task.size
            task.done.set()
