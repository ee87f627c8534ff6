"""PrefixRL's objective, on one screen: the reward, the settings that make TRL's GRPO the paper's
REINFORCE, and the loss they add up to.

A training row's prompt is the problem followed by a prefix of a correct off-policy trace (empty
for an unprefixed row; prefixes.py cuts them). The policy samples a continuation; GRPOTrainer never
trains prompt tokens, so the prefix is context only and the gradient flows through the policy's
own tokens alone. The reward scores prefix + continuation, since the answer may sit in either.
With the settings below TRL's `dr_grpo` loss is exactly `reinforce_loss` (tests/test_train.py
checks TRL's gradient against it):

    A_i  = r_i - mean_j r_j                              (the group of num_generations samples)
    loss = -sum_i sum_t A_i · log pi(y_it | prompt_i, y_i<t) / (rows x max_completion_length)

Nothing here imports torch: the reward runs in verl's workers too (verl_reward.py).
"""

from __future__ import annotations

from prefixrl.tasks import Problem, Task, verify_all


def solution(prefix: str, continuation: str) -> str:
    """What the reward verifies: the prefix, then the policy's continuation (the trace's own start
    counts as the policy's answer: it is the problem the policy was given)."""
    return prefix + continuation


def rewards(task: Task, items: list[tuple[Problem, str, str]]) -> list[float]:
    """1.0 for each (problem, prefix, continuation) whose solution is correct, else 0.0."""
    return [v.reward for v in verify_all(task, [(p, solution(prefix, c)) for p, prefix, c in items])]


def reward_function(task: Task, problems: dict[str, Problem]):
    """The reward as a TRL reward function (the dataset's problem_id and prefix columns ride along)."""

    def correct(prompts, completions, problem_id, prefix, **_) -> list[float]:
        return rewards(task, [(problems[pid], pre, c) for pid, pre, c in zip(problem_id, prefix, completions)])

    return correct


def objective_args(cfg) -> dict:
    """The GRPOConfig settings that are the method (cfg: a TrainConfig); the rest of train.grpo_config
    is saving, logging, batching and vLLM. The paper's defaults in TrainConfig are noted per line."""
    return dict(
        loss_type=cfg.loss_type,  # dr_grpo: tokens summed, / (rows x max length) — a constant: plain REINFORCE
        scale_rewards=cfg.scale_rewards,  # none: A = r - group mean, no division by the group's std
        beta=cfg.beta,  # 0: no KL penalty to the starting policy
        num_generations=cfg.num_generations,  # 8 samples per problem: the group of the mean baseline
        num_iterations=1,  # one update per batch: the ratio pi/pi_old is 1, so the clip (epsilon) never acts
        learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        temperature=cfg.temperature, top_k=0, top_p=1.0,  # rollouts sample the policy itself
        max_completion_length=cfg.max_completion_length,  # also the loss's constant denominator
    )


def reinforce_loss(logp, advantages, mask, max_length: int, accumulation: int = 1):
    """-A · log pi summed over the masked (continuation) tokens, / (rows x max_length x accumulation
    steps): what TRL's dr_grpo computes with the settings above. logp, mask: (rows, tokens); advantages:
    (rows,). `logp` may be any per-token surrogate (the off-policy baselines weight it: offpolicy.py)."""
    return -(advantages[:, None] * logp * mask).sum() / (logp.size(0) * max_length * accumulation)
