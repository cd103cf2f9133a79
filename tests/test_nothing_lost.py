"""Nothing lost, nothing leaked, every failure said once (issue 36).

Each test here failed on the code before its fix: exit codes of failed runs and sweeps, what
counts as a done run, a record whose write fails, corrupted checkpoints, half-read data files,
impossible values in reports, report files left half-written, two processes of one run,
secrets reaching the tracker, SIGHUP, and the tracebacks and unclear lines of the attack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench.records.store import (
    claim_run,
    find_success,
    read_record,
    records_dir,
    save_record,
)
from tests.conftest import ROOT, tiny_overrides

#: A LoRA whose target modules the model lacks: peft refuses it while the method is applied,
#: after the model loaded and before a step (a failed run, and a cheap one).
FAILING = "method.peft.target_modules=[no_such_module]"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **extra}


def _run_py(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _success_record(run_id: str = "polarity--tiny-bert--lora--s0--abcd1234") -> dict:
    return {
        "schema_version": 2,
        "run_id": run_id,
        "status": "success",
        "experiment": {"task": "polarity", "model": "tiny-bert", "method": "lora", "seed": 0},
        "metrics": {
            "primary": {
                "name": "accuracy",
                "split": "test",
                "value": 0.8,
                "higher_is_better": True,
            },
            "dev": {"accuracy": 0.75},
            "test": {"accuracy": 0.8},
        },
        "params": {"base": 100, "total": 110, "trainable": 10, "trainable_pct": 10.0, "head": 2},
        "cost": {"train_time_s": 5.0, "eval_time_s": 1.0},
    }


# ------------------------------------------------------------------ 10: exit codes


def test_a_sweep_whose_runs_fail_exits_1_and_says_so_once(tiny_bert_dir, tmp_path):
    results = tmp_path / "results"
    done = _run_py("-m", "seed=0,1", *tiny_overrides(tiny_bert_dir, results, FAILING))
    assert done.returncode == 1, done.stderr[-3000:]
    records = sorted(records_dir(results).glob("*__failed.json"))
    assert len(records) == 2  # the sweep went on after the first failure
    summary = [ln for ln in done.stderr.splitlines() if "did not succeed" in ln]
    assert len(summary) == 1 and summary[0].startswith("peftbench: 2 run(s) of the sweep")


def test_exit_codes_count_failed_runs_only(monkeypatch, capsys):
    from peftbench.launch import exit_codes

    monkeypatch.delenv(exit_codes.ENV, raising=False)
    exit_codes.start()
    exit_codes.note({"run_id": "a", "status": "success"})
    exit_codes.note({"run_id": "b", "status": "skipped"})
    assert exit_codes.finish(sweep=True) == 0
    exit_codes.start()
    exit_codes.note({"run_id": "c", "status": "oom"})
    exit_codes.note({"run_id": "d", "status": "unsaved"})
    assert exit_codes.finish(sweep=False) == 1
    assert capsys.readouterr().err == ""  # a single run's failure was said by the run
    assert exit_codes.carry_on(1) and not exit_codes.carry_on(2) and not exit_codes.carry_on(143)


def test_a_drained_sweep_starts_no_run_records_nothing_and_exits_3(tiny_bert_dir, tmp_path):
    """A chunk of a long sweep ends at a run boundary: while the drain file exists no run
    starts (the ones under way would finish), nothing is recorded, and the command says how
    to go on; pipelines (benchmark, tune) stop at exit 3 instead of starting the next sweep.
    The sweep writes no report either: it would be partial, and on a big sweep takes minutes."""
    results, drain = tmp_path / "results", tmp_path / "DRAIN"
    assert _run_py("seed=0", *tiny_overrides(tiny_bert_dir, results)).returncode == 0
    [done_record] = records_dir(results).glob("*.json")
    drain.touch()
    env = _env(PEFTBENCH_DRAIN_FILE=str(drain))
    done = _run_py("-m", "seed=0,1,2", *tiny_overrides(tiny_bert_dir, results), env=env)
    assert done.returncode == 3, done.stderr[-3000:]
    assert list(records_dir(results).glob("*.json")) == [done_record]  # seed 0 was done
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("peftbench:")]
    assert line == (
        f"peftbench: drained: 2 run(s) not started, as the drain file {drain} exists; remove "
        "it and run the same command to go on"
    )
    assert not (results / "report").exists()
    assert f"[sweep] draining ({drain} exists): no report" in done.stderr + done.stdout


def test_a_sweep_told_not_to_write_the_report_still_says_its_progress(tiny_bert_dir, tmp_path):
    """The offline benchmark's lanes sweep into a folder git tracks: a report rewritten as each
    sweep ends made the other lane's next record say git_dirty, so they turn it off."""
    results = tmp_path / "results"
    assert _run_py("seed=0", *tiny_overrides(tiny_bert_dir, results)).returncode == 0
    off = "hydra.callbacks.report.write_report=false"
    done = _run_py("-m", "seed=0", off, *tiny_overrides(tiny_bert_dir, results))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stderr + done.stdout
    assert "[sweep] job 1/1 skipped" in out and "no report (write_report=false)" in out
    assert not (results / "report").exists()
    done = _run_py("-m", "seed=0", *tiny_overrides(tiny_bert_dir, results))  # the default
    assert (results / "report").is_dir(), done.stderr[-3000:]


