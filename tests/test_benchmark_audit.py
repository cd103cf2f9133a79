"""``peftbench benchmark audit``: each claim a benchmark publishes, re-checked from its records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftbench.cli import main
from peftbench.launch.audit import CHECKS
from peftbench.records.predictions import sha256
from tests.test_benchmark import _record, _script_calls

SCALES = "0.3,1,3"
SETTING = {
    "env": {"device": "cpu", "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"},
    "data": {"fingerprint": "f1", "n": {"dev": 4, "test": 3}},
}


def _patch(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _grid(results: Path, method: str, scale: float, dev: float) -> Path:
    """A sealed grid run: dev only, no test anywhere."""
    path = _record(
        results / "grid", method, scale, dev=dev, test=0.0,
        history=[{"step": 4, "dev/accuracy": dev}], **SETTING,
    )  # fmt: skip
    _patch(path, lambda r: r["metrics"].update(test=None))
    return path


def _final(results: Path, method: str, scale: float, seed: int) -> Path:
    """A final run: test read once at the end, its predictions file beside its record."""
    path = _record(
        results / "final", method, scale, dev=0.7, test=0.6, seed=seed,
        history=[{"step": 4, "dev/accuracy": 0.7}, {"step": 4, "test/accuracy": 0.6}],
        **SETTING,
    )  # fmt: skip
    predictions = path.with_name(path.name.replace(".json", ".predictions.parquet"))
    predictions.write_bytes(b"the run's predictions")  # the audit reads only its sha256
    section = {"file": predictions.name, "sha256": sha256(predictions.read_bytes())}
    _patch(path, lambda r: r.update(predictions={**section, "n": {"dev": 4, "test": 3}}))
    return path


def _benchmark(results: Path) -> dict[str, Path]:
    """lora chooses x3 (2 of 3 finals done), bitfit x0.3 (3 of 3)."""
    for scale, dev in zip((0.3, 1.0, 3.0), (0.5, 0.6, 0.7), strict=True):
        _grid(results, "lora", scale, dev)
        _grid(results, "bitfit", scale, 0.9 - dev)
    finals = {f"lora s{s}": _final(results, "lora", 3.0, s) for s in (0, 1)}
    finals |= {f"bitfit s{s}": _final(results, "bitfit", 0.3, s) for s in (0, 1, 2)}
    return finals


def _audit(results: Path, capsys, *flags: str) -> tuple[int, str]:
    argv = ["benchmark", "audit", "--results", str(results), "--tasks", "polarity"]
    code = main([*argv, "--seeds", "0,1,2", "--scales", SCALES, *flags])
    return code, capsys.readouterr().out


def _row(out: str) -> dict[str, str]:
    def cells(start: str) -> list[str]:
        line = next(line for line in out.splitlines() if line.startswith(start))
        return [cell.strip() for cell in line.strip("|").split("|")]

    return dict(zip(cells("| task"), cells("| polarity"), strict=True))


def test_a_folder_that_kept_the_protocol_passes_and_counts_the_finals_left(tmp_path, capsys):
    _benchmark(tmp_path)
    code, out = _audit(tmp_path, capsys)
    row = _row(out)
    assert code == 0, out
    assert row["finals"] == "5/6" and row["grid runs"] == "6" and row["test examples"] == "3"
    assert {row[c] for c in CHECKS} == {"ok"}
    assert "Problems: 0." in out and "Final runs left: 1 (polarity 1)." in out
    # --complete: the missing lora seed 2 fails the audit, nothing else does
    assert _audit(tmp_path, capsys, "--complete")[0] == 1
    _final(tmp_path, "lora", 3.0, 2)
    assert _audit(tmp_path, capsys, "--complete")[0] == 0


def _test_score_in_grid(results, finals):
    path = next((results / "grid" / "records").glob("*lora--s100--h030*"))
    _patch(path, lambda r: r["metrics"].update(test={"accuracy": 0.9}))
    return "sealed", path.name


def _altered_predictions(results, finals):
    path = finals["lora s1"]
    next(path.parent.glob(path.name.replace(".json", "*.parquet"))).write_bytes(b"edited")
    return "predictions", path.name.replace(".json", ".predictions.parquet")


def _lost_predictions(results, finals):
    path = finals["bitfit s2"]
    next(path.parent.glob(path.name.replace(".json", "*.parquet"))).unlink()
    return "predictions", path.name


def _test_read_twice(results, finals):
    path = finals["bitfit s0"]
    _patch(path, lambda r: r["history"].insert(0, {"step": 2, "test/accuracy": 0.5}))
    return "test once", path.name


def _final_of_an_old_choice(results, finals):
    path = _final(results, "lora", 1.0, 2)  # x1: not lora's chosen x3
    return "recipe", path.name


def _other_torch(results, finals):
    path = finals["lora s0"]
    _patch(path, lambda r: r["env"].update(torch="2.12.0"))
    return "one setting", path.name


def _synthetic_weights(results, finals):
    path = finals["bitfit s1"]
    _patch(path, lambda r: r["experiment"].update(weights="synthetic"))
    return "one setting", path.name


@pytest.mark.parametrize(
    "breach",
    [
        _test_score_in_grid, _altered_predictions, _lost_predictions, _test_read_twice,
        _final_of_an_old_choice, _other_torch, _synthetic_weights,
    ],
)  # fmt: skip
def test_each_broken_claim_fails_its_own_check_and_names_the_file(tmp_path, capsys, breach):
    finals = _benchmark(tmp_path)
    check, name = breach(tmp_path, finals)
    code, out = _audit(tmp_path, capsys)
    row = _row(out)
    assert code == 1, out
    assert {c for c in CHECKS if row[c] != "ok"} == {check}, out
    problem = next(line for line in out.splitlines() if line.startswith("- polarity"))
    assert check in problem and name in problem, problem


def test_methods_are_refused_because_an_audit_covers_every_method(tmp_path, capsys):
    _benchmark(tmp_path)
    code = main(["benchmark", "audit", "--results", str(tmp_path), "--methods", "lora"])
    assert code == 2
    assert "drop --methods" in capsys.readouterr().err


def test_the_script_audits_with_the_folders_seeds_and_scales(tmp_path):
    [call] = _script_calls(tmp_path, "audit", SEEDS="0,1,2", SCALES=SCALES)
    assert call.startswith("-m peftbench.cli benchmark audit --results ")
    assert call.endswith(f"--seeds 0,1,2 --scales {SCALES}")
