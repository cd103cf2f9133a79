"""The offline benchmark's tooling: method.lr_scale, wnut16's recipe, the grid preset and
``peftbench benchmark select`` (dev-only choice of each cell's scale, then the final seeds)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftbench.cli import main
from peftbench.config.checks import validate
from peftbench.config.precheck import check_command_line
from peftbench.errors import ConfigError
from peftbench.launch import protocol
from peftbench.records.store import records_dir
from tests.conftest import ROOT, tiny_overrides

# ----------------------------------------------------------------------------- lr_scale


def _first_lr(record: dict) -> float:
    return next(row["train/lr"] for row in record["history"] if "train/lr" in row)


def test_lr_scale_multiplies_the_optimizer_lr_is_recorded_and_is_a_new_run(compose, tmp_path):
    from peftbench.runner.experiment import effective_lr, run

    paths = {}
    for scale in ("1", "3"):
        cfg = compose("method=lora", "method.lr=1e-3", f"method.lr_scale={scale}")
        assert effective_lr(cfg.method) == pytest.approx(1e-3 * float(scale))
        paths[scale] = run(cfg)
    one, three = (json.loads(Path(paths[s]["path"]).read_text()) for s in ("1", "3"))
    assert paths["1"]["run_id"] != paths["3"]["run_id"]  # another lr, another recipe
    assert three["experiment"]["recipe"]["method.lr_scale"] == 3
    assert one["experiment"]["lr"] == pytest.approx(1e-3)
    assert three["experiment"]["lr"] == pytest.approx(3e-3)
    assert _first_lr(three) == pytest.approx(3 * _first_lr(one))  # what AdamW really used


def test_lr_scale_defaults_to_1_for_every_method_and_must_be_positive(compose):
    for method in ("full", "lora", "prefix", "adapter"):
        assert compose(f"method={method}").method.lr_scale == 1.0
    with pytest.raises(ConfigError, match=r"method.lr_scale must be a number > 0"):
        validate(compose("method.lr_scale=0"))


# ----------------------------------------------------------------------------- wnut16, preset


def test_wnut16_trains_10_epochs_by_default_and_the_command_line_still_wins(compose):
    assert compose("task=wnut16").train.epochs == 10
    assert compose("task=polarity").train.epochs == 4  # v2: 1,600 x 4 = v1's 400 steps
    assert compose("task=hedge").train.epochs == 4  # v2: 600 steps, v1's budget doubled
    assert compose("task=bbc-news").train.epochs == 2  # every other task: the shared 2
    assert compose("task=wnut16", "train.epochs=3").train.epochs == 3


def test_the_benchmark_preset_composes_with_21_methods_5_tasks_and_one_grid(compose):
    preset = OmegaConf.load(ROOT / "conf" / "experiment" / "offline-benchmark.yaml")
    params = preset.hydra.sweeper.params
    methods, tasks = params.method.split(","), params.task.split(",")
    assert len(set(methods)) == 21 and "qlora" not in methods  # qlora needs CUDA
    kinds = {compose(f"task={t}").task.kind for t in tasks}
    names = {compose(f"task={t}").task.name for t in tasks}
    assert names == {"polarity", "hedge", "wnut16", "verse-paraphrase", "bbc-news"}
    assert kinds == {"classification", "token_classification"}
    # sentiment, hedge cues, NER, sentence pairs, long-document topics (version 2, issue 38)
    assert len(tasks) == 5
    assert protocol.preset_scales() == [0.3, 1.0, 3.0, 10.0]
    assert str(params.seed) == str(protocol.SELECTION_SEED) == "100"  # no final seed
    assert preset.train.evaluate_test is False  # the grid sees dev only
    # every job of one task at one scale composes and validates (the 21 methods)
    argv = ["-m", "+experiment=offline-benchmark", "task=wnut16", "method.lr_scale=3"]
    check_command_line([*argv, "results_dir=/tmp/bench/grid"], conf_dir=ROOT / "conf")
    with pytest.raises(ConfigError, match="unknown method"):  # the check does look at them
        check_command_line([*argv, "method=lora,lorra"], conf_dir=ROOT / "conf")


# ----------------------------------------------------------------------------- selection


def _record(grid: Path, method: str, scale: float, dev: float | None, test: float, **extra):
    """A minimal grid record: dev and test at the selected step, or a failure (dev None)."""
    status = extra.pop("status", "success" if dev is not None else "diverged")
    task = extra.pop("task", "polarity")
    seed = extra.pop("seed", protocol.SELECTION_SEED)
    run_id = f"{task}--tiny--{method}--s{seed}--h{int(scale * 10):03d}"
    recipe = {"method.name": method, "method.lr": 1e-3, "method.lr_scale": scale}
    record = {
        "schema_version": 2,
        "run_id": run_id,
        "status": status,
        "error": None if status == "success" else "FloatingPointError: loss is nan",
        "created_at": "2026-12-02T10:00:00+00:00",
        "experiment": {
            "task": task,
            "model": "tiny",
            "method": method,
            "seed": seed,
            "weights": "pretrained",
            "lr": 1e-3 * scale,
            "recipe_hash": f"h{int(scale * 10):03d}",
            "recipe": recipe,
            "overrides": [f"method={method}", f"method.lr_scale={scale:g}", f"seed={seed}"],
        },
        "metrics": {
            "primary": {
                "name": "accuracy",
                "split": "test",
                "value": test,
                "higher_is_better": True,
            },
            "dev": {"accuracy": dev},
            "test": {"accuracy": test},
            "selected_step": 4,
        }
        if status == "success"
        else {},
        **extra,
    }
    folder = records_dir(grid)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}__20261202T100000000000Z__{status}.json"
    assert not path.exists()
    path.write_text(json.dumps(record))
    return path


def test_select_picks_the_best_dev_scale_never_test_and_reports_failed_cells(tmp_path):
    grid = tmp_path / "grid"
    # lora: test would pick x3; dev says x0.3
    _record(grid, "lora", 0.3, dev=0.80, test=0.60)
    _record(grid, "lora", 1.0, dev=0.70, test=0.70)
    _record(grid, "lora", 3.0, dev=0.75, test=0.99)
    # prefix: x0.3 and x3 tie on dev with x1 lower; nearest 1 on a log scale is x3
    _record(grid, "prefix", 0.3, dev=0.6, test=0.5)
    _record(grid, "prefix", 1.0, dev=0.5, test=0.9)
    _record(grid, "prefix", 3.0, dev=0.6, test=0.5)
    # adapter: diverged everywhere
    for scale in (0.3, 1.0, 3.0):
        _record(grid, "adapter", scale, dev=None, test=0.0)
    # ia3: x3 never ran
    _record(grid, "ia3", 0.3, dev=0.9, test=0.9)
    _record(grid, "ia3", 1.0, dev=0.9, test=0.9)

    cells = {c.method: c for c in protocol.select_cells(grid, [0.3, 1, 3])}
    assert cells["lora"].chosen.lr_scale == 0.3
    assert cells["prefix"].chosen.lr_scale == 3.0
    assert cells["adapter"].status == "failed" and cells["adapter"].chosen is None
    assert [p.status for p in cells["adapter"].grid] == ["diverged"] * 3
    assert cells["ia3"].status == "incomplete" and cells["ia3"].missing_scales == [3.0]


def test_a_choice_at_the_grids_edge_is_flagged_not_extended(tmp_path):
    grid = tmp_path / "grid"
    for scale, dev in ((0.3, 0.5), (1.0, 0.6), (3.0, 0.7)):  # still rising at x3
        _record(grid, "lora", scale, dev=dev, test=0.5)
    for scale, dev in ((0.3, 0.5), (1.0, 0.8), (3.0, 0.7)):  # bracketed
        _record(grid, "prefix", scale, dev=dev, test=0.5)
    cells = {c.method: c for c in protocol.select_cells(grid, [0.3, 1, 3])}
    assert protocol.at_grid_edge(cells["lora"])
    assert not protocol.at_grid_edge(cells["prefix"])
    markdown = protocol.to_markdown(list(cells.values()), [])
    assert "| x3 (edge) |" in markdown and "| x1 |" in markdown
    assert "1 of 2 chosen scales" in markdown and "- polarity--tiny--lora: x3" in markdown
    selection = protocol.to_json(list(cells.values()), {}, [])
    assert [c["at_grid_edge"] for c in selection["cells"]] == [
        cells[c["method"]] is cells["lora"] for c in selection["cells"]
    ]


def test_selection_counts_the_chosen_runs_still_improving_at_their_last_evaluation(tmp_path):
    """A run whose best dev step is its last evaluation was still improving when it stopped;
    when most chosen runs of a task are, the protocol doubles the task's step budget."""
    grid = tmp_path / "grid"

    def history(best_last: bool) -> list[dict]:
        return [{"step": 2, "dev/accuracy": 0.5}, {"step": 3, "train/loss": 0.1},
                {"step": 4 if best_last else 6, "dev/accuracy": 0.6}]  # fmt: skip

    for method, last in (("lora", True), ("prefix", True), ("adapter", False)):
        for scale, dev in ((0.3, 0.5), (1.0, 0.8), (3.0, 0.7)):
            _record(grid, method, scale, dev=dev, test=0.5, history=history(last))
    cells = protocol.select_cells(grid, [0.3, 1, 3])
    chosen = {c.method: c.chosen.selected_last for c in cells}
    assert chosen == {"lora": True, "prefix": True, "adapter": False}  # selected_step is 4
    assert protocol.still_improving(cells) == (2, 3)
    markdown = protocol.to_markdown(cells, [])
    assert "2 of 3 chosen runs selected their last dev evaluation" in markdown
    assert "doubles this task's step budget" in markdown
    adapter = [c for c in cells if c.method == "adapter"]
    assert protocol.still_improving(adapter) == (0, 1)
    assert "doubles" not in protocol.to_markdown(adapter, [])


