"""Scaling out: parallel launchers, SLURM preset, data-parallel runs, presets, Optuna tuning.

The sweeps run ``python run.py -m`` through the real launchers on the tiny model (slow: each
starts several Python processes that import torch); the rest are fast unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench.config.precheck import check_command_line
from peftbench.errors import ConfigError
from peftbench.launch import commands, slots
from peftbench.launch.callbacks import sweep_size
from peftbench.launch.tune import SEARCH_SEED, best_params, flow, objective, search_space
from peftbench.records.store import records_dir
from peftbench.runner import data_parallel
from tests.conftest import ROOT, tiny_overrides

CONF = ROOT / "conf"
SKIP_LINE = "already done, skipping"


def _compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


# --------------------------------------------------------------------------- launcher presets


@pytest.mark.parametrize(
    ("preset", "target"),
    [
        ("processes", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("local", "hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("slurm", "peftbench_launcher.slurm.SlurmLauncher"),  # Hydra's, made to finish its sweep
    ],
)
def test_launcher_presets_compose_onto_the_hydra_plugins(preset, target):
    launcher = _compose_hydra(f"hydra/launcher={preset}").hydra.launcher
    assert launcher._target_ == f"hydra_plugins.{target}"


def test_slurm_preset_makes_the_sbatch_script_its_config_says(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    fake_srun = tmp_path / "bin" / "srun"  # submitit refuses to build a script without srun
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\nexit 0\n")
    fake_srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = _compose_hydra(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.array_parallelism=4",
        "hydra.launcher.timeout_min=90",
        f"hydra.launcher.submitit_folder={tmp_path}/%j",
        "hydra.job.name=run",
    )
    script = slots.slurm_script(OmegaConf.to_container(cfg.hydra.launcher, resolve=True), 12)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --array=0-11%4",  # 12 runs, at most 4 at once
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=90",
        "#SBATCH --ntasks-per-node=1",
        # the jobs run this checkout's code, on clusters that export no environment too
        "export SLURM_EXPORT_ENV=ALL",
        f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
    ):
        assert line in script.splitlines(), line


@pytest.mark.parametrize(
    ("launcher", "cores", "threads"),
    [
        ({}, 8, None),  # one run at a time: torch's default
        ({"n_jobs": 2}, 2, 1),
        ({"n_jobs": 2}, 16, 8),
        ({"n_jobs": -1}, 4, 1),  # joblib's "all cores"
        ({"n_jobs": 8}, 2, 1),  # never below one
        ({"cpus_per_task": 6}, 64, 6),  # submitit reserved them
    ],
)
def test_auto_threads_share_the_cores_between_parallel_runs(monkeypatch, launcher, cores, threads):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(slots, "available_cores", lambda: cores)
    assert slots.torch_threads("auto", launcher) == threads
    assert slots.torch_threads(3, launcher) == 3  # an explicit count wins


@pytest.mark.parametrize(
    ("launcher", "cores", "lanes", "threads"),
    [
        ({}, 2, "2", 1),  # the benchmark script: 2 lanes, one run at a time each
        ({}, 16, "4", 4),
        ({"n_jobs": 2}, 16, "2", 4),  # lanes of parallel sweeps: 4 runs at once
        ({}, 8, "1", None),  # one lane is no lanes
    ],
)
def test_auto_threads_share_the_cores_between_lanes(monkeypatch, launcher, cores, lanes, threads):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv(slots.LANES_ENV, lanes)
    monkeypatch.setattr(slots, "available_cores", lambda: cores)
    assert slots.torch_threads("auto", launcher) == threads


def test_auto_threads_under_torchrun_split_the_node(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(slots, "available_cores", lambda: 16)
    assert slots.torch_threads("auto", {}) == 4


def test_each_run_claims_a_gpu_no_other_run_holds(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setattr(slots.tempfile, "gettempdir", lambda: str(tmp_path))
    with slots._lock_path(0).open("a") as other_run:  # another process's run holds GPU 0
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert slots.claim_gpu(2, preferred=0) == 1
        assert slots.claim_gpu(3, preferred=2) == 2  # re-claiming frees the previous one
        assert slots.claim_gpu(2, preferred=1) == 1
    slots.release_gpu()
    assert slots.claim_gpu(2, preferred=0) == 0  # GPU 0 is free again
    slots.release_gpu()


# --------------------------------------------------------------------------- command-line check


def test_presets_and_optuna_ranges_pass_the_check_and_typos_still_fail():
    check_command_line(["-m", "+experiment=offline-suite"], CONF)
    check_command_line(["-m", "+experiment=budget-matched", "method.budget_pct=0.1,1"], CONF)
    tune = ["-m", "+experiment=tune", "method=lora", *search_space("lora")]
    check_command_line(tune, CONF)
    check_command_line(
        ["-m", "hydra/sweeper=optuna", "method.lr=tag(log, interval(1e-5, 1e-2))"], CONF
    )
    check_command_line(["-m", "hydra/launcher=processes", "method=lora,adapter"], CONF)
    bad = {
        ("-m", "+experiment=ofline-suite"): "did you mean offline-suite?",
        ("+experiment=offline-suite",): "-m is missing",  # the preset sweeps
        ("-m", "+experiment=tune", "method.lrr=tag(log, interval(1e-5, 1e-2))"): "method.lr?",
        ("-m", "hydra/sweeper=optuna", "method.lr=interval(-1, 1)"): "method.lr must be",
        ("-m", "+experiment=offline-suite", "seed=0,-1"): "seed must be",
        ("-m", "hydra/launcher=paralel"): "hydra/launcher/paralel",
    }
    for argv, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
            check_command_line(list(argv), CONF)


def test_offline_suite_is_every_offline_task_by_the_core_methods_by_three_seeds():
    params = _compose_hydra("+experiment=offline-suite").hydra.sweeper.params
    tasks = params.task.split(",")
    assert set(tasks) == {"polarity", "hedge", "bbc-news", "verse-paraphrase", "wnut16"}
    assert params.seed == "0,1,2"
    assert sweep_size([f"{k}={v}" for k, v in params.items()]) == len(tasks) * 4 * 3


def test_budget_matched_sizes_every_method_to_one_budget():
    cfg = _compose_hydra("+experiment=budget-matched", "method=adapter")
    assert cfg.method.budget_pct == 0.2
    for method in cfg.hydra.sweeper.params.method.split(","):
        knob = _compose_hydra(f"method={method}").method.budget_knob
        assert knob, f"{method} has no size knob: it cannot be budget-matched"


@pytest.mark.parametrize(
    ("preset", "model", "methods"),
    [
        ("delta-tuning-t5", "t5-base", {"prompt", "prefix", "lora", "adapter", "full"}),
        ("glue-roberta", "roberta-base", {"full", "bitfit", "adapter", "lora"}),
    ],
)
def test_hub_presets_compose(preset, model, methods):
    params = _compose_hydra(f"+experiment={preset}").hydra.sweeper.params
    missing = [
        f"conf/{group}/{name}.yaml"
        for group, names in (("model", [model]), ("task", params.task.split(",")))
        for name in names
        if not (CONF / group / f"{name}.yaml").exists()
    ]
    if missing:
        pytest.skip(f"the Hub configs are not in conf/ yet: {', '.join(missing)}")
    assert set(params.method.split(",")) == methods
    check_command_line(["-m", f"+experiment={preset}"], CONF)


# --------------------------------------------------------------------------- data parallel


def _gather_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    evaluated = [i for b in data_parallel.ShardedBatches(batches, split=False) for i in b]
    trained = [b for b in data_parallel.ShardedBatches(batches, split=True)]
    result = {
        "gathered": data_parallel.gather(evaluated),
        "trained": data_parallel.gather([trained]),
        "mean": data_parallel.mean(float(rank)),
    }
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def test_two_ranks_see_each_eval_example_once_and_split_every_train_batch(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "out.json"
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    result = json.loads(out.read_text())
    assert sorted(result["gathered"]) == list(range(10))  # every example once
    rank0, rank1 = result["trained"]
    assert len(rank0) == len(rank1) == 4  # both ranks step together
    assert [sorted(a + b) for a, b in zip(rank0[:3], rank1[:3], strict=True)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
    ]
    assert rank0[3] == rank1[3] == [9]  # a batch smaller than the world is shared
    assert result["mean"] == 0.5


@pytest.mark.slow
def test_two_process_data_parallel_run_writes_one_record_from_rank_0(tiny_bert_dir, tmp_path):
    results = tmp_path / "results"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "run.py", *tiny_overrides(tiny_bert_dir, results, "train.eval_batch_size=2"),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    paths = list(records_dir(results).glob("*.json"))
    assert len(paths) == 1  # rank 1 wrote nothing
    record = json.loads(paths[0].read_text())
    assert record["status"] == "success", record.get("error")
    assert record["env"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert record["env"]["torch_threads"] == max(1, slots.available_cores() // 2)
    assert 0.0 <= record["metrics"]["test"]["accuracy"] <= 1.0
    assert record["metrics"]["dev"] and record["metrics"]["selected_step"] in (2, 4)
    assert list(records_dir(results).glob(".tmp-*")) == []


# --------------------------------------------------------------------------- parallel sweeps


def _sweep(tiny_bert_dir: Path, results: Path, sweep_dir: Path, *launcher: str) -> str:
    command = [
        sys.executable, "run.py", "-m", *launcher, "method=lora,adapter", "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}", *tiny_overrides(tiny_bert_dir, results),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Each job's Hydra log (run.log in its folder) holds its lines, whatever process ran it.
    return "".join(p.read_text() for p in sorted(sweep_dir.rglob("*.log")))


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ("hydra/launcher=processes", "hydra.launcher.n_jobs=2"),
        ("hydra/launcher=local",),
    ],
    ids=["joblib-2-workers", "submitit-local"],
)
def test_parallel_sweep_writes_4_records_then_skips_all_4(tiny_bert_dir, tmp_path, launcher):
    results = tmp_path / "results"
    _sweep(tiny_bert_dir, results, tmp_path / "sweep1", *launcher)
    folder = records_dir(results)
    everything = sorted(folder.iterdir())  # a temp file would show up here
    paths = [p for p in everything if p.suffix == ".json"]
    records = [json.loads(p.read_text()) for p in paths]
    assert [r["status"] for r in records] == ["success"] * 4
    assert len({r["run_id"] for r in records}) == 4
    beside = {folder / r["predictions"]["file"] for r in records}  # each record's predictions
    assert set(everything) == set(paths) | beside and len(beside) == 4
    threads = {r["env"]["torch_threads"] for r in records}
    assert threads == {1 if "hydra/launcher=local" in launcher else slots.available_cores() // 2}

    log = _sweep(tiny_bert_dir, results, tmp_path / "sweep2", *launcher)
    assert log.count(SKIP_LINE) == 4, log[-2000:]
    assert sorted(folder.iterdir()) == everything  # nothing trained or written


def _lanes_of(calls: list) -> dict[str, list[str]]:
    """Per lane tag, the first override of each sweep it ran."""
    lanes: dict[str, list[str]] = {}
    for argv, kw in calls:
        lanes.setdefault(kw["tag"], []).append(argv[0])
    return lanes


def test_lanes_each_run_the_whole_list_in_order_with_their_own_job_folders(monkeypatch):
    calls = []
    monkeypatch.setattr(commands, "call", lambda argv, **kw: calls.append((argv, kw)) or 0)
    assert commands.call_all([["a=1"], ["b=2"]], tag="select", lanes=2) == 0
    assert _lanes_of(calls) == {"select lane 1": ["a=1", "b=2"], "select lane 2": ["a=1", "b=2"]}
    for argv, kw in calls:
        lane = kw["tag"][-1]
        assert argv[-1] == f"hydra.sweep.subdir=lane{lane}-${{hydra.job.num}}-${{method.name}}"
        assert kw["env"][slots.LANES_ENV] == "2"  # train.threads=auto halves the cores
    calls.clear()
    assert commands.call_all([["a=1"], ["b=2"]], tag="grid") == 0  # one lane: as before
    assert [(argv, kw["tag"], kw.get("env")) for argv, kw in calls] == [
        (["a=1"], "grid", None), (["b=2"], "grid", None),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ({"a=1": 1}, 1),  # a failed run (recorded): the other sweeps still run
        ({"a=1": 3}, 3),  # a drain: the lane starts no more sweeps, the command says so
        ({"a=1": 2}, 2),  # bad input
    ],
)
def test_lanes_stop_where_a_sweep_says_stop_and_report_it(monkeypatch, codes, expected):
    calls = []

    def call(argv, **kw):
        calls.append((argv, kw))
        return codes.get(argv[0], 0)

    monkeypatch.setattr(commands, "call", call)
    assert commands.call_all([["a=1"], ["b=2"]], tag="t", lanes=2) == expected
    went_on = expected == 1
    ran = ["a=1", "b=2"] if went_on else ["a=1"]
    assert _lanes_of(calls) == {"t lane 1": ran, "t lane 2": ran}


@pytest.mark.slow
def test_two_lanes_share_a_sweep_and_train_each_run_once(tiny_bert_dir, tmp_path, monkeypatch):
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    results, sweeps = tmp_path / "results", tmp_path / "sweeps"
    sweep = [
        "method=lora,adapter", "seed=0,1", f"hydra.sweep.dir={sweeps}",
        *tiny_overrides(tiny_bert_dir, results),
    ]  # fmt: skip
    assert commands.call_all([sweep], tag="test", lanes=2) == 0
    paths = sorted(records_dir(results).glob("*.json"))
    records = [json.loads(p.read_text()) for p in paths]
    assert [r["status"] for r in records] == ["success"] * 4  # no run trained twice
    assert len({r["run_id"] for r in records}) == 4
    assert {r["env"]["torch_threads"] for r in records} == {max(1, slots.available_cores() // 2)}
    # each lane went through all 4 jobs (training or skipping), in its own job folders
    folders = sorted(p.name.split("-")[0] for p in sweeps.iterdir() if p.is_dir())
    assert folders == ["lane1"] * 4 + ["lane2"] * 4


# --------------------------------------------------------------------------- tuning


def test_objective_is_the_dev_metric_signed_so_higher_is_better():
    primary = {"name": "accuracy", "split": "test", "value": 0.9, "higher_is_better": True}
    assert objective({"primary": primary, "dev": {"accuracy": 0.8}}) == 0.8
    loss = {**primary, "name": "mse", "higher_is_better": False}
    assert objective({"primary": loss, "dev": {"mse": 0.3}}) == -0.3
    assert objective({"status": "diverged", "primary": None, "dev": None}) != 0  # NaN
    assert search_space("full") == ["method.lr=tag(log, interval(2e-06, 0.0002))"]
    assert search_space("lora")[1] == "method.peft.r=int(tag(log, interval(2, 32)))"


@pytest.mark.slow
def test_tune_flow_searches_then_runs_the_best_trial_with_every_seed(tiny_bert_dir, tmp_path):
    results = tmp_path / "tuned"
    overrides = [
        o for o in tiny_overrides(tiny_bert_dir, tmp_path) if not o.startswith("results_dir=")
    ]
    assert flow(["lora"], trials=2, seeds="0,1", results=results, overrides=overrides) == 0
    records = [json.loads(p.read_text()) for p in records_dir(results).glob("*.json")]
    trials = [r for r in records if r["experiment"]["seed"] == SEARCH_SEED]
    assert len(trials) == 2 and len({t["config"]["method"]["lr"] for t in trials}) == 2
    assert all(t["metrics"]["test"] is None for t in trials)  # the search saw dev only
    best = best_params(results / "tuning" / "default--lora")  # the study's best trial
    # no trial is a final run: both final seeds train, each tested once
    finals = [r for r in records if r["experiment"]["seed"] != SEARCH_SEED]
    assert sorted(f["experiment"]["seed"] for f in finals) == [0, 1] and len(records) == 4
    for final in finals:
        assert final["status"] == "success" and final["metrics"]["test"] is not None
        assert final["config"]["method"]["lr"] == pytest.approx(best["method.lr"])
        assert final["config"]["method"]["peft"]["r"] == best["method.peft.r"]
    # the same command again, as after a stop: every run is done, so the search replays its
    # trials as skips with their dev scores, picks the same best, and nothing trains
    assert flow(["lora"], trials=2, seeds="0,1", results=results, overrides=overrides) == 0
    assert best_params(results / "tuning" / "default--lora") == best
    assert len(list(records_dir(results).glob("*.json"))) == 4


def test_tune_refuses_a_final_seed_that_is_the_search_seed(tmp_path):
    with pytest.raises(ConfigError, match="seed 100 is both a selection seed and a final seed"):
        flow(["lora"], trials=2, seeds="0,100", results=tmp_path, overrides=[], dry_run=True)
    with pytest.raises(ConfigError, match="seed 3 is both"):
        flow(["lora"], trials=2, seeds="3", results=tmp_path, overrides=["seed=3"], dry_run=True)
    assert flow(["lora"], trials=2, seeds="0,1", results=tmp_path, overrides=[], dry_run=True) == 0


def test_sweep_size_counts_a_plain_value_that_overrides_a_preset_sweep():
    # `+experiment=offline-suite seed=0`: the preset sweeps 3 seeds, the command line fixes one.
    assert sweep_size(["seed=0,1,2", "method=lora,adapter", "seed=0"]) == 2
    assert sweep_size(["seed=0,1,2", "method=lora,adapter"]) == 6
