"""Budget matching: ``method.budget_pct`` sizes a method to a share of the backbone."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, BertConfig

from peftbench.methods import MethodContext, apply_method
from peftbench.methods.base import MethodNotApplicable, backbone_size, count_trainable
from peftbench.methods.budget import TOLERANCE, fit_budget
from tests.conftest import METHOD_YAMLS


def _model() -> torch.nn.Module:
    """A 4-layer, width-64 BERT: one unit of rank or width is about 0.7% of it, so budgets of a
    few percent are reachable within the 10% tolerance."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=2,
    )
    return AutoModelForSequenceClassification.from_config(config)


def _batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, 50, (4, 12), generator=generator),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }


CONTEXT = MethodContext(
    head_modules=["classifier"],
    peft_task_type="SEQ_CLS",
    model_type="bert",
    calibration_batches=lambda n: [_batch(s) for s in range(n)],
    total_steps=10,
)


def _cfg(name: str, budget_pct: float | None):
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == name))
    cfg.budget_pct = budget_pct
    if name == "fisher_mask":
        cfg.calibration_examples = 4
    return cfg


@pytest.mark.parametrize(
    ("name", "budget_pct", "knob"),
    [
        ("lora", 3.0, "peft.r"),
        ("lora", 5.0, "peft.r"),
        ("adapter", 5.0, "bottleneck"),
        ("prefix", 3.0, "peft.num_virtual_tokens"),
        ("fisher_mask", 0.5, "density_pct"),
    ],
)
def test_sized_method_lands_within_tolerance_of_the_budget(name, budget_pct, knob):
    model = _model()
    base = backbone_size(model, CONTEXT.head_modules)
    sized, facts = fit_budget(model, _cfg(name, budget_pct), CONTEXT)
    assert facts["knob"] == knob and OmegaConf.select(sized, knob) == facts["value"]
    adapted = apply_method(_model(), sized, CONTEXT)
    method, head = count_trainable(adapted, CONTEXT.head_modules)
    target = budget_pct / 100 * base
    assert abs(method - target) <= TOLERANCE * target
    assert head == sum(p.numel() for p in adapted.parameters() if p.requires_grad) - method
    assert facts["reached_pct"] == pytest.approx(100 * method / base)


def test_bigger_budget_gives_a_bigger_knob():
    small, _ = fit_budget(_model(), _cfg("lora", 3.0), CONTEXT)
    large, _ = fit_budget(_model(), _cfg("lora", 5.0), CONTEXT)
    assert large.peft.r > small.peft.r


def test_lora_rank_matches_the_closed_form():
    # LoRA on query and value: per layer 2 * r * (d + d) parameters, so r = budget / (4 L d).
    sized, _ = fit_budget(_model(), _cfg("lora", 2.0), CONTEXT)
    base = backbone_size(_model(), ["classifier"])
    assert sized.peft.r == round(0.02 * base / (4 * 4 * 64))


@pytest.mark.parametrize("name", ["ia3", "bitfit", "linear", "full", "boft", "oft"])
def test_methods_without_a_size_knob_say_they_cannot_be_sized(name):
    with pytest.raises(MethodNotApplicable, match=rf"'{name}' has no size knob"):
        fit_budget(_model(), _cfg(name, 0.5), CONTEXT)


def test_unreachable_budget_is_refused_with_the_closest_size():
    # one whole layer is far more than 0.5% of the backbone
    with pytest.raises(MethodNotApplicable, match=r"cannot reach budget_pct=0.5.*closest k="):
        fit_budget(_model(), _cfg("last_layers", 0.5), CONTEXT)


def test_no_budget_leaves_the_config_unchanged():
    cfg = _cfg("lora", None)
    assert fit_budget(_model(), cfg, CONTEXT) == (cfg, None)


def test_run_record_keeps_the_budget_and_what_was_reached(compose):
    import json
    from pathlib import Path

    from peftbench.runner import experiment

    summary = experiment.run(compose("method=lora", "method.budget_pct=5"))
    record = json.loads(Path(summary["path"]).read_text())
    assert record["status"] == "success", record.get("error")
    budget = record["params"]["budget"]
    assert budget["requested_pct"] == 5.0 and budget["knob"] == "peft.r"
    assert abs(budget["reached_pct"] - 5.0) <= TOLERANCE * 5.0
    reached = budget["reached_pct"] / 100 * budget["base"]
    assert record["params"]["trainable"] == round(reached) + record["params"]["head"]
