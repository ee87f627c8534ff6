"""Each claim's verdict from hand-made run logs: the thresholds written next to each claim decide
reproduced / partly / not, and a claim whose methods did not run says so."""

import pytest

from prefixrl.claims import NOT, NOT_RUN, PARTLY, REPRODUCED, judge_claims


def run(evals=(), metrics=()):
    return {"eval": list(evals), "metrics": list(metrics)}


def pass_at_1(hard: float, heldout: float) -> dict:
    return {"eval/hard/pass@1": hard, "eval/heldout/pass@1": heldout}


def headline(speedup=None, ratio_rl=None, ratio_sft=None) -> dict:
    row = {"speedup_ci": None, "final_ratio_ci": None}
    return {split: {"against": {"sft-rl": {**row, "speedup": speedup, "final_ratio": ratio_sft},
                                "rl": {**row, "speedup": None, "final_ratio": ratio_rl}}}
            for split in ("hard", "heldout")}


def verdicts(runs=None, numbers=None, calibration=None, method="prefixrl") -> dict[str, dict]:
    claims = judge_claims(runs or {}, numbers or {}, calibration or {}, method)
    return {claim["claim"].split()[0] + " " + claim["claim"].split()[1]: claim for claim in claims}


def test_every_claim_says_which_methods_it_needs_when_they_did_not_run():
    claims = judge_claims({}, {}, {}, None)
    assert len(claims) == 6
    assert all(c["status"] == NOT_RUN and c["evidence"] for c in claims)


@pytest.mark.parametrize("speedup, status", [(2.5, REPRODUCED), (2.0, REPRODUCED), (1.5, PARTLY), (0.8, NOT),
                                             (None, NOT)])
def test_speedup_over_sft_rl(speedup, status):
    claim = verdicts(numbers=headline(speedup=speedup))["PrefixRL reaches"]
    assert claim["status"] == status
    assert ("not reached" in claim["evidence"]) == (speedup is None)


@pytest.mark.parametrize("rl, sft, status", [(3.2, 1.5, REPRODUCED), (3.2, 1.2, PARTLY), (1.1, 1.05, PARTLY),
                                             (0.9, 1.2, NOT), (None, 0.8, NOT)])
def test_final_reward_ratios(rl, sft, status):
    assert verdicts(numbers=headline(ratio_rl=rl, ratio_sft=sft))["PrefixRL's final"]["status"] == status


@pytest.mark.parametrize("hard, heldout, status", [((0.01, 0.30), (0.0, 0.2), REPRODUCED),
                                                   ((0.01, 0.00), (0.0, 0.07), PARTLY),
                                                   ((0.01, 0.015), (0.0, 0.0), PARTLY),
                                                   ((0.05, 0.02), (0.01, 0.0), NOT)])
def test_back_generalization_reads_both_unprefixed_splits(hard, heldout, status):
    runs = {"prefixrl-only": [run([pass_at_1(hard[0], heldout[0]), pass_at_1(hard[1], heldout[1])])] * 2}
    claim = verdicts(runs)["Training on"]
    assert claim["status"] == status
    assert f"hard {hard[0]:.3f} -> {hard[1]:.3f}" in claim["evidence"]
    assert f"heldout {heldout[0]:.3f} -> {heldout[1]:.3f}" in claim["evidence"]


@pytest.mark.parametrize("curve, status", [([0.0, 0.01, 0.05, 0.4, 0.9], REPRODUCED),
                                           ([0.0, 0.1, 0.2, 0.3, 0.4], PARTLY),
                                           ([0.0, 0.05, 0.1, 0.15, 0.2], NOT)])
def test_success_vs_prefix_jump(curve, status):
    calibration = {"base": {i / 4: value for i, value in enumerate(curve)}}
    assert verdicts(calibration=calibration)["Success vs"]["status"] == status


@pytest.mark.parametrize("sft, ours, status", [(0.001, 0.095, REPRODUCED), (0.001, 0.02, PARTLY),
                                               (0.09, 0.1, PARTLY), (0.09, 0.02, NOT)])
def test_entropy_collapse(sft, ours, status):
    def entropy(value):
        return [run(metrics=[{"entropy": value}] * 10)]

    runs = {"sft-rl": entropy(sft), "prefixrl": entropy(ours), "rl": entropy(0.1)}
    assert verdicts(runs)["SFT collapses"]["status"] == status


@pytest.mark.parametrize("is_norms, ours, status", [([1, 1, 1, 9, 1], [1, 1.1, 0.9, 1], REPRODUCED),
                                                    ([1, 1, 1, 9, 1], [0.1, 9, 0.1, 0.1], PARTLY),
                                                    ([1, 1.2, 0.8, 1], [0.1, 9, 0.1, 0.1], NOT)])
def test_gradient_spike(is_norms, ours, status):
    def norms(values):
        return [run(metrics=[{"grad_norm": v} for v in values])]

    runs = {"offpolicy-is": norms(is_norms), "prefixrl": norms(ours)}
    assert verdicts(runs)["Importance-weighted off-policy"]["status"] == status
