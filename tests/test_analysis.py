"""Tests of analysis/: records -> stats -> tables, plots and report.

Expected numbers are worked out by hand from the fixture records in tests/fixtures/records
(model minilm-l6, test split, higher is better):

    task      method  seeds               mean  sample std (ddof=1)
    polarity  lora    0.80 0.82 0.84      0.82  0.02
    polarity  bitfit  0.79 0.81           0.80  sqrt(0.0002) = 0.01414
    polarity  prompt  0.60 0.64           0.62  sqrt(0.0008) = 0.02828
    topic     lora    0.70 0.72           0.71  0.01414
    topic     bitfit  0.75 0.77 0.79      0.77  0.02
    topic     prompt  0.50                0.50  NaN (one seed); seed 1 ran out of memory

Traps in the fixtures: an older success of polarity--minilm-l6--lora--s1 scoring 0.10, a
newer synthetic-weight run of polarity--minilm-l6--lora--s0 scoring 0.99, and corrupt.json.

95% Student's t interval of the mean by hand, mean -/+ t(0.975, n-1) * std / sqrt(n):
    n = 3: t(0.975, 2) = 4.302653, so 0.82 -/+ 4.302653 * 0.02 / sqrt(3) = (0.770317, 0.869683)
    n = 2: t(0.975, 1) = 12.706205, so 0.80 -/+ 12.706205 * 0.01414 / sqrt(2) = (0.672938,
           0.927062)

Paired t-tests against the best method, over the seeds both ran (df = n - 1 = 1; with one
degree of freedom t is Cauchy, so the two-sided p = 1 - (2 / pi) * atan(|t|)):
    polarity, vs lora (s0 0.80, s1 0.82): bitfit 0.79 0.81 differs by 0.01 on both seeds:
        sd 0, |t| = inf, p = 0. prompt 0.60 0.64: differences 0.20, 0.18, mean 0.19, sd
        0.01414, t = 0.19 / (0.01414 / sqrt(2)) = 19, p = 0.033475. Holm over the 2:
        0 * 2 = 0, then max(0, 0.033475 * 1) = 0.033475 < 0.05: neither is a tie.
    topic, vs bitfit (s0 0.75, s1 0.77): lora 0.70 0.72 is 0.05 below on both: p = 0.
        prompt has one seed: untested, no mark.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis.clean_costs import CostsFileError
from analysis.frame import (
    COLUMNS,
    RecordWarning,
    latest_success,
    load_records,
    quality_runs,
    select,
)
from analysis.report import build_report
from analysis.stats import aggregate, pareto_front, summarize
from analysis.tables import build_tables, latex_escape, to_markdown
from peftbench.measure.overhead import write_methods
from tests.conftest import BuiltReport

FIXTURES = Path(__file__).parent / "fixtures" / "records"
pytestmark = pytest.mark.filterwarnings("ignore::analysis.frame.RecordWarning")

LORA_POLARITY_S1 = "polarity--minilm-l6--lora--s1"
LORA_POLARITY_S0 = "polarity--minilm-l6--lora--s0"
OOM_RUN = "topic--minilm-l6--prompt--s1"


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A copy of the fixture records, so a report never writes into tests/fixtures."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "results"))


@pytest.fixture
def report_dir(fixture_report: BuiltReport) -> Path:
    return fixture_report.out


@pytest.fixture
def records() -> pd.DataFrame:
    return load_records(FIXTURES)


def _table_cells(markdown: str) -> dict[str, dict[str, str]]:
    """Parses the first pipe table into {method: {column: cell text}}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def _write_record(path: Path, **overrides: object) -> None:
    """Writes a copy of a fixture success record with top-level fields replaced."""
    base = json.loads((FIXTURES / "2026-11-23_11-00-00" / f"{LORA_POLARITY_S0}.json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(base | overrides))


# ---------------------------------------------------------------------------------- records


def test_load_records_warns_and_skips_the_corrupt_file() -> None:
    with pytest.warns(RecordWarning, match="corrupt.json"):
        df = load_records(FIXTURES)
    # 13 successes + 1 oom in the main sweep, 1 older duplicate, 1 synthetic run.
    assert len(df) == 16
    assert list(df.columns) == COLUMNS
    assert df["status"].value_counts().to_dict() == {"success": 15, "oom": 1}


def test_load_records_flattens_fields(records: pd.DataFrame) -> None:
    row = records[records["run_id"] == LORA_POLARITY_S1].sort_values("created_at").iloc[-1]
    assert row["primary_value"] == 0.82
    assert row["trainable_pct"] == 0.33
    assert row["higher_is_better"]
    # allocated (1.5 GB) is recorded for lora, so it wins over rss (0.9 GB).
    assert row["peak_mem_bytes"] == 1_500_000_000
    assert row["peak_rss_bytes"] == 900_000_000
    bitfit = records[records["method"] == "bitfit"].iloc[0]
    assert bitfit["peak_mem_bytes"] == 800_000_000  # allocated is null: falls back to rss
    assert records["created_at"].dt.tz is not None


def test_records_before_the_stored_count_keep_what_they_train_unless_a_prompt_is_reparametrised(
    records: pd.DataFrame, tmp_path: Path
) -> None:
    """A record without params.stored: its stored share is its trainable share (no prompt
    encoder: equal by definition), except for a prefix MLP or P-tuning (unknown: NaN), so a
    table does not show a difference that is only a difference in which tasks recorded it."""
    row = records[records["run_id"] == LORA_POLARITY_S1].iloc[-1]
    assert row["stored_pct"] == row["trainable_pct"] == 0.33
    base = json.loads((FIXTURES / "2026-11-23_11-00-00" / f"{LORA_POLARITY_S0}.json").read_text())
    mam = {"name": "mam", "peft": {"peft_type": "PREFIX_TUNING", "prefix_projection": True}}
    _write_record(tmp_path / "mam.json", run_id="mam-run", config={**base["config"], "method": mam})
    stored = {**base["params"], "stored": 7, "stored_pct": 0.01}
    _write_record(tmp_path / "new.json", run_id="new-run", params=stored)
    rows = load_records(tmp_path).set_index("run_id")["stored_pct"]
    assert math.isnan(rows["mam-run"]) and rows["new-run"] == 0.01


def test_load_records_skips_files_that_are_not_records(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    _write_record(tmp_path / "future.json", schema_version=99)
    _write_record(tmp_path / "no_value.json", metrics={"primary": {"value": None}})
    _write_record(tmp_path / "deep" / "er" / "ok.json")
    with pytest.warns(RecordWarning) as caught:
        df = load_records(tmp_path)
    assert sorted(Path(str(w.message).split()[1].rstrip(":")).name for w in caught) == [
        "future.json",
        "list.json",
        "no_value.json",
    ]
    assert list(df["path"].map(lambda p: Path(p).name)) == ["ok.json"]  # found recursively


def test_load_records_of_empty_dir_has_all_columns(tmp_path: Path) -> None:
    df = load_records(tmp_path)
    assert df.empty and list(df.columns) == COLUMNS


def test_select_accepts_strings_and_lists(records: pd.DataFrame) -> None:
    assert set(select(records, task="topic")["task"]) == {"topic"}
    both = select(records, method=["lora", "prompt"], task="polarity")
    assert set(both["method"]) == {"lora", "prompt"}
    assert set(both["task"]) == {"polarity"}
    assert len(select(records, sweep="2026-11-20_09-00-00")) == 1
    assert len(select(records)) == len(records)


def test_latest_success_keeps_the_newest_record_of_a_run(records: pd.DataFrame) -> None:
    latest = latest_success(records)
    assert latest.loc[latest["run_id"] == LORA_POLARITY_S1, "primary_value"].tolist() == [0.82]
    assert OOM_RUN not in set(latest["run_id"])
    # The synthetic run shares a run_id with a real one but must not shadow it.
    s0 = latest[latest["run_id"] == LORA_POLARITY_S0].set_index("weights")["primary_value"]
    assert s0.to_dict() == {"pretrained": 0.80, "synthetic": 0.99}


def test_quality_runs_drop_synthetic_failed_and_superseded(records: pd.DataFrame) -> None:
    runs = quality_runs(records)
    assert len(runs) == 13
    assert runs["run_id"].is_unique
    assert set(runs["weights"]) == {"pretrained"}
    assert set(runs["status"]) == {"success"}


# ------------------------------------------------------------------------------------ stats


def test_summarize_by_hand() -> None:
    s = summarize([0.80, 0.82, 0.84])
    assert (s.mean, s.n, s.ci_method) == (pytest.approx(0.82), 3, "t")
    assert s.std == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.770317, 0.869683), abs=1e-6)
    two = summarize([0.79, 0.81])
    assert two.std == pytest.approx(math.sqrt(0.0002))
    assert (two.ci_low, two.ci_high) == pytest.approx((0.672938, 0.927062), abs=1e-6)


def test_summarize_one_seed_has_no_std_and_no_interval() -> None:
    s = summarize([0.5])
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)
    assert (s.mean, s.n, s.ci_method) == (0.5, 1, "none")


