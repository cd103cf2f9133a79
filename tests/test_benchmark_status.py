"""``peftbench benchmark status``: a benchmark folder's runs done and left, and its pace."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.launch.progress import task_progress
from tests.test_benchmark import _record

SCALES = [0.3, 1.0, 3.0]
METHODS = ["lora", "bitfit"]
LAST = [{"step": 2, "dev/accuracy": 0.5}, {"step": 4, "dev/accuracy": 0.6}]  # best at the end


def _progress(results, **kw):
    return task_progress(results, "polarity", methods=METHODS, seeds=[0, 1, 2], scales=SCALES, **kw)


def _half_done(results):
    """lora: its grid (best at x3, the edge) and 2 of 3 finals, 100 s a run; bitfit: 2 of 3
    grid points, 200 s a run; a lora final stopped part-way (resumable: not done)."""
    for scale, dev in zip(SCALES, (0.5, 0.6, 0.7), strict=True):
        _record(results / "grid", "lora", scale, dev=dev, test=0.5, cost={"wall_s": 100.0})
    for scale in SCALES[:2]:
        _record(results / "grid", "bitfit", scale, dev=0.6, test=0.5, cost={"wall_s": 200.0})
    for seed in (0, 1):
        _record(
            results / "final", "lora", 3.0, dev=0.7, test=0.6, seed=seed, cost={"wall_s": 100.0}
        )
    _record(results / "final", "lora", 3.0, dev=None, test=0, seed=2, status="interrupted")


def test_status_counts_each_stage_and_prices_what_is_left_at_the_records_pace(tmp_path):
    _half_done(tmp_path)
    p = _progress(tmp_path)
    assert (p.grid_done, p.grid_total, p.grid_complete) == (5, 6, False)
    assert p.to_extend == 1  # lora chose x3, its grid's edge: extend adds x10
    assert (p.finals_done, p.finals_total) == (2, 6)
    assert p.spent_s == pytest.approx((3 * 100 + 2 * 200 + 2 * 100) / 2)
    # bitfit: 1 grid point + 3 finals at 200 s; lora: 1 extension point + 1 final at 100 s
    assert p.left_s == pytest.approx((4 * 200 + 2 * 100) / 2)
    assert _progress(tmp_path, runs_at_once=1).left_s == pytest.approx(4 * 200 + 2 * 100)
    assert not p.doubles and p.why_no_estimate is None


def test_a_method_without_a_run_is_priced_at_the_tasks_mean_and_an_empty_task_not_at_all(
    tmp_path,
):
    for scale in SCALES:
        _record(tmp_path / "grid", "lora", scale, dev=0.6, test=0.5, cost={"wall_s": 300.0})
    p = _progress(tmp_path)
    assert (p.grid_done, p.grid_total, p.finals_done) == (3, 6, 0)
    assert p.left_s == pytest.approx(((3 + 3) * 300 + 3 * 300) / 2)  # bitfit at lora's pace
    empty = task_progress(tmp_path, "hedge", methods=METHODS, seeds=[0], scales=SCALES)
    assert (empty.grid_done, empty.grid_total, empty.spent_s) == (0, 6, 0)
    assert empty.left_s is None and empty.why_no_estimate == "no run yet to measure a pace"


def test_a_task_whose_budget_doubles_gives_no_estimate_and_says_why(tmp_path):
    for method in METHODS:
        for scale, dev in zip(SCALES, (0.5, 0.7, 0.6), strict=True):
            _record(tmp_path / "grid", method, scale, dev=dev, test=0.5, history=LAST,
                    cost={"wall_s": 50.0})  # fmt: skip
    p = _progress(tmp_path)
    assert p.grid_complete and p.improving == (2, 2) and p.doubles
    assert p.left_s is None and "the grid trains again" in p.why_no_estimate


def test_the_status_command_prints_the_table_and_refuses_an_unknown_task(tmp_path, capsys):
    _half_done(tmp_path)
    argv = ["benchmark", "status", "--results", str(tmp_path), "--methods", "lora,bitfit",
            "--seeds", "0,1,2", "--scales", "0.3,1,3", "--tasks", "polarity,hedge"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| polarity | 5/6 | >= 1 | 2/6 | to do | 0.1 | 0.1 |" in out
    assert "| hedge | 0/6 | ? | 0/6 | to do | 0.0 | ? |" in out
    assert "| all | | | | | 0.1 | 0.1 + ? (hedge) |" in out
    assert "- hedge: 0 of 0 chosen runs" in out and "no run yet to measure a pace" in out

    assert main([*argv[:-1], "polarity,sst2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sst2 is not a task of the benchmark" in err
    assert main([*argv, "--jobs", "0"]) == 2
    assert "--jobs must be 1 or more" in capsys.readouterr().err


def test_the_status_command_reads_each_stage_once_for_all_its_tasks(tmp_path, monkeypatch):
    """Five tasks must not mean five readings of the same records (minutes beside runs)."""
    import analysis.frame

    _half_done(tmp_path)
    read, load = [], analysis.frame.load_records
    monkeypatch.setattr(analysis.frame, "load_records", lambda d: read.append(d) or load(d))
    argv = ["benchmark", "status", "--results", str(tmp_path), "--methods", "lora,bitfit",
            "--scales", "0.3,1,3", "--tasks", "polarity,hedge,wnut16"]  # fmt: skip
    assert main(argv) == 0
    stages = sorted(Path(d).relative_to(tmp_path).parts[0] for d in read)
    assert stages == ["final", "grid", "grid"]  # the selection's reading, and the pace's


def test_the_benchmark_scripts_status_stage_passes_its_seeds_scales_methods_and_jobs(tmp_path):
    from tests.test_benchmark import _script_calls

    env = {"SEEDS": "0,1,2", "SCALES": "0.3,1,3", "METHODS": "full,lora", "N_JOBS": "1"}
    [call] = _script_calls(tmp_path, "status", **env)
    assert call == (
        f"-m peftbench.cli benchmark status --results {tmp_path / 'bench'} --seeds 0,1,2 "
        "--jobs 1 --scales 0.3,1,3 --methods full,lora"
    )
