"""Compute-matched comparisons on hand-made curves: step-hold values, speedup, final ratio, intervals."""

import math

import numpy as np
import pytest

from prefixrl import analysis


def test_on_grid_holds_the_last_evaluation_and_is_unknown_before_the_first():
    curve = [(10.0, 0.1), (20.0, 0.3)]
    values = analysis.on_grid(curve, np.array([0.0, 9.9, 10.0, 15.0, 20.0, 99.0]))
    assert np.isnan(values[:2]).all() and values[2:].tolist() == [0.1, 0.1, 0.3, 0.3]


def test_speedup_and_final_ratio():
    grid = np.arange(0.0, 101.0)
    baseline = [[(0.0, 0.0), (50.0, 0.1), (100.0, 0.2)], [(0.0, 0.0), (50.0, 0.2), (100.0, 0.2)]]  # final 0.2 at 100
    method = [[(10.0, 0.0), (25.0, 0.2), (100.0, 0.5)], [(10.0, 0.0), (25.0, 0.3), (100.0, 0.7)]]  # mean 0.25 at 25
    assert analysis.speedup(method, baseline, grid) == pytest.approx(100 / 25)
    assert analysis.final_ratio(method, baseline) == pytest.approx(0.6 / 0.2)
    # a baseline that plateaus reaches its own final value early: the speedup uses that point
    early = [[(0.0, 0.0), (40.0, 0.2), (100.0, 0.2)]]
    assert analysis.speedup(method, early, grid) == pytest.approx(40 / 25)
    never = [[(10.0, 0.0), (100.0, 0.1)]]
    assert analysis.speedup(never, baseline, grid) is None  # never reaches 0.2
    flat = [[(0.0, 0.0), (100.0, 0.0)]]
    assert math.isinf(analysis.speedup(method, flat, grid))  # a baseline at 0 is beaten from the start
    assert math.isinf(analysis.final_ratio(method, flat))
    assert analysis.speedup(flat, flat, grid) is None and analysis.final_ratio(flat, flat) is None


def test_bootstrap_interval_over_seeds():
    grid = np.arange(0.0, 101.0)
    baseline = [[(0.0, 0.0), (100.0, 0.2)]] * 3
    method = [[(0.0, 0.0), (50.0, v), (100.0, v)] for v in (0.3, 0.4, 0.5)]
    low, high = analysis.bootstrap(analysis.final_ratio, method, baseline)
    assert 1.5 <= low < analysis.final_ratio(method, baseline) < high <= 2.5
    assert analysis.bootstrap(lambda a, b: analysis.speedup(a, b, grid), method, baseline) == (2.0, 2.0)
    flat = [[(0.0, 0.0), (100.0, 0.0)]] * 3
    assert analysis.bootstrap(lambda a, b: analysis.speedup(a, b, grid), method, flat) is None