def test_pareto_front_by_hand() -> None:
    cost = [0.01, 0.1, 0.35, 0.1, 1.0]
    score = [0.50, 0.77, 0.71, 0.60, 0.90]
    # 0.35 scores less than 0.1 (dominated), the second 0.1 point scores less at equal cost.
    assert pareto_front(cost, score).tolist() == [True, True, False, False, True]
    # Paying more for the same score is no progress.
    assert pareto_front([1.0, 2.0], [0.5, 0.5]).tolist() == [True, False]
    loss = [3.0, 2.0, 2.5]
    assert pareto_front([1, 2, 3], loss, higher_is_better=False).tolist() == [True, True, False]


def test_aggregate_rejects_records_that_are_not_a_quality_view(records: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="quality_runs"):
        aggregate(records)
    with pytest.raises(ValueError, match="synthetic"):
        aggregate(latest_success(records))


def test_aggregate_rejects_a_task_that_mixes_metrics(records: pd.DataFrame) -> None:
    runs = quality_runs(records)
    runs.loc[runs.index[0], "primary_name"] = "f1"
    with pytest.raises(ValueError, match="mixes primary_name"):
        aggregate(runs)


def test_aggregate_by_hand(records: pd.DataFrame) -> None:
    agg = aggregate(quality_runs(records)).set_index(["task", "method_label"])
    assert agg.loc[("polarity", "lora"), "mean"] == pytest.approx(0.82)  # not 0.10, not 0.99
    assert agg.loc[("polarity", "lora"), "n"] == 3
    assert agg.loc[("topic", "prompt"), "n"] == 1  # the oom seed is not counted
    assert agg.loc[("topic", "bitfit"), "std"] == pytest.approx(0.02)
    assert agg.loc[("polarity", "lora"), "trainable_pct"] == pytest.approx(0.33)


