"""task.metric_impl=evaluate: routing to a Hub metric, offline refusals, what the record says.

`evaluate` is not installed and the tests are offline: a fake ``evaluate`` module stands in
(sys.modules), so what is tested is peftbench's side: which metric goes where, the pinned
revision passed through, and the record's ``metrics.implementation``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftbench.config.checks import validate
from peftbench.config.identity import recipe, recipe_hash
from peftbench.errors import ConfigError
from peftbench.runner import experiment
from tasks import build_task

HUB = (
    "task.metric_impl=evaluate",
    "+task.evaluate.path=evaluate-metric/glue",
    "+task.evaluate.config_name=sst2",
    "+task.evaluate.revision=v0.4.6",
    "+task.evaluate.keys={accuracy: acc}",
)
SOURCE = "evaluate-metric/glue (sst2) @ v0.4.6, evaluate 9.9.9"


class FakeMetric:
    def __init__(self, calls: list):
        self.calls = calls

    def compute(self, predictions, references):
        self.calls.append((list(predictions), list(references)))
        # not accuracy: a value the builtin metric cannot give, so routing shows
        return {"acc": 0.25 + 0.5 * (len(predictions) % 2), "other": 1.0}


@pytest.fixture
def fake_evaluate(monkeypatch):
    loads, calls = [], []
    module = types.ModuleType("evaluate")
    module.__version__ = "9.9.9"

    def load(path, config_name=None, **kwargs):
        loads.append((path, config_name, kwargs))
        return FakeMetric(calls)

    module.load = load
    monkeypatch.setitem(sys.modules, "evaluate", module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    return loads, calls


def test_the_hub_metric_scores_what_it_maps_and_the_rest_stays_builtin(compose, fake_evaluate):
    loads, calls = fake_evaluate
    task = build_task(compose(*HUB).task)
    scores = task.compute_metrics([0, 1, 1], [0, 1, 0])
    assert loads == [("evaluate-metric/glue", "sst2", {"revision": "v0.4.6"})]
    assert calls == [([0, 1, 1], [0, 1, 0])]
    assert scores == {"accuracy": 0.75, "macro_f1": pytest.approx(2 / 3)}  # 0.75 is the hub's
    assert task.metric_implementation == {"accuracy": SOURCE, "macro_f1": "builtin"}
    task.compute_metrics([0, 1], [0, 1])
    assert len(loads) == 1  # loaded once per task


def test_the_record_names_the_implementation_of_each_metric(compose, fake_evaluate):
    loads, calls = fake_evaluate
    record = json.loads(Path(experiment.run(compose(*HUB))["path"]).read_text())
    metrics = record["metrics"]
    assert metrics["implementation"] == {"accuracy": SOURCE, "macro_f1": "builtin"}
    n_test = record["data"]["n"]["test"]
    assert metrics["test"]["accuracy"] == 0.25 + 0.5 * (n_test % 2)  # the fake's value
    assert calls and len(loads) == 1
    assert record["experiment"]["recipe"]["task.metric_impl"] == "evaluate"
    assert record["experiment"]["recipe"]["task.evaluate.revision"] == "v0.4.6"
    builtin = json.loads(Path(experiment.run(compose())["path"]).read_text())
    assert builtin["metrics"]["implementation"] == {"accuracy": "builtin", "macro_f1": "builtin"}
    assert builtin["run_id"] != record["run_id"]


def test_offline_or_without_the_package_it_is_a_one_line_error_naming_the_fix(
    compose, fake_evaluate, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cannot run offline.*task.metric_impl=builtin"):
        experiment.run(compose(*HUB))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setitem(sys.modules, "evaluate", None)  # import evaluate -> ImportError
    with pytest.raises(ConfigError, match=r"needs the evaluate package.*pip install '\.\[hub\]'"):
        build_task(compose(*HUB).task).load_metrics()
    with pytest.raises(ConfigError, match="no task.evaluate"):
        build_task(compose("task.metric_impl=evaluate").task).load_metrics()
    with pytest.raises(ConfigError, match=r"task.metric_impl must be one of builtin, evaluate"):
        validate(compose("task.metric_impl=hub"))


def test_every_glue_task_maps_its_metrics_and_pins_a_revision():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.conftest import ROOT

    for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = hydra_compose("config", [f"task={name}"])
        spec = cfg.task.evaluate
        assert spec.path == "evaluate-metric/glue" and spec.revision, name
        assert (
            set(spec["keys"]) <= set(cfg.task.metrics) and cfg.task.primary_metric in spec["keys"]
        )
        # builtin (the default): the Hub spec cannot change a score, so it is not in the id
        config = OmegaConf.to_container(cfg, resolve=True)
        bare = {**config, "task": {k: v for k, v in config["task"].items() if k != "evaluate"}}
        assert recipe_hash(recipe(bare)) == recipe_hash(recipe(config)), name
