"""task.train_size: a stratified, nested, per-seed subset of train; dev and test untouched."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftbench.config.checks import validate
from peftbench.config.identity import recipe, recipe_hash
from peftbench.errors import ConfigError
from peftbench.runner import experiment
from tasks import build_task
from tasks.splits import nested_subset, train_size_count


def _rows(n_pos: int = 300, n_neg: int = 100) -> list[dict]:
    pos = [{"text": f"good sentence {i}", "label": 1} for i in range(n_pos)]
    neg = [{"text": f"bad sentence {i}", "label": 0} for i in range(n_neg)]
    return pos + neg


def _subset(rows, size, seed=0):
    return nested_subset(
        rows, size, seed=seed, salt="s", text_key="text", stratum=lambda r: r["label"]
    )


def _texts(rows) -> list[str]:
    return [r["text"] for r in rows]


def test_sizes_are_nested_for_one_seed_and_differ_between_seeds():
    rows = _rows()
    sizes = [1, 7, 40, 100, 250, 399]
    subsets = [set(_texts(_subset(rows, n))) for n in sizes]
    assert [len(s) for s in subsets] == sizes
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert small < large
    assert _subset(rows, 100) == _subset(rows, 100)  # deterministic
    assert set(_texts(_subset(rows, 100, seed=1))) != subsets[3]


def test_every_prefix_keeps_the_label_shares_within_one_example():
    rows = _rows()  # 3:1
    for n in range(1, len(rows) + 1, 13):
        counts = Counter(r["label"] for r in _subset(rows, n))
        assert abs(counts[1] - 0.75 * n) <= 1 and abs(counts[0] - 0.25 * n) <= 1, (n, counts)


def test_the_subset_keeps_input_order_and_all_rows_at_full_size():
    rows = _rows()
    picked = _subset(rows, 50)
    positions = [rows.index(r) for r in picked]
    assert positions == sorted(positions)
    assert _subset(rows, 400) == rows and _subset(rows, 10_000) == rows


def test_a_fraction_is_rounded_and_at_least_one_and_an_int_is_a_count():
    assert train_size_count(0.25, 64) == 16
    assert train_size_count(0.001, 64) == 1
    assert train_size_count(1.0, 64) == 64
    assert train_size_count(10, 64) == 10


def test_train_is_cut_dev_and_test_are_not(compose):
    whole = build_task(compose().task)
    cut = build_task(compose("task.train_size=16").task, seed=3)
    assert cut.splits["dev"] == whole.splits["dev"] and cut.splits["test"] == whole.splits["test"]
    assert len(cut.splits["train"]) == 16
    assert all(row in whole.splits["train"] for row in cut.splits["train"])
    labels = Counter(row["label"] for row in cut.splits["train"])
    whole_labels = Counter(row["label"] for row in whole.splits["train"])
    share = whole_labels[1] / sum(whole_labels.values())
    assert abs(labels[1] - 16 * share) <= 1
    quarter = build_task(compose("task.train_size=0.25").task, seed=3)
    assert len(quarter.splits["train"]) == round(0.25 * len(whole.splits["train"]))
    assert cut.fingerprint != whole.fingerprint  # the data cache keys on it


def test_token_classification_keeps_the_share_of_sentences_with_an_entity():
    from tasks.token_classification import TokenClassificationTask

    cfg = {"name": "t", "version": 1, "labels": ["O", "B-X", "I-X"]}
    task = TokenClassificationTask(OmegaConf.create(cfg))
    assert task.train_stratum({"tags": [0, 0, 1, 2]}) is True
    assert task.train_stratum({"tags": [0, 0]}) is False


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "0.0", "true"])
def test_a_bad_train_size_is_a_one_line_config_error(compose, value):
    with pytest.raises(ConfigError, match=r"task.train_size must be an integer >= 1"):
        validate(compose(f"task.train_size={value}"))


def test_a_train_size_above_the_train_split_is_refused_before_loading(compose, tmp_path):
    with pytest.raises(ConfigError, match=r"task.train_size=1000 exceeds the 64 examples"):
        experiment.run(compose("task.train_size=1000"))
    assert not list((tmp_path / "results").rglob("*.json"))  # no record


def test_the_record_says_what_was_asked_and_what_was_used(compose):
    summary = experiment.run(compose("task.train_size=16", "seed=1"))
    record = json.loads(Path(summary["path"]).read_text())
    data = record["data"]
    assert data["train_size_requested"] == 16 and data["n"]["train"] == 16
    assert data["n_train_full"] == 64 and data["n"]["dev"] == 8 and data["n"]["test"] == 8
    assert record["experiment"]["recipe"]["task.train_size"] == 16
    whole = json.loads(Path(experiment.run(compose("seed=1"))["path"]).read_text())
    assert whole["run_id"] != record["run_id"]
    assert whole["data"]["train_size_requested"] is None and whole["data"]["n"]["train"] == 64


def _hash(compose, *overrides):
    return recipe_hash(recipe(OmegaConf.to_container(compose(*overrides), resolve=True)))


def test_the_default_train_size_leaves_every_earlier_run_id_alone(compose):
    config = OmegaConf.to_container(compose(), resolve=True)
    before = {**config, "task": {k: v for k, v in config["task"].items()
                                 if k not in ("train_size", "metric_impl")}}  # fmt: skip
    assert recipe_hash(recipe(before)) == recipe_hash(recipe(config))
    assert _hash(compose, "task.train_size=1.0") == _hash(compose)  # the whole split
    assert _hash(compose, "task.train_size=1") != _hash(compose)  # one example
    assert _hash(compose, "task.train_size=100") != _hash(compose, "task.train_size=400")


def test_the_low_resource_preset_sweeps_sizes_methods_and_seeds():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from peftbench.config.precheck import check_command_line
    from peftbench.launch.callbacks import sweep_size
    from tests.conftest import ROOT

    check_command_line(["-m", "+experiment=low-resource"], ROOT / "conf")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", ["+experiment=low-resource"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.task.name == "polarity" and params["task.train_size"] == "100,400,1600"
    assert params.seed == "0,1,2"
    assert sweep_size([f"{k}={v}" for k, v in params.items()]) == 3 * 4 * 3


# ------------------------------------------------------------------------------ the report view

FIXTURE = Path(__file__).parent / "fixtures" / "records" / "2026-11-23_11-00-00"
# method -> train_size -> (n_train, score per seed 0, 1, 2)
LOW_RESOURCE = {
    "lora": {100: (100, [0.60, 0.62, 0.64]), 400: (400, [0.70, 0.71, 0.72]), None: (3200, [0.80])},
    "full": {100: (100, [0.50, 0.56, 0.62]), 400: (400, [0.75, 0.75, 0.75])},
}


def _low_resource_records(results: Path) -> None:
    base = json.loads((FIXTURE / "polarity--minilm-l6--lora--s0.json").read_text())
    for method, sizes in LOW_RESOURCE.items():
        for size, (n_train, scores) in sizes.items():
            for seed, score in enumerate(scores):
                values = {"method.name": method, "method.lr": 1e-3, "harness_version": 2}
                if size is not None:
                    values["task.train_size"] = size
                hash_ = recipe_hash(values)
                run = f"polarity--minilm-l6--{method}--s{seed}--{hash_}"
                record = json.loads(json.dumps(base))
                record.update(schema_version=2, run_id=run)
                record["experiment"].update(
                    method=method, seed=seed, recipe=values, recipe_hash=hash_
                )
                record["data"].update(train_size_requested=size, n={"train": n_train})
                record["metrics"]["primary"]["value"] = score
                (results / f"{run}.json").write_text(json.dumps(record))


def test_the_report_draws_score_against_training_size_per_method(tmp_path):
    from analysis.frame import load_records, quality_runs
    from analysis.plots import train_size_curves
    from analysis.report import build_report

    results = tmp_path / "results"
    results.mkdir()
    _low_resource_records(results)
    curves = train_size_curves(quality_runs(load_records(results)))
    points = {(c, n): (m, lo, hi) for c, n, m, lo, hi in curves[
        ["curve", "n_train", "mean", "ci_low", "ci_high"]].itertuples(index=False)}  # fmt: skip
    assert set(points) == {("lora", 100), ("lora", 400), ("lora", 3200), ("full", 100),
                           ("full", 400)}  # fmt: skip
    # by hand: lora at 100 = 0.62 -/+ t(0.975, 2) * 0.02 / sqrt(3) = 0.62 -/+ 0.049683
    mean, low, high = points[("lora", 100)]
    assert mean == pytest.approx(0.62) and low == pytest.approx(0.570317, abs=1e-6)
    assert high == pytest.approx(0.669683, abs=1e-6)
    assert points[("full", 400)] == pytest.approx((0.75, 0.75, 0.75))  # no spread
    assert points[("lora", 3200)][0] == 0.80 and math.isnan(points[("lora", 3200)][1])
    written = {p.name for p in build_report(results)}
    assert {"score_vs_train_size.png", "score_vs_train_size.svg"} <= written
    table = (results / "report" / "comparison.md").read_text()
    assert "lora (train_size=100)" in table and "full (train_size=400)" in table
    assert "Score vs training examples" in (results / "report" / "report.html").read_text()


def test_no_training_size_plot_when_every_run_used_one_size(tmp_path):
    from analysis.report import build_report

    results = tmp_path / "results"
    results.mkdir()
    _low_resource_records(results)
    for path in results.glob("*.json"):
        if json.loads(path.read_text())["data"]["train_size_requested"] != 400:
            path.unlink()
    assert not [p for p in build_report(results) if p.stem == "score_vs_train_size"]