# ----------------------------------------------------------------------------------- tables


def test_comparison_table_by_hand(records: pd.DataFrame) -> None:
    (table,) = build_tables(aggregate(quality_runs(records)))
    assert table.model == "minilm-l6"
    assert table.methods == ["bitfit", "lora", "prompt"]
    assert table.best["polarity"] == {"lora"}
    assert table.best["topic"] == {"bitfit"}
    # Paired t vs lora (module docstring): bitfit p = 0, prompt p_Holm = 0.033475.
    assert table.tied["polarity"] == set()
    polarity = table.tests["polarity"]
    assert polarity.loc["prompt", "p"] == pytest.approx(0.033475, abs=1e-6)
    assert polarity.loc["prompt", "p_holm"] == pytest.approx(0.033475, abs=1e-6)
    assert polarity.loc["bitfit", ["n", "p", "p_holm"]].tolist() == [2, 0.0, 0.0]
    # topic: lora is 0.05 below bitfit on both shared seeds; prompt (1 seed) is untested.
    assert table.tied["topic"] == set()
    assert table.tests["topic"].loc["lora", "p"] == 0.0
    assert math.isnan(table.tests["topic"].loc["prompt", "p"])
    # Avg.: bitfit (0.80 + 0.77) / 2, lora (0.82 + 0.71) / 2, prompt (0.62 + 0.50) / 2.
    assert table.avg.to_dict() == pytest.approx({"bitfit": 0.785, "lora": 0.765, "prompt": 0.56})
    # Ranks: polarity lora 1, bitfit 2, prompt 3; topic bitfit 1, lora 2, prompt 3.
    assert table.avg_rank.to_dict() == {"bitfit": 1.5, "lora": 1.5, "prompt": 3.0}
    assert table.best["Avg. rank"] == {"bitfit", "lora"}
    # % trainable of lora: mean over tasks of 0.33 (polarity) and 0.35 (topic).
    assert table.cost.loc["lora", "trainable_pct"] == pytest.approx(0.34)


def test_markdown_cells_by_hand(records: pd.DataFrame) -> None:
    markdown = to_markdown(build_tables(aggregate(quality_runs(records))))
    cells = _table_cells(markdown)
    assert cells["lora"]["polarity"] == "**82.0 ± 2.0**"
    assert cells["bitfit"]["polarity"] == "80.0 ± 1.4"  # separated by the paired test
    assert cells["prompt"]["polarity"] == "62.0 ± 2.8"
    assert cells["bitfit"]["topic"] == "**77.0 ± 2.0**"
    assert cells["lora"]["topic"] == "71.0 ± 1.4"
    assert cells["prompt"]["topic"] == "50.0 (1 seed)"  # no ±, and said where it is read
    assert cells["bitfit"]["Avg."] == "**78.5**"
    assert cells["prompt"]["Avg. rank"] == "3.00"
    assert cells["lora"]["% params"] == "0.34"
    assert cells["lora"]["Peak mem"] == "1.50 GB"
    assert cells["bitfit"]["Peak mem"] == "0.80 GB"  # one unit per column
    assert cells["lora"]["Artifact"] == "301.2 KB"
    assert "×100" in markdown and "†:" in markdown  # caption and legend say what marks mean
    assert "1 seed: no uncertainty estimate" in markdown
    assert "paired t (n = 2)" in markdown and "Holm" in markdown


def _runs(rows: list[tuple[str, str, int, float]], *, metric: str, higher: bool) -> pd.DataFrame:
    """Quality runs built in memory: (task, method, seed, value) per row."""
    df = pd.DataFrame(
        [{"task": t, "model": "m", "method": m, "method_label": m, "seed": s,
          "primary_value": v, "run_id": f"{t}--m--{m}--s{s}"} for t, m, s, v in rows]
    )  # fmt: skip
    return df.assign(
        status="success", weights="pretrained", primary_name=metric, primary_split="test",
        higher_is_better=higher, task_version=1, budget_pct=math.nan, trainable_pct=1.0,
        peak_mem_bytes=math.nan, train_time_s=math.nan, tokens_per_s=math.nan,
        artifact_bytes=math.nan,
    )  # fmt: skip


