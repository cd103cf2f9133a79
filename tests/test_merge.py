"""Mergeable methods (the LoRA family, IA3...) fold into the backbone without changing outputs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from peftbench.methods.base import MethodNotApplicable, merge
from tests.conftest import METHOD_YAMLS
from tests.test_methods import _apply, _batch, _contract_cfg

MERGEABLE = [p for p in METHOD_YAMLS if OmegaConf.load(p).get("mergeable")]


def test_the_lora_family_and_ia3_claim_to_be_mergeable():
    names = {p.stem for p in MERGEABLE}
    assert {"lora", "dora", "rslora", "adalora", "loha", "lokr", "ia3"} <= names


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("path", MERGEABLE, ids=lambda p: p.stem)
def test_merged_model_matches_the_unmerged_one(path, family):
    cfg = _contract_cfg(path)  # sized for the tiny models (FourierFT's n)
    model = _apply(cfg, family)
    with torch.no_grad():  # trained-looking state: LoRA's B starts at zero, so move it
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        unmerged = model(**batch).logits
        merged_model = merge(model, cfg)
        merged = merged_model(**batch).logits
    assert not any(p.requires_grad for n, p in merged_model.named_parameters() if "lora" in n)
    assert type(merged_model).__name__.endswith("ForSequenceClassification")
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)


def test_unmergeable_method_refuses_to_merge():
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "prefix"))
    model = _apply(cfg, "bert")
    with pytest.raises(MethodNotApplicable, match="cannot be merged"):
        merge(model, cfg)
