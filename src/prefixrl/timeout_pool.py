"""Call a function in persistent worker processes, each call under a hard wall-clock timeout.

Verifiers such as math-verify can hang on some inputs (sympy evaluating 9^(9^(9^9))), and their own
signal-based timeouts only work on the main thread of the main process. Here the parent waits on
a pipe with a deadline and kills a worker that misses it: the hang costs at most the timeout,
the next call gets a fresh worker. A call that answers costs one pipe round trip.

    pool = TimeoutPool(check_answer, workers=2, timeout_s=5.0, warmup=("1", "1"))
    pool.map([(gold, text), ...])  # -> [("ok", value) | ("timeout", None) | ("error", message), ...]
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
import weakref
from collections import deque
from multiprocessing.connection import wait


def _serve(conn, fn, warmup) -> None:
    """The worker's loop: (args) in, (status, value) out, until the parent closes the pipe."""
    try:
        if warmup is not None:
            fn(*warmup)  # imports and caches warmed here, so they never count against a call's timeout
        conn.send(("ready", None))
    except Exception:
        conn.send(("error", traceback.format_exc(limit=3)))
        return
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            reply = ("ok", fn(*args))
        except Exception as err:
            reply = ("error", f"{type(err).__name__}: {err}")
        conn.send(reply)


class _Worker:
    def __init__(self, ctx, fn, warmup):
        self.conn, child = ctx.Pipe()
        # daemonic processes may not have children: run non-daemonic inside one (killed by finalize)
        self.proc = ctx.Process(target=_serve, args=(child, fn, warmup), name="prefixrl-verifier",
                                daemon=not multiprocessing.current_process().daemon)
        self.proc.start()
        child.close()

    def wait_ready(self, timeout_s: float) -> None:
        if not self.conn.poll(timeout_s):
            self.kill()
            raise RuntimeError(f"a verifier worker did not start within {timeout_s:.0f} s")
        try:
            status, detail = self.conn.recv()
        except EOFError:
            status, detail = "error", f"exit code {self.proc.exitcode}"
        if status != "ready":
            self.kill()
            raise RuntimeError(f"a verifier worker failed to start: {detail}")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()


class TimeoutPool:
    def __init__(self, fn, workers: int = 1, timeout_s: float = 5.0, warmup: tuple | None = None,
                 start_timeout_s: float = 120.0, context: str = "spawn"):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"TimeoutPool needs workers >= 1 and timeout_s > 0, got {workers} and {timeout_s}")
        self.fn, self.n_workers, self.timeout_s, self.warmup = fn, workers, timeout_s, warmup
        self.start_timeout_s = start_timeout_s
        self.ctx = multiprocessing.get_context(context)  # spawn: never fork a parent holding torch threads
        self.workers: list[_Worker] = []
        self.restarts = 0  # workers killed (timeout) or lost (crash) and replaced
        self._lock = threading.Lock()  # one map at a time: replies are matched to calls by worker
        self._finalizer = weakref.finalize(self, _kill_all, self.workers)

    def _fill(self) -> None:
        """Start workers up to n_workers, all at once, then wait until each has warmed up."""
        new = [_Worker(self.ctx, self.fn, self.warmup) for _ in range(self.n_workers - len(self.workers))]
        self.workers.extend(new)
        try:
            for worker in new:
                worker.wait_ready(self.start_timeout_s)
        except RuntimeError:
            self.close()
            raise

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers.remove(worker)
        self.restarts += 1

    def map(self, calls: list[tuple]) -> list[tuple[str, object]]:
        """fn(*args) for each args in calls, spread over the workers; each call's result is
        ("ok", value), ("timeout", None) after timeout_s, or ("error", message). Never hangs."""
        with self._lock:
            results: list[tuple[str, object] | None] = [None] * len(calls)
            pending = deque(enumerate(calls))
            busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (call index, deadline)
            while pending or busy:
                self._fill()  # replaces workers killed in the last round
                for worker in list(self.workers):
                    if worker not in busy and pending:
                        try:
                            worker.conn.send(pending[0][1])
                        except OSError:  # it died while idle: replace it, the call waits for the next one
                            self._replace(worker)
                            continue
                        busy[worker] = (pending.popleft()[0], time.monotonic() + self.timeout_s)
                if not busy:
                    continue
                soonest = min(deadline for _, deadline in busy.values())
                ready = wait([w.conn for w in busy], timeout=max(0.0, soonest - time.monotonic()))
                for worker, (index, deadline) in list(busy.items()):
                    if worker.conn in ready:
                        try:
                            results[index] = worker.conn.recv()
                        except (EOFError, OSError):  # it crashed (e.g. killed for memory)
                            self._replace(worker)
                            results[index] = ("error", f"verifier worker died (exit code {worker.proc.exitcode})")
                    elif time.monotonic() >= deadline:
                        results[index] = ("timeout", None)
                        self._replace(worker)  # it may never return: kill it
                    else:
                        continue
                    del busy[worker]
            return results  # type: ignore[return-value]

    def close(self) -> None:
        _kill_all(self.workers)
        self.workers.clear()