def test_forgetting_and_energy_columns_show_only_where_recorded() -> None:
    rows = [("t", "a", 0, 0.8), ("t", "a", 1, 0.9), ("t", "b", 0, 0.7), ("t", "b", 1, 0.6)]
    runs = _runs(rows, metric="accuracy", higher=True)
    cells = _table_cells(to_markdown(build_tables(aggregate(runs))))
    assert "Forgetting" not in cells["a"] and "Energy (J)" not in cells["a"]  # none recorded

    runs = runs.assign(
        forgetting=[0.010, 0.020, 0.1, 0.3],
        forgetting_measure="linear_cka_drift",
        energy_j=[100.0, 120.0, math.nan, math.nan],
        energy_j_per_token=math.nan,
    )
    markdown = to_markdown(build_tables(aggregate(runs)))
    cells = _table_cells(markdown)
    assert cells["a"]["Forgetting"] == "0.015" and cells["b"]["Forgetting"] == "0.2"
    assert cells["a"]["Energy (J)"] == "110.0" and cells["b"]["Energy (J)"] == "–"
    assert "Forgetting: 1 - linear CKA" in markdown and "lower is better" in markdown


def test_a_stored_share_is_a_column_only_where_a_method_keeps_less_than_it_trains() -> None:
    rows = [("t", "a", 0, 0.8), ("t", "a", 1, 0.9), ("t", "b", 0, 0.7), ("t", "b", 1, 0.6)]
    runs = _runs(rows, metric="accuracy", higher=True).assign(stored_pct=1.0)
    assert "% stored" not in to_markdown(build_tables(aggregate(runs)))  # all keep it all

    runs = runs.assign(trainable_pct=[19.0, 19.0, 1.0, 1.0], stored_pct=[1.9, 1.9, 1.0, 1.0])
    markdown = to_markdown(build_tables(aggregate(runs)))
    cells = _table_cells(markdown)
    header = list(cells["a"])
    assert header.index("% stored") == header.index("% params") + 1  # side by side
    assert (cells["a"]["% params"], cells["a"]["% stored"]) == ("19", "1.9")
    assert cells["b"]["% stored"] == "1.0" and "prefix MLP" in markdown
    older = runs.assign(stored_pct=[1.9, 1.9, None, None])  # records from before the field
    assert _table_cells(to_markdown(build_tables(aggregate(older))))["b"]["% stored"] == "–"


def test_lower_is_better_metric_is_not_scaled_and_min_wins() -> None:
    runs = _runs(
        [("lm", "a", 0, 2.0), ("lm", "a", 1, 2.2), ("lm", "b", 0, 3.0), ("lm", "b", 1, 3.4)],
        metric="perplexity",
        higher=False,
    )
    (table,) = build_tables(aggregate(runs))
    assert table.tasks[0].scale == 1.0  # values above 1 are shown as they are
    assert table.best["lm"] == {"a"}
    assert table.avg_rank.to_dict() == {"a": 1.0, "b": 2.0}
    cells = _table_cells(to_markdown([table]))
    assert cells["a"]["lm"] == "**2.1 ± 0.1**"  # std of (2.0, 2.2) = sqrt(0.02) = 0.141
    # Paired t: differences 1.0, 1.2, t = 1.1 / (0.1414 / sqrt(2)) = 11 with 1 df, two-sided
    # p = 1 - (2 / pi) * atan(11) = 0.0577 >= 0.05: two seeds do not separate b from a.
    assert table.tests["lm"].loc["b", "p"] == pytest.approx(0.057716, abs=1e-6)
    assert cells["b"]["lm"] == "3.2 ± 0.3†"
    assert cells["b"]["Peak mem"] == "–"


def test_a_metric_on_a_0_100_scale_is_never_scaled_even_below_1() -> None:
    """BLEU is 0-100 (sacreBLEU): a weak 0.66 must read 0.7, not 66.0."""
    bleu = _runs([("mt", "a", 0, 0.66), ("mt", "b", 0, 0.42)], metric="bleu", higher=True)
    acc = _runs([("cls", "a", 0, 0.9), ("cls", "b", 0, 0.8)], metric="accuracy", higher=True)
    (table,) = build_tables(aggregate(pd.concat([bleu, acc], ignore_index=True)))
    scales = {t.name: t.scale for t in table.tasks}
    assert scales == {"mt": 1.0, "cls": 100.0}
    cells = _table_cells(to_markdown([table]))
    assert cells["a"]["mt"] == "**0.7**" and cells["a"]["cls"] == "**90.0**"
    assert cells["a"]["Avg."] == "–"  # BLEU and accuracy x100 share no scale


def test_avg_is_omitted_when_tasks_differ_in_direction() -> None:
    acc = _runs([("cls", "a", 0, 0.9), ("cls", "b", 0, 0.8)], metric="accuracy", higher=True)
    ppl = _runs([("lm", "a", 0, 3.0), ("lm", "b", 0, 2.0)], metric="perplexity", higher=False)
    (table,) = build_tables(aggregate(pd.concat([acc, ppl], ignore_index=True)))
    assert table.avg.isna().all()
    assert table.avg_rank.to_dict() == {"a": 1.5, "b": 1.5}
    assert _table_cells(to_markdown([table]))["a"]["Avg."] == "–"