def test_exit_codes_put_a_drain_before_failures(monkeypatch, capsys):
    from peftbench.launch import exit_codes

    monkeypatch.setenv(exit_codes.DRAIN_ENV, "/tmp/DRAIN")
    exit_codes.start()
    exit_codes.note({"run_id": "a", "status": "oom"})
    exit_codes.note({"run_id": "b", "status": exit_codes.DEFERRED})
    assert exit_codes.finish(sweep=True) == exit_codes.EXIT_NOT_STARTED == 3
    err = capsys.readouterr().err
    assert "1 run(s) of the sweep did not succeed: a (oom)" in err  # the failure still said
    assert "drained: 1 run(s) not started" in err and "b (deferred)" not in err
    assert not exit_codes.carry_on(3)


def _drained_script(tmp_path, *stages: str, logs: str) -> tuple[Path, Path, object]:
    """Runs the benchmark script on a folder a chunk left drained, with a PYTHON that only
    appends ``logs`` (a shell word list) to a file; the folder, that file and the result."""
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "DRAIN").touch()  # left by the last chunk, or written by `stop` meanwhile
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho {logs} >> "$CALLS"\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = _env(PYTHON=str(fake), CALLS=str(calls))
    script = ROOT / "scripts" / "offline_benchmark.sh"
    done = subprocess.run(["bash", str(script), str(bench), *stages], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return bench, calls, done


def test_the_benchmark_script_clears_its_last_drain_and_names_the_file(tmp_path):
    bench, calls, done = _drained_script(tmp_path, "select", logs='"$PEFTBENCH_DRAIN_FILE"')
    assert calls.read_text().split() == [str(bench / "DRAIN")] and not (bench / "DRAIN").exists()
    assert "removed" in done.stdout


def test_the_benchmark_scripts_stop_and_status_keep_the_drain_a_chunk_needs(tmp_path):
    """`stop` from another shell writes DRAIN while the chunk runs: reading stages keep it."""
    bench, calls, done = _drained_script(tmp_path, "stop", "status", logs='"$@"')
    stop, status = calls.read_text().splitlines()
    assert stop == f"-m peftbench.cli benchmark stop --results {bench}"
    assert status.startswith("-m peftbench.cli benchmark status")
    assert (bench / "DRAIN").exists() and "removed" not in done.stdout


# ------------------------------------------------------------------ 5: what counts as done


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"status": "success", "schema_version": 99}),
        json.dumps([1, 2, 3]),
        "{not json",
        json.dumps({**_success_record(), "schema_version": 99}),
    ],
    ids=["unknown-schema", "a-list", "not-json", "newer-schema"],
)
def test_only_a_record_that_parses_as_the_schema_counts_as_done(tmp_path, content, caplog):
    run_id = "polarity--tiny-bert--lora--s0--abcd1234"
    folder = records_dir(tmp_path)
    folder.mkdir(parents=True)
    damaged = folder / f"{run_id}__20260101T000000000000Z__success.json"
    damaged.write_text(content)
    caplog.set_level("WARNING", logger="peftbench")
    assert find_success(tmp_path, run_id) is None
    assert not damaged.exists() and damaged.with_name(damaged.name + ".rejected").exists()
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(damaged) in line and "does not count as done" in line

    good = folder / f"{run_id}__20260101T000000000001Z__success.json"
    good.write_text(json.dumps(_success_record(run_id)))
    assert find_success(tmp_path, run_id) == good


