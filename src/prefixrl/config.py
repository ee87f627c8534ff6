"""Every stage's settings and their defaults, in one place and without torch: the library's
dataclasses, the CLI's options (cli.py reads its defaults from here, and tests/test_cli.py checks
that they agree) and the YAML configs (pipeline.build_config) all start from these.
"""

from __future__ import annotations

import importlib.util
from dataclasses import MISSING, dataclass, field, fields

BACKENDS = ("auto", "fast", "hf", "vllm")  # generation backends (generate.make_sampler)
CALIBRATION_N = 32  # samples per (trace, prefix fraction) of a success-vs-prefix curve (demo, experiment)


def option(default, help: str):
    """A field with its help text (as TRL's configs hold theirs): the CLI's option help."""
    return field(default=default, metadata={"help": help})


def default(cls, name: str):
    """A config field's default: the one source of the CLI option of the same meaning."""
    f = {f.name: f for f in fields(cls)}[name]
    return f.default_factory() if f.default is MISSING else f.default


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 256  # sequences per forward batch (prompts x samples)
    backend: str = "auto"  # auto: generate_fast's decode loop on CPU where it supports the model, else
    # transformers' generate | fast: that loop or an error | hf: transformers' generate | vllm (GPU)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"sampling backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class TinyModelConfig:
    """Size of a task's base model (defaults: about 0.6 M parameters, fast on 2 CPU cores)."""

    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 256

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")


