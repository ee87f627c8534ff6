"""A run folder knows what it holds (runinfo.run_folder): every stage records what defines its
output and refuses a rerun with other inputs by name; one writer per folder; imported traces
survive a rerun of collect. Fast: fake samplers, and `train` itself stubbed where only the
check before it matters."""

import json
import threading
from types import SimpleNamespace

import pytest

import prefixrl.engine
from conftest import FakeSortSampler, solve_sort
from prefixrl.evaluate import evaluate
from prefixrl.files import InputError, write_jsonl
from prefixrl.engine import run_method
from prefixrl.models import char_tokenizer, resolve_model
from prefixrl.prefixes import prefixed_problems
from prefixrl.screen import screen
from prefixrl.traces import CollectConfig, collect, import_traces, load_traces

CFG = CollectConfig(max_attempts=64, attempts_per_round=16, seed=0)


def sampler_of(model: str, **kwargs) -> FakeSortSampler:
    """A fake sampler that says it was loaded from a shipped model's folder (its weights are hashed)."""
    sampler = FakeSortSampler(**kwargs)
    sampler.model_path = resolve_model(model)
    return sampler


@pytest.fixture(scope="module")
def problems(sort_task):
    return sort_task.problems("train")[:4]


# -- 1, 2: train -------------------------------------------------------------------------------------

@pytest.fixture
def stub_train(monkeypatch):
    """`train` as a finished run leaves its folder (model/, manifest.json), or, with kill set, as a
    kill mid-run does; records the calls."""
    state = SimpleNamespace(kill=False, calls=[])

    def fake(task, model_path, rows, out_dir, cfg, **kwargs):
        state.calls.append(model_path)
        (out_dir / "config.json").write_text("{}")  # train's first file
        if state.kill:
            raise KeyboardInterrupt
        (out_dir / "model").mkdir(parents=True, exist_ok=True)
        (out_dir / "manifest.json").write_text("{}")
        return out_dir / "model"

    monkeypatch.setattr(prefixrl.engine, "train", fake)
    return state


@pytest.fixture(scope="module")
def rows(sort_task):
    chosen = {p.id: p for p in sort_task.problems("train")[:2]}
    traces = [{"problem_id": pid, "completion": solve_sort(p.prompt)} for pid, p in chosen.items()]
    return prefixed_problems(char_tokenizer(), traces, chosen)


@pytest.mark.parametrize("change, named", [
    (dict(method="rl"), "method: 'prefixrl' -> 'rl'"),
    (dict(model="builtin:chain"), "model: '"),
    (dict(rows="other"), "rows: '"),
])
@pytest.mark.parametrize("killed", [False, True])
def test_train_folder_refuses_another_method_model_or_data(sort_task, rows, stub_train, tmp_path, change, named,
                                                           killed):
    """Finished (1) or killed mid-run (2), a run folder is not returned or resumed for another
    method, base model or data: that would report (or continue) the old run as the new one."""
    stub_train.kill = killed
    out = tmp_path / "run"
    first = dict(method="prefixrl", model="builtin:sort", rows=rows)
    try:
        run_method(first["method"], sort_task, resolve_model(first["model"]), first["rows"], out)
    except KeyboardInterrupt:
        pass
    second = {**first, **change}
    if second["rows"] == "other":
        second["rows"] = rows[:-1]
    stub_train.kill = False
    with pytest.raises(InputError, match=f"{out} holds a train run of other inputs \\(.*{named}"):
        run_method(second["method"], sort_task, resolve_model(second["model"]), second["rows"], out)
    assert len(stub_train.calls) == 1  # refused before training
    assert run_method("prefixrl", sort_task, resolve_model("builtin:sort"), rows, out) == out / "model"  # same: resumes