def test_a_done_run_hands_its_dev_score_to_a_resumed_search(tmp_path):
    """A resumed ``peftbench tune`` replays its done trials as skips: the Optuna sweeper must
    get their dev scores (it got NaN, a failed trial: the resumed study lost them, suggested
    other next trials and chose its best among the new ones only)."""
    from omegaconf import OmegaConf

    from peftbench.launch.tune import objective
    from peftbench.runner.experiment import _already_done

    run_id = "polarity--tiny-bert--lora--s100--abcd1234"
    save_record(_success_record(run_id), tmp_path)
    skip = _already_done(OmegaConf.create({"force": False}), tmp_path, run_id)
    assert skip["status"] == "skipped" and objective(skip) == 0.75
    assert _already_done(OmegaConf.create({"force": True}), tmp_path, run_id) is None


# ------------------------------------------------------------------ 2: a record write that fails


def test_a_record_the_records_folder_refuses_is_kept_in_a_fallback_folder(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "records").write_text("a file where the folder should be")
    monkeypatch.setenv("PEFTBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    path, why = save_record(_success_record(), results)
    assert why and path is not None and path.parent == tmp_path / "fallback"
    assert json.loads(path.read_text())["status"] == "success"


# ------------------------------------------------------------------ 8: one process per run id


def _hold_claim(results: Path, run_id: str) -> subprocess.Popen:
    """Another process holding the run's claim, as a benchmark lane does while it checks it."""
    holder = (
        "import sys, time\n"
        "from peftbench.records.store import claim_run\n"
        "with claim_run(sys.argv[1], sys.argv[2]) as other:\n"
        "    assert other is None\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    argv = [sys.executable, "-c", holder, str(results), run_id]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_of_the_same_run_skips_it(tmp_path):
    run_id = "polarity--tiny-bert--lora--s0--abcd1234"
    proc = _hold_claim(tmp_path, run_id)
    try:
        with claim_run(tmp_path, run_id) as other:
            assert other is not None and f"pid {proc.pid}" in other
        with claim_run(tmp_path, "another--run--s0") as other:
            assert other is None  # other run ids are free
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with claim_run(tmp_path, run_id) as other:  # released by the kernel when its holder died
        assert other is None
        with claim_run(tmp_path, run_id) as again:  # re-entrant within one process
            assert again is None


def test_a_done_run_is_reported_done_while_another_lane_checks_it(compose, tmp_path):
    """Two benchmark lanes walk the same sweep: the lane that meets a done run while the other
    holds its claim for the check said "under way", which read as a run still training."""
    from peftbench.runner import experiment

    results = tmp_path / "results"
    first = experiment.run(compose(results_dir=results))
    assert first["status"] == "success"
    proc = _hold_claim(results, first["run_id"])
    try:
        again = experiment.run(compose(results_dir=results))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert again == {
        "run_id": first["run_id"], "status": "skipped", "path": first["path"],
        "primary": first["primary"], "dev": first["dev"],  # what a resumed search ranks
    }  # fmt: skip


def test_read_record_is_the_one_test_of_a_record(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_success_record()))
    record, reason = read_record(path)
    assert record is not None and reason is None


# ------------------------------------------------------------------ 3: a corrupted checkpoint


def test_a_corrupted_checkpoint_is_named_set_aside_and_the_run_starts_over(
    compose, tmp_path, caplog
):
    from peftbench.runner import experiment
    from peftbench.runner.checkpoint import checkpoint_path

    results = tmp_path / "results"
    steps = ("train.checkpoint_every_steps=2", "train.keep_checkpoints=true")
    first = experiment.run(compose(*steps, results_dir=results))
    checkpoint = checkpoint_path(results, first["run_id"])
    checkpoint.write_bytes(b"\xff" * 64)  # safetensors: "header too large"
    caplog.set_level("WARNING", logger="peftbench")
    again = experiment.run(compose(*steps, "force=true", results_dir=results))
    assert again["status"] == "success"
    record = json.loads(Path(again["path"]).read_text())
    assert record["cost"]["checkpoint"]["resumed_from_step"] is None  # started over
    assert checkpoint.with_name(checkpoint.name + ".corrupt").read_bytes() == b"\xff" * 64
    (line,) = [r.getMessage() for r in caplog.records if "cannot be resumed" in r.getMessage()]
    assert str(checkpoint) in line and "set aside" in line and "step 1" in line


# ------------------------------------------------------------------ 13: SIGHUP


def test_sighup_stops_a_run_as_sigterm_does():
    child = (
        "import os, signal, time\n"
        "from peftbench.runner.interrupt import Interrupted, stop_on_signals\n"
        "try:\n"
        "    with stop_on_signals():\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "        time.sleep(10)\n"
        "except Interrupted as stop:\n"
        "    print(stop.name, flush=True)\n"
        "    raise SystemExit(stop.exit_code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (129, "SIGHUP")


# ------------------------------------------------------------------ 6, 7: the report


def _bad_copies(results: Path) -> dict[str, str]:
    """Three copies of a fixture success record holding impossible values."""
    from tests.conftest import FIXTURE_RECORDS

    source = next(FIXTURE_RECORDS.rglob("polarity--minilm-l6--lora--s0.json"))
    base = json.loads(source.read_text())
    bad = {
        "accuracy-1.7": (
            "metrics",
            {**base["metrics"], "primary": {**base["metrics"]["primary"], "value": 1.7}},
        ),
        "huge": ("metrics", {**base["metrics"], "test": {"accuracy": 1e308}}),
        "negative-time": ("cost", {**base["cost"], "train_time_s": -5.0}),
    }
    folder = results / "records"
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for name, (section, value) in bad.items():
        record = {**base, section: value, "run_id": f"{base['run_id']}-{name}"}
        (folder / f"{name}.json").write_text(json.dumps(record))
        names[name] = str(folder / f"{name}.json")
    return names


def test_impossible_values_are_rejected_when_records_are_read(tmp_path):
    from analysis.frame import REJECTED, load_records

    names = _bad_copies(tmp_path)
    with pytest.warns(UserWarning):
        frame = load_records(tmp_path)
    assert frame.empty
    reasons = {str(path): why for path, why in frame.attrs[REJECTED]}
    assert set(reasons) == set(names.values())
    assert "outside accuracy's range [0, 1]" in reasons[names["accuracy-1.7"]]
    assert "1e+308 is outside" in reasons[names["huge"]]
    assert "cost.train_time_s = -5.0 is not a finite number >= 0" in reasons[names["negative-time"]]


def test_the_report_lists_rejected_records_and_a_failed_write_keeps_the_previous_one(
    tmp_path, monkeypatch
):
    import shutil

    import analysis.report as report
    from tests.conftest import FIXTURE_RECORDS

    results = Path(shutil.copytree(FIXTURE_RECORDS, tmp_path / "results"))
    _bad_copies(results)
    with pytest.warns(UserWarning):
        written = report.build_report(results)
    out = results / "report"
    rejected = (out / "rejected.md").read_text()
    assert all(f"{n}.json" in rejected for n in ("accuracy-1.7", "huge", "negative-time"))
    assert "170" not in (out / "comparison.md").read_text()
    assert out / "rejected.md" in written and all(p.parent == out for p in written)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(path, document):
        path.write_text(document[: len(document) // 3])  # what a full disk leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "_write_page", full_disk)
    with pytest.raises(OSError), pytest.warns(UserWarning):
        report.build_report(results)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written


def test_report_where_with_an_unknown_key_names_it(tmp_path):
    from analysis.frame import load_records, select
    from tests.conftest import FIXTURE_RECORDS

    with pytest.warns(UserWarning):
        frame = load_records(FIXTURE_RECORDS)
    unknown = r"--where train.lrr: no record has this key; did you mean train.lr\?"
    with pytest.raises(ValueError, match=unknown):
        select(frame, where={"train.lrr": "0.001"})


def test_report_out_a_file_is_one_line(tmp_path, capsys):
    from peftbench import cli

    (tmp_path / "results").mkdir()
    (tmp_path / "file").write_text("x")
    assert (
        cli.main(
            ["report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "file")]
        )
        == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("peftbench: error: --out") and "is a file" in line


# ------------------------------------------------------------------ 9: secrets and the tracker


def test_everything_handed_to_the_tracker_is_scrubbed(compose, tmp_path, monkeypatch):
    import shutil

    from peftbench.runner import experiment
    from tests.conftest import ASSETS
    from tests.test_tracking import _fake_wandb

    secret = "hf_secrettokenvalue42"
    monkeypatch.setenv("HF_TOKEN", secret)
    data = tmp_path / secret / "tiny.csv"  # a token inside a data path
    data.parent.mkdir()
    shutil.copy(ASSETS / "tiny_polarity.csv", data)
    runs = _fake_wandb(monkeypatch)
    # no source.file: the record's data.source is then the source config, path included
    cfg = compose("tracker=wandb", f"task.source.path={data}", "task.source.file=null")
    summary = experiment.run(cfg)
    assert summary["status"] == "success"
    (run,) = runs
    handed = repr((run.init, run.logged, run.summary))
    assert "***REDACTED***" in handed and secret not in handed


# ------------------------------------------------------------------ 12, 14: tools in one line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["costs", "overhead", "--repeats", "0"], "--steps and --repeats must be at least 1"),
        (["tune", "--methods", "lora", "--trials", "0", "--dry-run"], "--trials must be at"),
        (["tune", "--methods", "lora", "--seeds", "a", "--dry-run"], "--seeds must be integers"),
        (
            ["tune", "--methods", "lora", "--results", "/tmp/a", "results_dir=/tmp/b"],
            "--results /tmp/a and results_dir=/tmp/b disagree",
        ),
    ],
    ids=["repeats-0", "trials-0", "seeds-text", "two-results"],
)
def test_tools_refuse_bad_arguments_in_one_line_before_running(argv, expected, capsys):
    from peftbench import cli

    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("peftbench: error: ") and expected in line


def test_tune_writes_its_study_where_results_dir_says(tmp_path, capsys, monkeypatch):
    from peftbench import cli

    monkeypatch.chdir(tmp_path)
    assert (
        cli.main(["tune", "--methods", "lora", "--trials", "2", "--dry-run", "results_dir=x"]) == 0
    )
    out = capsys.readouterr().out
    assert f"hydra.sweep.dir={tmp_path / 'x' / 'tuning'}" in out
    assert f"results_dir={tmp_path / 'x'}" in out and "results/tuned" not in out


def test_reproduce_with_its_data_file_gone_is_one_line(monkeypatch, capsys):
    import analysis.reproduce
    from peftbench import cli
    from peftbench.errors import DataError

    def missing(run_id, results):
        raise DataError("/data/gone.csv: no such data file; fix the task's source.path")

    monkeypatch.setattr(analysis.reproduce, "reproduce", missing)
    assert cli.main(["reproduce", "polarity--tiny-bert--lora--s0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "peftbench: error: /data/gone.csv: no such data file; fix the task's source.path"


def test_a_data_path_too_long_for_the_file_system_is_one_line():
    from omegaconf import OmegaConf

    from peftbench.errors import DataError
    from tasks.readers import read_table

    source = OmegaConf.create({"path": "/tmp/" + "x" * 5000, "text_columns": ["text"]})
    with pytest.raises(DataError, match=r"not a usable path \(File name too long, 5005 char"):
        read_table(source)


# ------------------------------------------------------------------ 15: unclear lines


def test_a_malformed_method_yaml_is_named_with_its_line(tmp_path):
    import shutil

    from peftbench.config.paths import CONF_DIR
    from peftbench.config.precheck import check_command_line
    from peftbench.errors import ConfigError

    conf = Path(shutil.copytree(CONF_DIR, tmp_path / "conf"))
    (conf / "method" / "broken.yaml").write_text("name: broken\nkind: peft\ntarget: [q, v\n")
    with pytest.raises(ConfigError) as caught:
        check_command_line(["method=broken"], conf_dir=conf)
    message = str(caught.value)
    assert message.startswith(f"{conf / 'method' / 'broken.yaml'}: line ")
    assert "not valid YAML" in message and "\n" not in message


# ------------------------------------------------------------------ 11: found only after loading


def test_a_method_yaml_named_otherwise_than_its_file_is_refused(tmp_path):
    import shutil

    from peftbench.config.paths import CONF_DIR
    from peftbench.config.precheck import check_command_line
    from peftbench.errors import ConfigError

    conf = Path(shutil.copytree(CONF_DIR, tmp_path / "conf"))
    (conf / "method" / "mine.yaml").write_text("name: other\nkind: peft\nlr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"mine.yaml says name: other, but its file is mine"):
        check_command_line(["method=mine"], conf_dir=conf)
    (conf / "method" / "mine.yaml").write_text("name: mine\nkind: peft\nlr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"method 'mine' \(kind peft\) has no peft: section"):
        check_command_line(["method=mine"], conf_dir=conf)
    check_command_line(["method=lora", "method.name=lora-variant"], conf_dir=conf)  # on purpose


# ------------------------------------------------------------------ 2, 8: in a real run


def test_a_finished_run_whose_record_cannot_be_written_is_kept_and_a_second_process_skips(
    compose, tmp_path, monkeypatch, capfd
):
    import peftbench.records.store as store
    from peftbench.runner import experiment

    real_write = store.write_record

    def full_disk(record, results_dir, predictions=None, *, folder=None):
        if folder is None:  # the records folder; the fallback folder still takes it
            raise OSError(28, "No space left on device")
        return real_write(record, results_dir, predictions, folder=folder)

    monkeypatch.setattr(store, "write_record", full_disk)
    monkeypatch.setenv("PEFTBENCH_FALLBACK_DIR", str(tmp_path / "kept"))
    results = tmp_path / "results"
    summary = experiment.run(compose(results_dir=results))
    assert summary["status"] == "unsaved"  # exit 1 (launch/exit_codes.py)
    (kept,) = (tmp_path / "kept").glob("*__success.json")
    assert summary["path"] == str(kept) and json.loads(kept.read_text())["metrics"]
    err = capfd.readouterr().err
    assert f"kept at {kept}" in err and "No space left on device" in err

    monkeypatch.setattr(store, "write_record", real_write)
    holder = (
        "import sys, time\n"
        "from peftbench.records.store import claim_run\n"
        "with claim_run(sys.argv[1], sys.argv[2]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(results), summary["run_id"]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        again = experiment.run(compose("force=true", results_dir=results))
    finally:
        proc.kill()
        proc.wait()
    assert again == {"run_id": summary["run_id"], "status": "skipped", "path": None}
    assert not list(records_dir(results).glob("*.json"))  # it did not train a second time


def test_a_report_stopped_by_a_signal_says_so_and_exits_128_plus_n(tmp_path, monkeypatch, capsys):
    import analysis.report
    from peftbench import cli
    from peftbench.runner.interrupt import Interrupted

    def stopped(**kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(analysis.report, "build_report", stopped)
    assert cli.main(["report", "--results", str(tmp_path)]) == 143
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line
        == f"peftbench: report stopped by SIGTERM; {tmp_path / 'report'} keeps the previous report"
    )