def test_a_task_whose_budget_doubles_gets_no_extension_and_no_finals(tmp_path, monkeypatch, capsys):
    """Most chosen runs still improving: the protocol discards the task's step budget, so
    extend and the final seeds refuse it (one line, exit 2, nothing trained or recorded),
    while the dry-run selection still writes the evidence and other tasks go on."""
    monkeypatch.setattr(protocol, "check_recipes", lambda finals: None)  # made-up recipes
    results = tmp_path / "bench"
    grid = results / "grid"
    last = [{"step": 2, "dev/accuracy": 0.5}, {"step": 4, "dev/accuracy": 0.6}]
    for method in ("lora", "prefix"):  # both best at their last evaluation; lora at x10
        for scale, dev in ((0.3, 0.5), (1.0, 0.6), (3.0, 0.7), (10.0, 0.8)):
            dev = dev if method == "lora" else 0.9 - dev / 2
            _record(grid, method, scale, dev=dev, test=0.5, history=last, task="hedge")
    for scale, dev in ((0.3, 0.5), (1.0, 0.6), (3.0, 0.7), (10.0, 0.8)):  # another task
        _record(grid, "lora", scale, dev=dev, test=0.5)
    ran = []
    monkeypatch.setattr(protocol.commands, "call", lambda argv, **kw: ran.append(argv) or 0)

    assert main(["benchmark", "extend", "--results", str(results)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "doubles the step budget of hedge (hedge: 2 of 2" in error
    assert "extension points" in error and "new version of conf/task/<task>.yaml" in error
    assert not ran and not (results / "extensions.json").exists()

    assert main(["benchmark", "select", "--results", str(results), "--dry-run"]) == 0
    assert "doubles this task's step budget" in (results / "selection.md").read_text()
    assert json.loads((results / "selection.json").read_text())["step_budgets"] == {
        "hedge": {"still_improving": 2, "chosen": 2, "doubles": True},
        "polarity": {"still_improving": 0, "chosen": 0, "doubles": False},
    }  # the verdict per task, for scripts that quote it (a run without history: not counted)
    ran.clear()
    assert main(["benchmark", "select", "--results", str(results), "--tasks", "hedge"]) == 2
    assert "final seeds would train at a discarded budget" in capsys.readouterr().err
    assert not ran and not (results / "final").exists()

    assert main(["benchmark", "extend", "--results", str(results), "--tasks", "polarity"]) == 0
    assert json.loads((results / "extensions.json").read_text()) == {
        "polarity--tiny--lora": [30.0]
    }  # only the task whose budget holds


def test_runs_off_the_grid_are_kept_as_data_but_are_not_points_of_the_search(tmp_path, capsys):
    grid = tmp_path / "grid"
    for scale, dev in ((0.3, 0.2), (1.0, 0.4), (3.0, 0.5), (30.0, 0.9)):  # x30: off the grid
        _record(grid, "lora", scale, dev=dev, test=0.4, task="wnut16")
    _record(grid, "adalora", 30.0, dev=0.1, test=0.1, task="wnut16")  # only off-grid runs
    adalora, lora = protocol.select_cells(grid)
    assert lora.scales == [0.3, 1.0, 3.0, 10.0] and lora.missing_scales == [10.0]
    assert [p.lr_scale for p in lora.grid] == [0.3, 1.0, 3.0]  # x30 is not part of the search
    assert [p.lr_scale for p in lora.off_grid] == [30.0]
    assert adalora.status == "incomplete" and adalora.missing_scales == [0.3, 1.0, 3.0, 10.0]
    _record(grid, "lora", 10.0, dev=0.45, test=0.4, task="wnut16")
    adalora, lora = protocol.select_cells(grid)
    assert lora.chosen.lr_scale == 3.0 and not protocol.at_grid_edge(lora)  # not x30's 0.9
    markdown = protocol.to_markdown([adalora, lora], [])
    assert "## wnut16 (dev accuracy; lr x 0.3, 1, 3, 10)" in markdown
    assert "- `wnut16--tiny--adalora--s100--h300` (x30, dev 0.1000)" in markdown  # listed, kept
    # every task's grid stage runs the preset's scales, and names a task it does not know
    for task in ("wnut16", "polarity", "hedge"):
        assert "method.lr_scale=0.3,1,3,10" in protocol.grid_command(task, tmp_path)
    assert main(["benchmark", "grid", "--results", str(tmp_path), "--tasks", "nerr"]) == 2
    assert "nerr is not a task of the benchmark; choose from wnut16, polarity, hedge" in (
        capsys.readouterr().err
    )


def test_a_tie_at_equal_distance_goes_to_the_smaller_scale_and_lower_is_better_works():
    point = protocol.GridPoint
    points = [point(s, f"r{s}", "success", s, 1.0, None, "h", "p") for s in (0.5, 1.0, 2.0)]
    points[1].dev = 0.9
    assert protocol.choose(points, higher_is_better=True).lr_scale == 0.5  # 0.5 vs 2: tie
    assert protocol.choose(points, higher_is_better=False).lr_scale == 1.0  # lowest dev


def test_select_refuses_a_grid_that_varies_more_than_the_scale(tmp_path):
    grid = tmp_path / "grid"
    _record(grid, "lora", 1.0, dev=0.8, test=0.6)
    other = _record(grid, "lora", 3.0, dev=0.8, test=0.6)
    record = json.loads(other.read_text())
    record["experiment"]["recipe"]["train.epochs"] = 5
    other.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"differ in more than method.lr_scale \(train.epochs\)"):
        protocol.select_cells(grid, [1, 3])


def test_select_dry_run_writes_the_selection_and_copies_nothing(tmp_path, capsys, monkeypatch):
    checked = []  # fixture records have made-up recipes: the end-to-end test checks for real
    monkeypatch.setattr(protocol, "check_recipes", checked.extend)
    results = tmp_path / "bench"
    for scale, dev in ((0.3, 0.5), (1.0, 0.9), (3.0, 0.7), (10.0, 0.6)):  # the preset's grid
        _record(results / "grid", "lora", scale, dev=dev, test=0.1)
    for scale in (0.3, 1.0, 3.0, 10.0):
        _record(results / "grid", "adapter", scale, dev=None, test=0.0)
    code = main(["benchmark", "select", "--results", str(results), "--dry-run", "--seeds", "0,1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert [c.cells[0].method for c in checked] == ["lora"]  # each final command is checked
    assert "adapter: FAILED" in printed
    selection = json.loads((results / "selection.json").read_text())
    lora = next(c for c in selection["cells"] if c["method"] == "lora")
    assert lora["chosen"]["lr_scale"] == 1.0
    assert [p["dev"] for p in lora["grid"]] == [0.5, 0.9, 0.7, 0.6]
    [line] = selection["commands"]
    assert "method=lora" in line and "seed=0,1" in line and "method.lr_scale=1" in line
    assert "train.evaluate_test=true" in line  # the finals evaluate test once
    assert "seed=100" not in line and "adapter" not in line
    markdown = (results / "selection.md").read_text()
    assert "| lora | tiny | 0.5000 | **0.9000** | 0.7000 | 0.6000 | x1 |" in markdown
    assert "Failed at every scale" in markdown and "adapter--s100" in markdown
    assert not (results / "final").exists()  # a dry run copies and trains nothing


def _script_calls(tmp_path: Path, *stages: str, **env: str) -> list[str]:
    """What scripts/offline_benchmark.sh asks Python to run, with a PYTHON that only logs."""
    tmp_path.mkdir(exist_ok=True)
    calls, fake = tmp_path / "calls", tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(calls), **env}
    script = ROOT / "scripts" / "offline_benchmark.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "bench"), *stages], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines()


def test_the_cost_stage_measures_the_benchmarked_methods_not_every_registered_one(tmp_path):
    """26 methods are registered; the costs stage times the preset's 21 (or METHODS)."""
    preset = OmegaConf.load(ROOT / "conf" / "experiment" / "offline-benchmark.yaml")
    benchmarked = preset.hydra.sweeper.params.method
    [call] = _script_calls(tmp_path, "costs:hedge")
    assert f"--methods {benchmarked} " in call and "task=hedge" in call
    assert "--fresh-process" in call and "train.threads=1" in call
    [call] = _script_calls(tmp_path / "subset", "costs:hedge", METHODS="full,lora")
    assert "--methods full,lora " in call


def test_the_training_stages_run_in_lanes_one_per_core(tmp_path):
    """Lanes, not a joblib sweep per lr scale: no core idles at each sweep's tail."""
    for call in _script_calls(tmp_path, "grid:hedge", "extend", "final:hedge"):
        assert " --lanes 2 train.threads=auto" in call and "n_jobs" not in call, call
        assert "hydra.callbacks.report.write_report=false" in call  # the report stage writes it
    [call] = _script_calls(tmp_path / "gpus", "final:hedge", N_JOBS="4")
    assert " --lanes 4 " in call


# ----------------------------------------------------------------------------- end to end


def _run_py(*argv: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _log_scale(record: dict) -> float:
    return math.log(record["experiment"]["recipe"]["method.lr_scale"])


def _success(folder: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(records_dir(folder).glob("*.json"))]
    return [r for r in records if r["status"] == "success"]


@pytest.mark.slow  # a subprocess path; CI runs it with `pytest -m slow`
def test_grid_then_select_trains_every_final_seed_of_the_dev_best_scale(
    tiny_bert_dir, tmp_path, capsys
):
    results = tmp_path / "bench"
    grid = tiny_overrides(tiny_bert_dir, results / "grid", "method=lora")
    scales = protocol.preset_scales()  # select chooses only once every grid point has a record
    sweep = "method.lr_scale=" + ",".join(f"{s:g}" for s in scales)
    _run_py("run.py", "-m", sweep, "seed=100", "train.evaluate_test=false", *grid)
    runs = _success(results / "grid")
    assert all(r["metrics"]["test"] is None for r in runs)  # the grid saw no test
    assert sorted(r["experiment"]["recipe"]["method.lr_scale"] for r in runs) == scales
    best = max(runs, key=lambda r: (r["metrics"]["dev"]["accuracy"], -abs(_log_scale(r))))

    command = ["-m", "peftbench.cli", "benchmark", "select", "--results", str(results)]
    dry = _run_py(*command, "--dry-run")
    scale = f"method.lr_scale={best['experiment']['recipe']['method.lr_scale']:g}"
    [line] = [ln for ln in dry.splitlines() if ln.startswith("[select] peftbench run -m")]
    assert scale in line and "seed=0,1,2" in line and f"results_dir={results / 'final'}" in line

    # a final recipe that is not the grid's (here another step count) is refused, by key
    assert main([*command[2:], "train.max_steps=3"]) == 2
    assert "differs in: train.max_steps" in capsys.readouterr().err
    assert not (results / "final").exists()

    _run_py(*command)  # trains seeds 0, 1 and 2, each tested once
    final = _success(results / "final")
    assert sorted(r["experiment"]["seed"] for r in final) == [0, 1, 2]
    trained = {k: v for k, v in best["experiment"]["recipe"].items() if k != "train.evaluate_test"}
    assert all(r["experiment"]["recipe"] == trained for r in final)  # the grid's, unsealed
    assert all(r["metrics"]["test"] is not None for r in final)

    again = _run_py(*command)  # resumable: nothing left to train
    assert again.count("already done, skipping") == 3
    assert len(_success(results / "final")) == 3


# ------------------------------------------------------------- sealed test, seeds, grid edges


def test_the_grid_is_sealed_on_the_selection_seed_and_takes_a_subset_of_methods(tmp_path, capsys):
    argv = protocol.grid_command("polarity", tmp_path, methods=["lora", "ia3"])
    assert "train.evaluate_test=false" in argv and "seed=100" in argv
    assert "method=lora,ia3" in argv
    assert "seed=100,101" in protocol.grid_command("polarity", tmp_path, seeds=[100, 101])
    code = main(["benchmark", "grid", "--results", str(tmp_path), "--tasks", "polarity",
                 "--methods", "lora", "--dry-run", "train.max_steps=5"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "method=lora " in printed and "train.evaluate_test=false" in printed
    assert main(["benchmark", "grid", "--results", str(tmp_path), "--methods", "lorra"]) == 2
    assert "lorra is not a method of the benchmark" in capsys.readouterr().err


def test_a_final_seed_that_is_a_selection_seed_is_refused(tmp_path, capsys):
    _record(tmp_path / "grid", "lora", 1.0, dev=0.8, test=0.6)
    assert main(["benchmark", "select", "--results", str(tmp_path), "--seeds", "0,100"]) == 2
    assert "seed 100 is both a selection seed and a final seed" in capsys.readouterr().err


def test_selection_on_two_seeds_ranks_the_mean_dev_and_waits_for_every_seed(tmp_path):
    grid = tmp_path / "grid"
    # seed 100 alone would choose x0.3; the mean over 100 and 101 chooses x1
    for seed, devs in ((100, (0.9, 0.8, 0.5)), (101, (0.5, 0.8, 0.5))):
        for scale, dev in zip((0.3, 1.0, 3.0), devs, strict=True):
            _record(grid, "lora", scale, dev=dev, test=0.5, seed=seed)
    [one] = protocol.select_cells(grid, [0.3, 1, 3], seeds=[100])
    [both] = protocol.select_cells(grid, [0.3, 1, 3], seeds=[100, 101])
    assert one.chosen.lr_scale == 0.3 and both.chosen.lr_scale == 1.0
    assert both.chosen.dev == pytest.approx(0.8) and both.chosen.seed_devs == {100: 0.8, 101: 0.8}
    assert both.grid[0].dev == pytest.approx(0.7)
    [waiting] = protocol.select_cells(grid, [0.3, 1, 3], seeds=[100, 101, 102])
    assert waiting.status == "incomplete" and waiting.missing_scales == [0.3, 1.0, 3.0]


def test_next_scale_steps_along_the_grids_log_series():
    assert protocol.next_scale(10, up=True) == 30 and protocol.next_scale(30, up=True) == 100
    assert protocol.next_scale(0.3, up=False) == 0.1 and protocol.next_scale(1, up=False) == 0.3


def test_extend_adds_one_scale_beyond_the_edge_and_selection_says_which_choice_moved(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(protocol, "check_recipes", lambda finals: None)  # made-up recipes
    results = tmp_path / "bench"
    grid = results / "grid"
    for scale, dev in ((0.3, 0.5), (1.0, 0.6), (3.0, 0.7), (10.0, 0.8)):  # still rising at x10
        _record(grid, "lora", scale, dev=dev, test=0.5)
    for scale, dev in ((0.3, 0.9), (1.0, 0.8), (3.0, 0.7), (10.0, 0.6)):  # best at x0.3
        _record(grid, "prefix", scale, dev=dev, test=0.5)
    for scale, dev in ((0.3, 0.5), (1.0, 0.9), (3.0, 0.7), (10.0, 0.6)):  # bracketed
        _record(grid, "ia3", scale, dev=dev, test=0.5)
    assert main(["benchmark", "select", "--results", str(results), "--dry-run"]) == 0
    ran = []

    def train(overrides, *, tag, dry_run=False, env=None):  # the grid runs of the new points
        ran.append(list(overrides))
        scale = float(next(o for o in overrides if o.startswith("method.lr_scale=")).split("=")[1])
        method = next(o for o in overrides if o.startswith("method=")).split("=")[1]
        if tag == "extend":
            _record(grid, method, scale, dev={"lora": 0.85, "prefix": 0.5}[method], test=0.5)
        return 0

    monkeypatch.setattr(protocol.commands, "call", train)
    assert main(["benchmark", "extend", "--results", str(results)]) == 0
    extended = [r for r in ran if "train.evaluate_test=false" in r]
    assert sorted(o for r in extended for o in r if o.startswith("method.lr_scale=")) == [
        "method.lr_scale=0.1", "method.lr_scale=30",
    ]  # fmt: skip
    assert all("seed=100" in r for r in extended) and not any("method=ia3" in r for r in extended)
    assert json.loads((results / "extensions.json").read_text()) == {
        "polarity--tiny--lora": [30.0], "polarity--tiny--prefix": [0.1],
    }  # fmt: skip
    cells = {c.method: c for c in protocol.select_cells(grid)}
    assert cells["lora"].chosen.lr_scale == 30 and cells["prefix"].chosen.lr_scale == 0.3
    assert cells["ia3"].scales == [0.3, 1.0, 3.0, 10.0]  # bracketed: its grid is unchanged
    markdown = (results / "selection.md").read_text()
    assert "## Choices moved since the previous selection" in markdown
    assert "- polarity--tiny--lora: x10 -> x30" in markdown and "prefix: x0.3" not in markdown
    assert "| n/a |" in markdown  # ia3 has no x30 or x0.1 point

    # Once per cell: lora's choice moved to x30, a new edge, and a later extend (the next
    # task's) leaves it there rather than adding x100.
    ran.clear()
    assert main(["benchmark", "extend", "--results", str(results)]) == 0
    assert not ran and "nothing to add" in capsys.readouterr().out
    assert json.loads((results / "extensions.json").read_text())["polarity--tiny--lora"] == [30.0]


def test_extend_without_finals_trains_the_new_points_and_leaves_the_finals_to_select(
    tmp_path, monkeypatch
):
    """scripts/offline_benchmark.sh extends every task before any final seed trains."""
    monkeypatch.setattr(protocol, "check_recipes", lambda finals: None)  # made-up recipes
    results = tmp_path / "bench"
    grid = results / "grid"
    for scale, dev in ((0.3, 0.5), (1.0, 0.6), (3.0, 0.7), (10.0, 0.8)):  # still rising at x10
        _record(grid, "lora", scale, dev=dev, test=0.5)
    calls = []

    def train(overrides, *, tag, dry_run=False, env=None):
        calls.append((tag, dry_run))
        if tag == "extend" and not dry_run:
            _record(grid, "lora", 30.0, dev=0.85, test=0.5)
        return 0

    monkeypatch.setattr(protocol.commands, "call", train)
    assert main(["benchmark", "extend", "--results", str(results), "--no-finals"]) == 0
    assert ("extend", False) in calls  # the new point trained
    finals = [dry for tag, dry in calls if tag == "select"]
    assert finals and all(finals)  # every final command only printed
    assert not (results / "final").exists() or not any((results / "final").rglob("*.json"))
    assert "| x30 |" in (results / "selection.md").read_text()  # selected on the wider grid


def test_an_extend_stopped_before_its_points_finished_trains_them_when_run_again(
    tmp_path, monkeypatch, capsys
):
    """A chunk that ends (or `benchmark stop`) mid-extension leaves extensions.json naming
    points with no record; the same command must train them, not find nothing to add."""
    monkeypatch.setattr(protocol, "check_recipes", lambda finals: None)  # made-up recipes
    results = tmp_path / "bench"
    grid = results / "grid"
    for scale, dev in ((0.3, 0.5), (1.0, 0.6), (3.0, 0.7), (10.0, 0.8)):  # still rising at x10
        _record(grid, "lora", scale, dev=dev, test=0.5)
    for scale, dev in ((0.3, 0.5), (1.0, 0.9), (3.0, 0.7), (10.0, 0.6)):  # bracketed
        _record(grid, "ia3", scale, dev=dev, test=0.5)
    (results / "extensions.json").write_text(json.dumps({"polarity--tiny--lora": [30.0]}))
    ran = []

    def train(overrides, *, tag, dry_run=False, env=None):
        if tag == "extend":
            ran.append(list(overrides))
            _record(grid, "lora", 30.0, dev=0.85, test=0.5)
        return 0

    monkeypatch.setattr(protocol.commands, "call", train)
    assert main(["benchmark", "extend", "--results", str(results), "--no-finals"]) == 0
    out = capsys.readouterr().out
    assert "x30 was added but has not finished: trains it" in out and "nothing to add" not in out
    [sweep] = ran
    assert "method=lora" in sweep and "method.lr_scale=30" in sweep and "seed=100" in sweep
    assert json.loads((results / "extensions.json").read_text()) == {"polarity--tiny--lora": [30.0]}
    assert {c.method: c.chosen.lr_scale for c in protocol.select_cells(grid)} == {
        "lora": 30.0, "ia3": 1.0,
    }  # fmt: skip
    ran.clear()  # finished now: a third extend has nothing to do
    assert main(["benchmark", "extend", "--results", str(results), "--no-finals"]) == 0
    assert not ran and "nothing to add" in capsys.readouterr().out


def test_a_tasks_extra_override_reaches_its_finals_only(tmp_path, monkeypatch):
    """`final:bbc-news` with EXTRA=model.attn_implementation=eager: hedge's grid ran without
    it, so its listed final command must not gain it (its recipe would change)."""
    checked = []
    monkeypatch.setattr(protocol, "check_recipes", lambda finals: checked.extend(finals))
    monkeypatch.setattr(protocol.commands, "call", lambda overrides, **kw: 0)
    results = tmp_path / "bench"
    for task in ("polarity", "hedge"):
        for scale, dev in ((0.3, 0.5), (1.0, 0.9), (3.0, 0.7), (10.0, 0.6)):
            _record(results / "grid", "lora", scale, dev=dev, test=0.5, task=task)
    argv = ["benchmark", "select", "--results", str(results), "--dry-run"]
    assert main([*argv, "--tasks", "polarity", "model.attn_implementation=eager"]) == 0
    extra = {c.task: "model.attn_implementation=eager" in c.overrides for c in checked}
    assert extra == {"polarity": True, "hedge": False}
    lines = json.loads((results / "selection.json").read_text())["commands"]
    assert sum("attn_implementation" in line for line in lines) == 1


def test_a_second_grid_of_other_scales_runs_selects_and_extends_on_its_own_scales(
    tmp_path, monkeypatch, capsys
):
    """The SmolLM2 subset's 3-point grid (x0.3, 1, 3) in its own folder: every stage takes
    --scales, an edge choice there is x3 and extends to x10, and nothing asks for x10
    before that."""
    monkeypatch.setattr(protocol, "check_recipes", lambda finals: None)  # made-up recipes
    results = tmp_path / "smollm2"
    code = main(["benchmark", "grid", "--results", str(results), "--tasks", "polarity",
                 "--scales", "0.3,1,3", "--dry-run", "model=smollm2-135m"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "method.lr_scale=0.3,1,3 " in printed and "model=smollm2-135m" in printed
    grid = results / "grid"
    for scale, dev in ((0.3, 0.6), (1.0, 0.7), (3.0, 0.8)):  # best at the top of this grid
        _record(grid, "lora", scale, dev=dev, test=0.5)
    assert main(["benchmark", "select", "--results", str(results), "--dry-run",
                 "--scales", "0.3,1,3"]) == 0  # fmt: skip
    selection = json.loads((results / "selection.json").read_text())
    (cell,) = selection["cells"]
    assert cell["status"] == "selected" and cell["missing_scales"] == []  # no x10 asked for
    assert cell["chosen"]["lr_scale"] == 3.0 and cell["at_grid_edge"]
    trained = []

    def train(overrides, *, tag, dry_run=False, env=None):
        trained.append((tag, dry_run, list(overrides)))
        if tag == "extend":
            _record(grid, "lora", 10.0, dev=0.75, test=0.5)
        return 0

    monkeypatch.setattr(protocol.commands, "call", train)
    assert main(["benchmark", "extend", "--results", str(results), "--scales", "0.3,1,3",
                 "--no-finals"]) == 0  # fmt: skip
    (extension,) = [o for tag, _, o in trained if tag == "extend"]
    assert "method.lr_scale=10" in extension
    (cell,) = json.loads((results / "selection.json").read_text())["cells"]
    assert cell["scales"] == [0.3, 1.0, 3.0, 10.0] and cell["chosen"]["lr_scale"] == 3.0
    assert main(["benchmark", "select", "--results", str(results), "--scales", "0,1"]) == 2
    assert "--scales must be positive" in capsys.readouterr().err
