"""The offline GGUF decoders on real data: SmolLM2-135M and Gemma-3-270M (marked slow).

Each loads from its PyPI asset (dequantized once into the cache, then reused) and trains a few
LoRA steps on Pang & Lee polarity at a short length; the timings are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from peftbench.models.backbones import load_backbone
from peftbench.runner import experiment
from tasks import build_task
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

#: model -> (parameters of the base model with a 2-way head, transformers class)
DECODERS = {
    "smollm2-135m": (134_516_160, "LlamaForSequenceClassification"),
    "gemma3-270m": (268_099_456, "Gemma3TextForSequenceClassification"),
}


def _cfg(model: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"model={model}", *overrides])


@pytest.mark.parametrize("model", DECODERS)
def test_decoder_loads_and_trains_lora_on_polarity(model, tmp_path):
    params, class_name = DECODERS[model]
    cfg = _cfg(model, "task=polarity")
    start = time.perf_counter()
    backbone = load_backbone(cfg.model, build_task(cfg.task))  # dequantizes on first use only
    print(f"\n{model}: load {time.perf_counter() - start:.1f} s")
    assert type(backbone.model).__name__ == class_name and backbone.head_modules == ["score"]
    assert sum(p.numel() for p in backbone.model.parameters()) == params
    del backbone

    cfg = _cfg(
        model,
        "method=lora",
        f"results_dir={tmp_path}",
        "tracker=none",
        "task.max_length=32",
        # 200 dev + 200 test sentences: evaluation dominates a 3-step run on a 2-core CPU
        "task.split.fractions={train:0.9,dev:0.05,test:0.05}",
        "train.batch_size=8",
        "train.max_steps=3",
        "train.eval_every_steps=3",
        "train.log_every_steps=1",
        "train.warmup_steps_excluded=1",
        "instrument.inference=false",
        "data_cache=false",
    )
    summary = experiment.run(cfg)
    assert summary["status"] == "success", summary
    record = json.loads(Path(summary["path"]).read_text())
    cost = record["cost"]
    losses = [row["train/loss"] for row in record["history"] if "train/loss" in row]
    print(
        f"{model}: set-up {cost['setup_time_s']:.1f} s (load, tokenize, lora), "
        f"step p50 {cost['step_time_s']['p50']:.2f} s, train {cost['train_time_s']:.1f} s, "
        f"eval {cost['eval_time_s']:.1f} s, losses {[round(x, 3) for x in losses]}, "
        f"test accuracy {record['metrics']['test']['accuracy']:.3f}"
    )
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, no NaN
    assert record["params"]["base"] == params and record["experiment"]["weights"] == "pretrained"
    assert 0 < record["params"]["trainable_pct"] < 1
