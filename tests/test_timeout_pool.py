"""TimeoutPool: answers, timeouts, errors and crashed workers, each call bounded by the timeout."""

import math
import os
import time

import pytest

from prefixrl.timeout_pool import TimeoutPool


def test_results_timeouts_errors_and_crashes_in_call_order():
    pool = TimeoutPool(time.sleep, workers=2, timeout_s=0.5)
    try:
        start = time.monotonic()
        assert pool.map([(0.01,), (30,), (0.01,), (0.01,)]) == [("ok", None), ("timeout", None), ("ok", None),
                                                                  ("ok", None)]
        assert time.monotonic() - start < 5 and pool.restarts == 1  # the sleeper was killed, not waited for
        assert pool.map([(0.01,)] * 3) == [("ok", None)] * 3 and len(pool.workers) == 2  # replaced
    finally:
        pool.close()
    assert pool.workers == []
    errors = TimeoutPool(math.sqrt, timeout_s=5)
    assert errors.map([(4.0,), (-1.0,)]) == [("ok", 2.0), ("error", "ValueError: math domain error")]
    errors.close()
    crash = TimeoutPool(os._exit, timeout_s=5)  # a worker that dies mid-call (as if killed for memory)
    assert crash.map([(3,)]) == [("error", "verifier worker died (exit code 3)")] and crash.restarts == 1
    crash.close()


def test_a_worker_that_cannot_start_is_an_error():
    with pytest.raises(RuntimeError, match="(?s)failed to start.*ValueError: math domain error"):
        TimeoutPool(math.sqrt, warmup=(-1.0,)).map([(1.0,)])
    with pytest.raises(ValueError, match="workers >= 1"):
        TimeoutPool(math.sqrt, workers=0)
