from itertools import combinations

import pytest

from prefixrl.evaluate import default_ks, pass_at_k, summarize


def brute_force(n: int, c: int, k: int) -> float:
    """Probability that a uniformly random k-subset of n samples (the first c correct) has a correct one."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_matches_brute_force():
    checked = 0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 9))


def test_edge_cases():
    assert pass_at_k(512, 0, 512) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(256, 1, 1) == pytest.approx(1 / 256)
    assert pass_at_k(256, 3, 256) == 1.0
    assert 0.0 < pass_at_k(2500, 1, 64) < 1.0  # large n stays finite and in range


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5), (0, 0, 1)])
def test_invalid_args(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(4) == [1, 2, 4]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_summarize_averages_over_problems():
    rows = [{"n": 4, "correct": 0}, {"n": 4, "correct": 4}, {"n": 4, "correct": 1}]
    result = summarize(rows, [1, 4])
    assert result["pass@1"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert result["pass@4"] == pytest.approx(2 / 3)
