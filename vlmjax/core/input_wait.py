"""How long the device sat idle waiting for the input pipeline (`train/data_wait_frac`).

Dispatch is asynchronous: while the loop is in `next(train_iter)`, the step dispatched before may still be running,
and that part of the fetch costs nothing. Timing `next()` alone therefore calls a run input-bound whenever building
a batch takes a fifth of the step, even when the device never waits (a 100 ms GPU step and a 30 ms batch read).
`InputWait` charges a fetch only with the part of it after the previous step's outputs were ready: a helper thread
blocks on each dispatched step's outputs and records when they completed.
"""
import queue
import threading
import time

import jax


class InputWait:
    """`fetched(step, t0, t1)` after each batch is read, `dispatched(step, outputs)` after each step is launched,
    `take()` at each log: the seconds the device idled for input since the last `take()`."""

    def __init__(self, timeout_s: float = 600.0):
        self._timeout = timeout_s
        self._queue = queue.SimpleQueue()
        self._done = {}  # step -> time.perf_counter() when its outputs were ready
        self._cv = threading.Condition()
        self._fetches = []  # (step, start, end)
        self._dispatched = set()  # steps handed to the watcher and not yet charged
        self._thread = threading.Thread(target=self._watch, name="input-wait", daemon=True)
        self._thread.start()

    def _watch(self):
        while (item := self._queue.get()) is not None:
            step, outputs = item
            try:
                jax.block_until_ready(outputs)
            except Exception:  # noqa: BLE001 - the loop reads the same outputs and reports their error itself
                pass
            done = time.perf_counter()
            with self._cv:
                self._done[step] = done
                self._cv.notify_all()

    def fetched(self, step: int, start: float, end: float) -> None:
        """The batch of `step` was read between `start` and `end` (time.perf_counter())."""
        self._fetches.append((step, start, end))

    def dispatched(self, step: int, outputs) -> None:
        """`step` was launched; `outputs` (any pytree of its results) are ready when it has run."""
        self._dispatched.add(step)
        self._queue.put((step, outputs))

    def take(self) -> float:
        """Seconds, over the fetches since the last call, between the previous step completing and the batch being
        read: sum of max(0, end - max(start, done[step - 1])). A fetch with no step dispatched before it (the
        run's first) counts whole; one read ahead of its previous step's dispatch (device prefetch deeper than one
        batch) is charged at a later call, once that step has been dispatched. Blocks until the previous steps
        have completed (their outputs are normally ready: the loop has just read the current step's metrics)."""
        total, later, charged = 0.0, [], []
        last = max(self._dispatched, default=None)
        for step, start, end in self._fetches:
            if last is not None and step - 1 > last:
                later.append((step, start, end))
                continue
            prev = start
            if step - 1 in self._dispatched:
                with self._cv:
                    if self._cv.wait_for(lambda: step - 1 in self._done, timeout=self._timeout):
                        prev = max(start, self._done[step - 1])
            total += max(0.0, end - prev)
            charged.append(step)
        self._fetches = later
        if later or charged:  # a later fetch of step k needs done[k - 1]; nothing before that
            keep = min(s for s, _, _ in later) - 1 if later else max(charged)
            with self._cv:
                self._done = {s: t for s, t in self._done.items() if s >= keep}
            self._dispatched = {s for s in self._dispatched if s >= keep}
        return total

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