def test_sft_rl_folder_refuses_other_sft_settings(sort_task, rows, tmp_path, monkeypatch):
    """sft-rl's sft/ folder is reused on resume, so its folder is claimed under its SFT settings too:
    a rerun with another learning rate or sweep is refused, not handed the old SFT model."""
    from prefixrl.sft import SFTStageConfig

    monkeypatch.setattr(prefixrl.engine, "_run_method", lambda *args: args[4] / "model")  # the check alone
    out, traces = tmp_path / "run", [{"problem_id": r["problem_id"], "completion": "x"} for r in rows]
    model = resolve_model("builtin:sort")
    run_method("sft-rl", sort_task, model, rows, out, traces=traces, sft_cfg=SFTStageConfig(lr=1e-3))
    with pytest.raises(InputError, match="sft: "):
        run_method("sft-rl", sort_task, model, rows, out, traces=traces, sft_cfg=SFTStageConfig(sweep_lr=[3e-4]))
    assert run_method("sft-rl", sort_task, model, rows, out, traces=traces, sft_cfg=SFTStageConfig(lr=1e-3)) == \
        out / "model"


# -- 3: evaluate and screen ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["evaluate", "screen"])
def test_scores_of_another_task_or_model_are_not_reported(sort_task, chain_task, problems, tmp_path, stage):
    """Scores resume by problem id: without the check, sort's run would report chain's pass@1."""
    def run(task, sampler):
        if stage == "evaluate":
            return evaluate(task, sampler, problems, 4, tmp_path, quiet=True)
        return screen(task, sampler, problems, tmp_path, n=4, quiet=True)

    run(sort_task, sampler_of("builtin:sort"))
    scores = (tmp_path / "scores.jsonl").read_text()
    with pytest.raises(InputError, match=f"{stage} run of other inputs \\(.*task: 'sort' -> 'chain'"):
        run(chain_task, sampler_of("builtin:sort"))
    with pytest.raises(InputError, match=f"{stage} run of other inputs \\(model: '[0-9a-f]+' -> '[0-9a-f]+'; "
                                         "its model was .*checkpoints/sort\\)"):
        run(sort_task, sampler_of("builtin:chain"))
    with pytest.raises(InputError, match=r"\(n: 4 -> 8\)"):
        (evaluate(sort_task, sampler_of("builtin:sort"), problems, 8, tmp_path, quiet=True) if stage == "evaluate"
         else screen(sort_task, sampler_of("builtin:sort"), problems, tmp_path, n=8, quiet=True))
    assert (tmp_path / "scores.jsonl").read_text() == scores
    run(sort_task, sampler_of("builtin:sort", batch_size=8))  # the same inputs resume (batch size is speed only)


# -- 4, 5, 6: collect ---------------------------------------------------------------------------------

def test_collect_refuses_another_model(sort_task, problems, tmp_path):
    """Chain-q's collect into chain's store would rewrite its manifest and charge chain-q's FLOPs
    for chain's traces."""
    collect(sort_task, sampler_of("builtin:chain"), problems, tmp_path, CFG, source="builtin:chain", quiet=True)
    before = {name: (tmp_path / name).read_text() for name in ("manifest.json", "flops.json", "traces.jsonl")}
    with pytest.raises(InputError, match=r"collect run of other inputs \(model: "):
        collect(sort_task, sampler_of("builtin:chain-q"), problems, tmp_path, CFG, source="builtin:chain-q", quiet=True)
    assert {name: (tmp_path / name).read_text() for name in before} == before


def test_imported_traces_survive_a_rerun_of_collect(sort_task, problems, tmp_path):
    unsolvable = problems[1]
    sampler = FakeSortSampler(unsolvable=(unsolvable.prompt,))
    collect(sort_task, sampler, problems, tmp_path, CFG, quiet=True)
    write_jsonl(tmp_path / "good.jsonl", [{"problem_id": unsolvable.id, "completion": solve_sort(unsolvable.prompt)}])
    assert import_traces(sort_task, tmp_path / "traces.jsonl", tmp_path / "good.jsonl")["added"] == 1
    stored = load_traces(tmp_path / "traces.jsonl")

    returned = collect(sort_task, sampler, problems, tmp_path, CFG, quiet=True)  # demo/experiment do this on resume
    assert load_traces(tmp_path / "traces.jsonl") == stored
    assert [t for t in returned if t["origin"] == "import"] == [stored[-1]]  # the later stages get it too
    assert len(sampler.calls) == len({c[2] for c in sampler.calls})  # the rerun sampled nothing