@dataclass
class PretrainConfig:
    steps: int = 4000  # optimizer steps (the shipped base models': 4,000 x 32)
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # about 3e-3 worked for 0.5 M-parameter models on this kind of data
    seed: int = 0
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    tokenizer: str = "char"  # "char", or "bpe": a byte-level BPE of bpe_vocab_size learned from the corpus
    bpe_vocab_size: int = 384
    # Start from this model's weights and tokenizer instead of random ones (a `builtin:TASK` name
    # or a folder): a task whose steps another task's base already executes learns its corpus in
    # a fraction of the steps (`mines` starts from `chain`'s walk on digit pairs).
    init: str | None = None

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = TinyModelConfig(**self.model)
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"PretrainConfig.tokenizer must be 'char' or 'bpe', got {self.tokenizer!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class CollectConfig:
    max_attempts: int = 2500  # cap on samples per problem (paper: 2,500)
    traces_per_problem: int = 1  # m: stop a problem once it has this many correct traces
    attempts_per_round: int = 64  # samples per problem per round (a kill loses at most one round)
    seed: int = 0

    def __post_init__(self):
        for name in ("max_attempts", "traces_per_problem", "attempts_per_round"):
            if getattr(self, name) < 1:
                raise ValueError(f"CollectConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PrefixConfig:
    policy: str = "uniform"  # uniform (paper) | fixed | tokens | adaptive (from a calibration)
    cuts_per_trace: int = 3  # uniform: prefixes per trace (paper: 3)
    low: float = 0.4  # uniform: cut points drawn from [low, high] of the trace's tokens (paper: 40-80%)
    high: float = 0.8
    fractions: list[float] = field(default_factory=lambda: [0.5])  # fixed: fractions of the trace
    token_counts: list[int] = field(default_factory=list)  # tokens: prefix lengths in policy tokens
    band: tuple[float, float] = (0.2, 0.8)  # adaptive: target success rate of the prefixed problem
    snap: str | None = None  # cut only where a step starts: this separator (" " or "\n"); None: anywhere
    unprefixed_per_problem: int = 1  # unprefixed copies per problem: 3 cuts + 1 = the paper's 3:1 mix
    # tokens a prompt may have (rendered problem + prefix); None: no limit, or (CLI, adaptive) the
    # policy's context window less the completion length (with_context_limit)
    max_prompt_length: int | None = None
    on_too_long: str = "error"  # a longer prompt: "error" (refused) | "truncate" (a shorter prefix, recorded)
    seed: int = 0

    def __post_init__(self):
        if self.policy not in ("uniform", "fixed", "tokens", "adaptive"):
            raise ValueError(f"PrefixConfig.policy must be uniform, fixed, tokens or adaptive, got {self.policy!r}")
        if not 0.0 <= self.band[0] <= self.band[1] <= 1.0:
            raise ValueError(f"PrefixConfig.band must be (low, high) within [0, 1], got {self.band}")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"PrefixConfig needs 0 <= low <= high <= 1, got low={self.low}, high={self.high}")
        if any(not 0.0 <= f <= 1.0 for f in self.fractions):
            raise ValueError(f"PrefixConfig.fractions must lie in [0, 1], got {self.fractions}")
        if self.policy == "tokens" and not self.token_counts:
            raise ValueError("PrefixConfig.policy 'tokens' needs token_counts")
        if self.on_too_long not in ("error", "truncate"):
            raise ValueError(f"PrefixConfig.on_too_long must be error or truncate, got {self.on_too_long!r}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"PrefixConfig.max_prompt_length must be >= 1, got {self.max_prompt_length}")


@dataclass
class AdaptiveConfig:
    every: int = 25  # steps between re-calibrations
    n: int = 16  # samples per (trace, prefix fraction)
    band: tuple[float, float] = (0.2, 0.8)  # target success rate of a prefixed problem
    grow_pool: bool = True  # the policy's correct unprefixed answers join the trace pool

    def __post_init__(self):
        if self.every < 1 or self.n < 1:
            raise ValueError(f"AdaptiveConfig.every and .n must be >= 1, got {self.every}, {self.n}")


@dataclass
class SFTStageConfig:
    # a 0.6 M-parameter model reproduces 4-18 chain traces at temperature 0.7 (pass@1 1.0, from 0)
    # after 100 passes at 1e-3; 50 passes left it at 0.70 on 18 traces, 3e-3 was unstable
    epochs: int = 100  # passes over the traces (without a sweep)
    lr: float = 1e-3  # (without a sweep)
    batch_size: int = 16  # traces per optimizer step
    seed: int = 0
    # -- tuning on validation problems: the baseline chosen the way a practitioner would -------------
    sweep_lr: list[float] = field(default_factory=list)  # learning rates tried (empty: no sweep)
    sweep_epochs: list[int] = field(default_factory=lambda: [25, 50, 100, 200])  # each lr's run is scored
    # after these many passes (one run per lr: with a constant lr, its first e passes are an e-pass run)
    validation_problems: int = 32  # the first N of the task's "validation" split
    validation_n: int = 16  # samples per validation problem, at the RL stage's eval temperature

    def __post_init__(self):
        for name in ("epochs", "batch_size", "validation_problems", "validation_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFTStageConfig.{name} must be >= 1, got {getattr(self, name)}")
        self.sweep_lr = [float(lr) for lr in self.sweep_lr]  # YAML reads 1e-3 as text
        if self.lr <= 0 or any(lr <= 0 for lr in self.sweep_lr):
            raise ValueError(f"SFTStageConfig.lr and sweep_lr must be > 0, got {self.lr} and {self.sweep_lr}")
        if self.sweep_lr and (not self.sweep_epochs or min(self.sweep_epochs) < 1):
            raise ValueError(f"SFTStageConfig.sweep_epochs must be passes >= 1, got {self.sweep_epochs}")


@dataclass
class TrainConfig:
    """The RL stage's settings; each field's help is `prefixrl train --FIELD`'s (cli.config_options)."""

    steps: int = option(100, "Optimizer steps (one generation batch each).")
    problems_per_step: int = option(16, "Problems per batch (the paper's \"batch 128\", read as 128 problems x 8).")
    num_generations: int = option(8, "Samples per problem: the group of the group-mean baseline.")
    lr: float = option(1e-4, "Learning rate (paper: 1e-6 for 8 B models; tiny models need about 1e-4).")
    loss_type: str = option("dr_grpo", "Any TRL GRPO loss type (dr_grpo: sum over tokens / a constant, i.e. plain "
                            "REINFORCE).")
    scale_rewards: str = option("none", "none (paper: advantage = reward - group mean) | group | batch: std scaling.")
    beta: float = option(0.0, "KL coefficient against the base policy (paper: 0).")
    temperature: float = option(1.0, "Rollout sampling temperature.")
    max_completion_length: int = option(128, "Tokens the policy generates after a prompt: the context window less "
                                        "this bounds a prefixed prompt (the default leaves room in the shipped "
                                        "models' 256-token window for prefixes of their traces).")
    eval_every: int = option(20, "Steps between unprefixed evaluations (0: none, not even at the start and end; "
                             "evaluate the model afterwards with vLLM).")
    eval_n: int = option(16, "Samples per problem at each evaluation.")
    eval_temperature: float = option(0.7, "Sampling temperature of the evaluations (the paper's 0.7).")
    eval_batch_size: int = option(512, "Sequences per generation batch when evaluating (and prefixrl-adaptive's "
                                  "calibration): lower it for long samples on big models (512 x 16k tokens on an "
                                  "8 B model run out of memory).")
    save_every: int = option(50, "Steps between checkpoints (a killed run resumes from the last).")
    reliance_n: int = option(0, "Samples per prefixed training row at each evaluation: each training problem's "
                             "success with its prefixes vs without (reliance.py; 0: not measured).")
    budget_flops: float | None = option(None, "Stop once the run's FLOPs ledger (charged earlier stages included) "
                                        "reaches this.")
    report_to: str = option("none", "Trackers, comma-separated: trackio, wandb, tensorboard (metrics.jsonl is "
                            "always written).")
    progress_bar: bool = option(True, "TRL's step bar (off in experiment workers, which share one terminal).")
    is_truncation: float | None = option(None, "offpolicy-is: cap on the importance weight pi/mu (default: none).")
    luffy_gamma: float = option(0.1, "luffy: the shaping constant in pi / (pi + gamma).")
    seed: int = option(0, "Random seed (of the sft-rl baseline's SFT stage too).")
    sampler: str = option("auto", "Rollouts and evaluations: auto (on CPU, generate_fast's decode loop where it "
                          "supports the model: ~2x faster, the same samples up to float-rounding ties; else "
                          "transformers') | hf (transformers' generate, TRL's own rollouts) | fast (the decode loop, "
                          "or an error).")
    # on the tiny models the split costs nothing measurable (each part is padded to its own longest
    # continuation, which pays for the second pass: benchmarks/train_step.py)
    split_grad_norms: bool = option(True, "Log each part's gradient norm (prefixed/grad_norm, unprefixed/grad_norm) "
                                    "with one backward pass per part; the same gradient (off: TRL's single pass).")
    # rows with advantage 0 (a group whose samples all got the same reward) add nothing to the gradient;
    # early in a PrefixRL run they are most unprefixed rows and many prefixed ones
    skip_zero_advantage: bool = option(True, "Rows whose advantage is 0 get a forward pass without gradient (for "
                                       "their logged entropy) and no backward: the same gradient and metrics, less "
                                       "compute (FLOPs are still charged for every row, as the paper counts them).")
    # -- scale: memory and processes (a step's batch stays problems_per_step x num_generations) ---------
    micro_batch_size: int | None = option(None, "Samples per process per forward/backward (default: its whole "
                                          "share); smaller ones accumulate gradients to the whole batch.")
    # an accelerate config's mixed_precision: bf16 also sets it (train.use_bf16); the weights load in
    # bf16 only where DeepSpeed / FSDP keep fp32 master copies (train.policy_dtype)
    bf16: bool = option(False, "bf16 mixed precision (GPUs).")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory, more "
                                          "time.")
    # -- vLLM rollouts (TRL's GRPOConfig options of the same names; GPU only, README "On GPUs") -----------
    use_vllm: bool = option(False, "Sample rollouts with vLLM (TRL's use_vllm; GPU only).")
    vllm_mode: str = option("server", "server: a `trl vllm-serve` process on its own GPUs | colocate: in each "
                            "process.")
    vllm_server_base_url: str | None = option(None, "server: its URL, e.g. http://10.0.0.2:8000 (overrides host "
                                              "and port).")
    vllm_server_host: str = option("0.0.0.0", "server: its host.")
    vllm_server_port: int = option(8000, "server: its port.")
    vllm_gpu_memory_utilization: float = option(0.3, "colocate: the share of each GPU vLLM may take.")
    vllm_tensor_parallel_size: int = option(1, "colocate: GPUs per vLLM engine (must divide the process count).")

    def __post_init__(self):
        for name in ("steps", "problems_per_step", "num_generations", "max_completion_length", "eval_n",
                     "eval_batch_size", "vllm_tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError("TrainConfig.num_generations must be >= 2: the baseline is the group mean")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"TrainConfig.micro_batch_size must be >= 1 (or None), got {self.micro_batch_size}")
        if self.sampler not in ("auto", "hf", "fast"):
            raise ValueError(f"TrainConfig.sampler must be 'auto', 'hf' or 'fast', got {self.sampler!r}")
        if self.vllm_mode not in ("server", "colocate"):
            raise ValueError(f"TrainConfig.vllm_mode must be 'server' or 'colocate', got {self.vllm_mode!r}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"TrainConfig.vllm_gpu_memory_utilization must be in (0, 1], "
                             f"got {self.vllm_gpu_memory_utilization}")
        if self.reliance_n < 0:
            raise ValueError(f"TrainConfig.reliance_n must be >= 0 (0: not measured), got {self.reliance_n}")
        report_to(self.report_to)  # an unknown or missing tracker: said before any work


TRACKERS = {"trackio": "trackio==0.43.0", "wandb": "wandb", "tensorboard": "tensorboard"}  # name: what to install


def report_to(value: str) -> list[str]:
    """The trackers of `report_to` ("none", or some of TRACKERS, comma-separated), each checked to be
    installed before anything runs."""
    names = [name.strip() for name in value.split(",") if name.strip() and name.strip() != "none"]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker {unknown}; use none or {', '.join(TRACKERS)} (comma-separated)")
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"report_to {missing[0]}: it is not installed; pip install {TRACKERS[missing[0]]}")
    return names or ["none"]