def test_avg_best_only_among_methods_run_on_every_task() -> None:
    runs = _runs(
        [("t1", "a", 0, 0.8), ("t2", "a", 0, 0.7), ("t1", "c", 0, 0.9)],
        metric="accuracy",
        higher=True,
    )
    (table,) = build_tables(aggregate(runs))
    # c averages one easy task (0.9) and ranks first there; a averages (0.8 + 0.7) / 2.
    assert table.avg.to_dict() == pytest.approx({"a": 0.75, "c": 0.9})
    assert table.avg_rank.to_dict() == {"a": 1.5, "c": 1.0}
    assert table.best["Avg."] == table.best["Avg. rank"] == {"a"}
    assert _table_cells(to_markdown([table]))["c"]["t2"] == "–"


def test_latex_escape() -> None:
    assert latex_escape("macro_f1 & 5% #1") == r"macro\_f1 \& 5\% \#1"


# ----------------------------------------------------------------------------------- report


def test_build_report_writes_every_file(fixture_report: BuiltReport) -> None:
    written, out = fixture_report.written, fixture_report.out
    names = {p.name for p in written}
    expected = {"comparison.md", "comparison.csv", "comparison.tex", "failures.md"}
    expected |= {"rejected.md"}  # the fixtures hold damaged records (corrupt.json, ...)
    expected |= {"reproducibility.md", "report.html"}
    stems = ("score_vs_params", "score_vs_time", "score_vs_memory", "convergence", "average_rank")
    stems += ("critical_difference",)  # 3 methods share 2 tasks
    for stem in stems:  # no budget_matched: no fixture record carries a budget
        expected |= {f"{stem}.png", f"{stem}.svg"}
    assert names == expected
    assert all(p.parent == out and p.stat().st_size > 0 for p in written)
    png = (out / "score_vs_params.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "score_vs_params.svg").read_text().lstrip().startswith("<?xml")


def test_report_csv_numbers_by_hand(report_dir: Path) -> None:
    with open(report_dir / "comparison.csv", newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    lora = rows["lora"]
    assert float(lora["polarity/mean"]) == pytest.approx(0.82)  # raw, not x100
    assert float(lora["polarity/std"]) == pytest.approx(0.02)
    assert lora["polarity/n"] == "3"
    assert float(lora["polarity/ci_low"]) == pytest.approx(0.770317, abs=1e-6)  # Student's t
    assert float(lora["polarity/ci_high"]) == pytest.approx(0.869683, abs=1e-6)
    assert lora["polarity/ci_method"] == "t" and lora["polarity/p_vs_best"] == ""  # the best
    prompt = rows["prompt"]
    assert prompt["topic/std"] == prompt["topic/ci_low"] == prompt["topic/ci_high"] == ""
    assert prompt["topic/ci_method"] == "none" and prompt["topic/test_vs_best"] == ""
    assert prompt["polarity/test_vs_best"] == "paired t" and prompt["polarity/n_vs_best"] == "2"
    assert float(prompt["polarity/p_holm_vs_best"]) == pytest.approx(0.033475, abs=1e-6)
    assert float(rows["bitfit"]["avg"]) == pytest.approx(0.785)
    assert float(rows["bitfit"]["avg_rank"]) == 1.5


def test_report_latex_is_booktabs_and_escaped(report_dir: Path) -> None:
    tex = (report_dir / "comparison.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{82.0 $\pm$ 2.0}" in tex
    assert r"80.0 $\pm$ 1.4 &" in tex and r"$^\dagger$: not distinguishable" in tex
    assert r"adjusted p $\geq$ 0.05" in tex
    assert r"macro\_f1" in tex and "macro_f1" not in tex
    assert r"\% params" in tex and r"95\%" in tex
    assert " 95%" not in tex  # an unescaped % would comment out the rest of the caption


def test_report_lists_failures_with_the_first_error_line(report_dir: Path) -> None:
    failures = (report_dir / "failures.md").read_text()
    assert f"| {OOM_RUN} | oom | CUDA out of memory. Tried to allocate 2.00 GiB | no |" in failures
    assert "Traceback" not in failures
    assert "| 1 |" not in failures and "(1)" in failures


def test_report_filters_and_removes_a_stale_failure_list(results_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "failures.md").write_text("stale")
    written = build_report(results_dir, out, filters={"task": "polarity"})
    assert not (out / "failures.md").exists()  # the only failure is a topic run
    assert all(p.parent == out for p in written)
    cells = _table_cells((out / "comparison.md").read_text())
    assert set(cells["lora"]) >= {"polarity"} and "topic" not in cells["lora"]
    assert cells["lora"]["Avg. rank"] == "**1.00**"


def _cost_file(
    path: Path, task: str, medians: dict[str, tuple[float, float]], **fields: object
) -> Path:
    """A `peftbench costs methods --out` file: (step seconds, train RSS rise) per method."""
    rows = {
        m: {"step_p50_s": step, "flops_per_token": 1e6, "achieved_flops_per_s": 1e9,
            "train_peak_bytes": 2e9, "train_rise_bytes": rise, "mfu": None, "peak_dtype": None}
        for m, (step, rise) in medians.items()
    }  # fmt: skip
    result = {"medians": rows, "errors": {}, "device": "cpu", "steps": 20, "repeats": 3,
              "task": task, "model": "minilm-l6", "threads": 1, "load_1min_before": 0.1,
              "measured_at": "2026-12-05T08:00:00Z", **fields}  # fmt: skip
    write_methods(result, path)
    return path


def test_a_clean_cost_run_replaces_the_records_time_and_memory(
    results_dir: Path, tmp_path: Path
) -> None:
    """Runs that shared the cores time each other: the report shows the clean cost run's step
    and training memory instead of the records' train time, throughput and peak memory."""
    costs = [
        _cost_file(tmp_path / "c" / "polarity.json", "polarity",
                   {"lora": (0.2, 30e6), "bitfit": (0.1, 10e6)},
                   isolation="a fresh process per method and round"),
        _cost_file(tmp_path / "c" / "topic.json", "topic", {"lora": (0.4, 50e6)},
                   measured_at="2026-12-07T17:00:00Z"),  # older: no isolation field
    ]  # fmt: skip
    out = tmp_path / "out"
    written = {p.name for p in build_report(results_dir, out, costs=costs)}
    markdown = (out / "comparison.md").read_text()
    cells = _table_cells(markdown)
    assert cells["lora"]["Step (ms)"] == "300"  # mean over tasks of 200 and 400 ms
    assert cells["bitfit"]["Step (ms)"] == "100"  # topic's bitfit was not measured
    assert cells["lora"]["Train mem"] == "40.0 MB" and cells["prompt"]["Train mem"] == "–"
    assert not {"Peak mem", "Train time (s)", "Tokens/s"} & set(cells["lora"])
    assert "clean cost run per task" in markdown and "Peak mem:" not in markdown
    # the footnote says how each file kept its methods apart (a file without the field: one)
    assert "alone in turn, a fresh process per method and round or one process," in markdown
    # files of two days: the caption says their times hold for their day (the pace moves)
    assert "The cost files were measured on 2 days (2026-12-05, 2026-12-07)" in markdown
    assert "Forward (ms)" not in cells["lora"]  # files from before forward times: no column
    rows = json.loads(costs[0].read_text())["medians"]
    rows["lora"] |= {"forward_p50_s": 0.012, "forward_merged_p50_s": 0.010}
    rows["bitfit"] |= {"forward_p50_s": 0.011, "forward_merged_p50_s": None}
    write_methods({**json.loads(costs[0].read_text()), "medians": rows}, costs[0])
    build_report(results_dir, out, costs=costs)
    markdown = (out / "comparison.md").read_text()
    cells = _table_cells(markdown)
    assert (cells["lora"]["Forward (ms)"], cells["bitfit"]["Forward (ms)"]) == ("10.0", "11.0")
    assert "merged where the method folds into the weights" in markdown
    assert {"score_vs_step.png", "score_vs_train_memory.png"} <= written
    assert not {"score_vs_time.png", "score_vs_memory.png"} & written
    with open(out / "comparison.csv", newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert float(rows["lora"]["step_ms_clean"]) == pytest.approx(300)
    assert "step (clean run): 200.0 ms" in (out / "report.html").read_text()  # lora, polarity

    with pytest.raises(CostsFileError, match="both measured polarity on minilm-l6"):
        build_report(results_dir, out, costs=[costs[0], costs[0]])
    (tmp_path / "other.json").write_text('{"medians": {}}')
    with pytest.raises(CostsFileError, match="not a `peftbench costs methods --out` file"):
        build_report(results_dir, out, costs=[tmp_path / "other.json"])
    assert "Step (ms)" in (out / "comparison.md").read_text()  # the good report stays


def test_report_without_successes_says_where_and_what_it_found(tmp_path: Path) -> None:
    for folder, run_id in (
        ("2026-11-23_11-00-00", OOM_RUN),
        ("2026-11-24_08-00-00", LORA_POLARITY_S0),
    ):
        shutil.copy(FIXTURES / folder / f"{run_id}.json", tmp_path / f"{folder}-{run_id}.json")
    with pytest.raises(ValueError) as err:
        build_report(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    assert "oom=1" in message and "success=1" in message and "synthetic" in message
    assert not (tmp_path / "report").exists()


# ------------------------------------------------ convergence, ranks, budgets, repro, HTML


def _history_record(path: Path, *, run_id: str, method: str, seed: int, budget=None, dev=()):
    """A success record whose history has a dev point per (step, elapsed_s, value) in dev."""
    history = [{"step": 1, "train/loss": 0.7, "elapsed_s": 0.1}]
    history += [{"step": s, "dev/accuracy": v, "elapsed_s": e} for s, e, v in dev]
    history.append({"step": 99, "test/accuracy": 0.0})  # the final test row is not a dev point
    experiment = {"task": "polarity", "model": "minilm-l6", "method": method, "seed": seed,
                  "weights": "pretrained", "budget_pct": budget, "sweep_id": "s",
                  "task_version": 1}  # fmt: skip
    metrics = {"primary": {"name": "accuracy", "split": "test", "value": dev[-1][2],
                           "higher_is_better": True}}  # fmt: skip
    _write_record(path, run_id=run_id, experiment=experiment, metrics=metrics, history=history)


def test_convergence_curves_average_seeds_per_step(tmp_path: Path) -> None:
    from analysis.convergence import load_histories, seed_curves

    _history_record(tmp_path / "a.json", run_id="a", method="lora", seed=0,
                    dev=[(2, 1.0, 0.50), (4, 2.0, 0.70)])  # fmt: skip
    _history_record(tmp_path / "b.json", run_id="b", method="lora", seed=1,
                    dev=[(2, 3.0, 0.60), (4, 4.0, 0.90)])  # fmt: skip
    points = load_histories(quality_runs(load_records(tmp_path)))
    assert len(points) == 4  # train-loss and test rows skipped
    curves = seed_curves(points).set_index("step")
    assert curves.loc[2, "mean"] == pytest.approx(0.55)
    assert (curves.loc[4, "min"], curves.loc[4, "max"]) == (0.70, 0.90)
    assert curves.loc[4, "mean"] == pytest.approx(0.80)
    assert curves.loc[2, "elapsed_s"] == pytest.approx(2.0)  # mean of 1.0 and 3.0
    assert curves["n"].tolist() == [2, 2]


def _timed_record(path: Path, method: str, seed: int, dev: list[tuple[int, float, float]]):
    """A success record whose dev rows are (step, train_s, value); elapsed_s is 10 s later."""
    history = [{"step": s, "dev/accuracy": v, "train_s": t, "elapsed_s": t + 10} for s, t, v in dev]
    experiment = {"task": "polarity", "model": "minilm-l6", "method": method, "seed": seed,
                  "weights": "pretrained", "budget_pct": None, "sweep_id": "s",
                  "task_version": 1}  # fmt: skip
    metrics = {"primary": {"name": "accuracy", "split": "test", "value": dev[-1][2],
                           "higher_is_better": True}}  # fmt: skip
    run_id = f"polarity--minilm-l6--{method}--s{seed}"
    _write_record(path, run_id=run_id, experiment=experiment, metrics=metrics, history=history)


def test_time_to_target_is_the_first_hit_of_95_percent_of_full_fine_tuning(
    tmp_path: Path,
) -> None:
    from analysis.convergence import load_histories, time_to_target, write_time_to_target

    # full: best dev 0.80 and 0.90 -> reference 0.85, target 0.95 x 0.85 = 0.8075
    _timed_record(tmp_path / "f0.json", "full", 0, [(2, 1.0, 0.80)])
    _timed_record(tmp_path / "f1.json", "full", 1, [(2, 2.0, 0.90)])
    _timed_record(tmp_path / "l0.json", "lora", 0, [(2, 1.0, 0.70), (4, 2.0, 0.81), (6, 3.0, 0.85)])
    _timed_record(tmp_path / "l1.json", "lora", 1, [(2, 0.5, 0.82)])
    _timed_record(tmp_path / "p0.json", "prompt", 0, [(2, 1.0, 0.50), (4, 2.0, 0.60)])
    runs = quality_runs(load_records(tmp_path))
    table = time_to_target(load_histories(runs)).set_index("method_label")

    assert table["target"].unique() == pytest.approx([0.8075])
    assert table.loc["lora", ["runs", "reached"]].tolist() == [2, 2]
    assert table.loc["lora", "step"] == pytest.approx(3.0)  # steps 4 and 2
    assert table.loc["lora", "train_s"] == pytest.approx(1.25)  # training seconds, not elapsed
    assert table.loc["full", ["reached", "step", "train_s"]].tolist() == [1, 2.0, 2.0]
    assert table.loc["prompt", "reached"] == 0 and math.isnan(table.loc["prompt", "step"])
    half = time_to_target(load_histories(runs), fraction=0.5)
    assert half.loc[0, "target"] == pytest.approx(0.425)

    md, _ = write_time_to_target(runs, tmp_path)
    assert "| polarity | minilm-l6 | lora | 0.8075 | 2/2 | 3 | 1.2 |" in md.read_text()


def test_time_to_target_for_lower_is_better_and_without_full_runs() -> None:
    from analysis.convergence import time_to_target

    points = pd.DataFrame({
        "task": "t", "model": "m", "method_label": ["full", "full", "lora", "lora"],
        "seed": 0, "higher_is_better": False, "step": [1, 2, 1, 2],
        "elapsed_s": 0.0, "train_s": [1.0, 2.0, 1.0, 2.0], "value": [2.0, 0.95, 1.2, 0.99],
    })  # fmt: skip
    table = time_to_target(points).set_index("method_label")  # target 0.95 / 0.95 = 1.0
    assert table.loc["lora", "step"] == 2 and table.loc["full", "step"] == 2
    assert time_to_target(points[points["method_label"] == "lora"]).empty


def test_ranks_per_task_behind_the_average_rank(records: pd.DataFrame) -> None:
    (table,) = build_tables(aggregate(quality_runs(records)))
    assert table.ranks.to_dict() == {
        "polarity": {"bitfit": 2.0, "lora": 1.0, "prompt": 3.0},
        "topic": {"bitfit": 1.0, "lora": 2.0, "prompt": 3.0},
    }


def test_budget_plot_only_when_runs_carry_budgets(tmp_path: Path, report_dir: Path) -> None:
    assert not (report_dir / "budget_matched.png").exists()
    for i, (method, budget, value) in enumerate(
        [("lora", 0.1, 0.70), ("lora", 1.0, 0.80), ("adapter", 0.1, 0.65), ("full", None, 0.85)]
    ):
        _history_record(tmp_path / "results" / f"{i}.json", run_id=f"r{i}", method=method,
                        seed=0, budget=budget, dev=[(2, 1.0, value)])  # fmt: skip
    written = build_report(tmp_path / "results")
    names = {p.name for p in written}
    assert {"budget_matched.png", "budget_matched.svg"} <= names
    cells = _table_cells((tmp_path / "results" / "report" / "comparison.md").read_text())
    assert set(cells) == {"adapter@0.1%", "full", "lora@0.1%", "lora@1%"}


def test_config_hash_is_canonical_sha256() -> None:
    import hashlib

    from analysis.provenance import config_hash

    expected = hashlib.sha256(b'{"a":1,"b":{"c":"\xc3\xa9"}}').hexdigest()  # sorted, compact, UTF-8
    assert config_hash({"b": {"c": "é"}, "a": 1}) == expected


def test_repro_row_from_a_record() -> None:
    from analysis.provenance import repro_row

    record = json.loads((FIXTURES / "2026-11-23_11-00-00" / f"{LORA_POLARITY_S0}.json").read_text())
    record["experiment"]["overrides"] = ["method=lora", "seed=0", "train.note=two words"]
    record["code"]["git_dirty"] = True
    row = repro_row(record)
    assert row.command == "python run.py method=lora seed=0 'train.note=two words'"
    assert row.git == "0123abc (dirty)"
    assert row.packages == "python 3.11.9, torch 2.13.0, transformers 5.23.0, peft 0.21.2"
    assert row.device == "cpu" and row.seed == "0"  # an older record: no CPU identity
    assert row.data == "fingerprint f00d; train 3200 / dev 400 / test 400"
    record["env"] |= {"platform": "Linux-6.18.44-fc-v1300-x86_64",
                      "cpu": {"name": "AMD EPYC", "family": "25", "model": "17"}}  # fmt: skip
    assert repro_row(record).device == (
        "cpu (AMD EPYC, family 25 model 17; Linux-6.18.44-fc-v1300-x86_64)"
    )
    del record["experiment"]["overrides"]
    assert repro_row(record).command == "not recorded"


def test_a_dirty_record_names_the_files_that_differed(tmp_path, monkeypatch) -> None:
    """A write-up edited beside a benchmark run must be told apart from a code change."""
    import subprocess

    import peftbench.config.paths
    from analysis.provenance import repro_row
    from peftbench.records.store import code_info

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for name in ("README.md", "run.py", "z.py"):
        (tmp_path / name).write_text("x\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    monkeypatch.setattr(peftbench.config.paths, "SOURCE_ROOT", tmp_path)
    assert code_info()["git_dirty"] is False and "dirty_paths" not in code_info()

    (tmp_path / "untracked.txt").write_text("new")  # untracked files never count
    (tmp_path / "README.md").write_text("edited")
    (tmp_path / "z.py").write_text("edited")
    code = code_info()
    assert code["git_dirty"] is True
    assert (code["dirty_files"], code["dirty_paths"]) == (2, ["README.md", "z.py"])

    record = json.loads((FIXTURES / "2026-11-23_11-00-00" / f"{LORA_POLARITY_S0}.json").read_text())
    record["code"] |= {"git_dirty": True, "dirty_files": 3, "dirty_paths": ["a.md", "b.md", "c"]}
    assert repro_row(record).git == "0123abc (dirty: a.md, b.md +1 more)"


def test_report_keeps_secrets_out_and_embeds_everything(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "hf_S3cr3tT0k3nValue"
    monkeypatch.setenv("HF_TOKEN", secret)
    path = results_dir / "2026-11-23_11-00-00" / f"{LORA_POLARITY_S0}.json"
    record = json.loads(path.read_text())
    record["experiment"]["overrides"] = ["method=lora", "tracker.api_key=abc123xyz", secret]
    record["config"]["tracker"] = {"api_key": "abc123xyz"}
    path.write_text(json.dumps(record))
    build_report(results_dir)
    out = results_dir / "report"
    for name in ("reproducibility.md", "report.html", "comparison.md"):
        text = (out / name).read_text()
        assert secret not in text and "abc123xyz" not in text, name
    repro = (out / "reproducibility.md").read_text()
    # Scrubbed before shell quoting, so the redaction marker is quoted like any other text.
    assert "`python run.py method=lora 'tracker.api_key=***REDACTED***' '***REDACTED***'`" in repro
    page = (out / "report.html").read_text()
    assert page.count('<table class="comparison"') == 1
    # The inlined plotly.js (not scrubbed: fixed code) holds URL strings and a data URI.
    start = page.index('<script id="plotly-js">')
    page = page[:start] + page[page.index("</script>", start) :]
    assert page.count('src="data:image/png;base64,') == 6
    assert "http://" not in page and "https://" not in page
    assert "<strong>82.0 ± 2.0</strong>" in page and "<td>80.0 ± 1.4</td>" in page