def test_a_second_collect_on_one_folder_is_refused(sort_task, problems, tmp_path):
    """Two collects on one folder would each append every round: the second one is refused while
    the first holds the folder (the lock is the kernel's: a killed collect releases it)."""
    outcome = {}

    class SecondCollectMidRun(FakeSortSampler):
        def generate(self, prompts, n, seed, dead_end=None):
            if not outcome:  # a second collect starts while the first is sampling
                thread = threading.Thread(target=self._second)
                thread.start()
                thread.join()
            return super().generate(prompts, n, seed)

        def _second(self):
            try:
                collect(sort_task, FakeSortSampler(), problems, tmp_path, CFG, quiet=True)
                outcome["error"] = None
            except InputError as err:
                outcome["error"] = str(err)

    collect(sort_task, SecondCollectMidRun(), problems, tmp_path, CFG, quiet=True)
    assert "another prefixrl process is writing this run folder" in outcome["error"]
    rounds = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    keys = [(e["id"], e["samples"], e["attempts"]) for row in rounds for e in row["events"]]
    assert len(keys) == len(set(keys))  # no round twice
    collect(sort_task, FakeSortSampler(), problems, tmp_path, CFG, quiet=True)  # released with the first


def test_a_folder_of_another_stage_is_refused(sort_task, problems, tmp_path):
    evaluate(sort_task, FakeSortSampler(), problems, 4, tmp_path, quiet=True)
    with pytest.raises(InputError, match="holds the files of `evaluate`, not of `collect`"):
        collect(sort_task, FakeSortSampler(), problems, tmp_path, CFG, quiet=True)


# -- resume: no alarm for tied weights ----------------------------------------------------------------

def test_resume_does_not_warn_about_tied_lm_head(sort_task, rows, tmp_path, caplog):
    """A tied lm_head is saved once, as the embedding: resuming a checkpoint must not report it missing."""
    from datasets import Dataset

    from prefixrl.flops import FlopsLedger
    from prefixrl.models import load_model
    from prefixrl.tasks import problems_by_id
    from prefixrl.train import PrefixRLTrainer, TrainConfig, grpo_config, reward_function

    model, tokenizer = load_model(resolve_model("builtin:sort"))
    assert set(model.all_tied_weights_keys) == {"lm_head.weight"}
    trainer = PrefixRLTrainer(model=model, reward_funcs=reward_function(sort_task, problems_by_id(sort_task)),
                              args=grpo_config(TrainConfig(problems_per_step=2, num_generations=2), tmp_path),
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                              flops_ledger=FlopsLedger())
    trainer.save_model(str(tmp_path / "checkpoint-1"))  # as a checkpoint is saved: without lm_head.weight
    with caplog.at_level("WARNING"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert "missing keys" not in caplog.text
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_a_resumed_stage_reports_the_wall_time_of_all_its_calls(tmp_path):
    """Each call that finishes a stage adds its time to the manifest's (a resume keeps what the
    earlier calls took); a folder that held another stage starts from zero."""
    from prefixrl.runinfo import write_manifest

    def wall(stage, seconds):
        write_manifest(tmp_path, stage=stage, config={}, seed=0, flops=0.0, wall_time_s=seconds)
        return json.loads((tmp_path / "manifest.json").read_text())["wall_time_s"]

    assert (wall("collect", 100.0), wall("collect", 2.5), wall("screen", 4.0)) == (100.0, 102.5, 4.0)
