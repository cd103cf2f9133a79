"""Each method as its paper defines it (issue 16): placements, counts, defaults, schedules.

Every test here fails on the behaviour the issue reported (named in each docstring).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig

from peftbench.measure.instrument import Clock, StepTimer
from peftbench.methods import MethodContext, apply_method
from peftbench.methods.base import (
    SELECT_FROM_ATTR,
    backbone_size,
    count_trainable,
    select_from_step,
)
from peftbench.methods.budget import TOLERANCE, fit_budget
from peftbench.methods.hybrid import GatedAdapter, GatedLoRA
from peftbench.runner.train import param_groups, train

METHODS = Path(__file__).resolve().parent.parent / "conf" / "method"
HEAD = ["classifier"]


def _yaml(name: str):
    return OmegaConf.load(METHODS / f"{name}.yaml")


def _bert(hidden: int = 32, intermediate: int = 64, layers: int = 2, heads: int = 4, **extra):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=32,
        num_labels=2,
        **extra,
    )
    return AutoModelForSequenceClassification.from_config(config)


def _ctx(total_steps: int | None = 10) -> MethodContext:
    return MethodContext(HEAD, "SEQ_CLS", "bert", total_steps=total_steps)


def _inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, 50, (4, 12), generator=generator),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
    }


# -- IA3 ----------------------------------------------------------------------------------------
def test_ia3_on_minilm_l6_trains_exactly_the_papers_vectors():
    """peft's BERT default also rescaled attention.output.dense: 2,688 per layer, not 2,304."""
    model = apply_method(
        _bert(hidden=384, intermediate=1536, layers=6, heads=12), _yaml("ia3"), _ctx()
    )
    method, head = count_trainable(model, HEAD)
    assert method == 6 * (384 + 384 + 1536)  # l_k, l_v, l_ff per layer (Liu et al. 2022)
    assert head == 384 * 2 + 2
    scaled = [n for n, p in model.named_parameters() if p.requires_grad and "ia3_l" in n]
    assert not [n for n in scaled if "attention.output" in n]
    ffn = [p for n, p in model.named_parameters() if "ia3_l" in n and ".output.dense" in n]
    assert all(p.numel() == 1536 for p in ffn) and len(ffn) == 6  # the FFN's input: d_ff


# -- LoRA family defaults -----------------------------------------------------------------------
def _scaling(model: nn.Module) -> set[float]:
    return {
        float(m.scaling["default"])
        for m in model.modules()
        if isinstance(getattr(m, "scaling", None), dict)
    }


def test_lora_defaults_are_the_cited_roberta_base_setting():
    """Hu et al. Table 9 (RoBERTa-base): r=8, alpha=8, lr 5e-4; the YAML had alpha=16."""
    cfg = _yaml("lora")
    assert (cfg.peft.r, cfg.peft.lora_alpha, cfg.lr) == (8, 8, 5e-4)
    assert _scaling(apply_method(_bert(), cfg, _ctx())) == {1.0}


def test_rslora_takes_loras_step_at_the_default_rank():
    """At equal alpha rsLoRA's scale is sqrt(r)x LoRA's (2.8x at r=8): the gap was step size."""
    lora = _scaling(apply_method(_bert(), _yaml("lora"), _ctx()))
    rslora = _scaling(apply_method(_bert(), _yaml("rslora"), _ctx()))
    assert len(lora) == len(rslora) == 1
    assert rslora.pop() == pytest.approx(lora.pop())
    cfg = _yaml("rslora")
    cfg.peft.r = 32  # away from the default rank the rules differ: alpha/sqrt(r) vs alpha/r
    (scale,) = _scaling(apply_method(_bert(), cfg, _ctx()))
    assert scale == pytest.approx(math.sqrt(8 / 32))


@pytest.mark.parametrize("name", ["dora", "loha", "lokr"])
def test_methods_that_borrow_loras_setting_borrow_the_cited_alpha(name):
    cfg = _yaml(name)
    assert (cfg.peft.r, cfg.peft.get("lora_alpha", cfg.peft.get("alpha"))) == (8, 8)


# -- weight decay -------------------------------------------------------------------------------
def _decayed(model: nn.Module) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


def test_weight_decay_spares_biases_and_layer_norms():
    """Decay 0.01 applied to every trainable tensor, pulling BitFit's biases toward zero."""
    decay, no_decay = _decayed(apply_method(_bert(), _yaml("full"), _ctx()))
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert {n for n in decay if n.endswith("bias") or "LayerNorm" in n} == set()
    assert "classifier.weight" in decay and "bert.encoder.layer.0.output.dense.weight" in decay
    bitfit_decay, _ = _decayed(apply_method(_bert(), _yaml("bitfit"), _ctx()))
    assert bitfit_decay == {"classifier.weight"}  # only the head's weight matrix decays


def test_weight_decay_spares_prompt_embeddings_and_trains_each_tensor_once():
    model = apply_method(_bert(), _yaml("prompt"), _ctx())
    decay, no_decay = _decayed(model)
    assert any("prompt_encoder" in n and "embedding" in n for n in no_decay)
    assert not any("prompt_encoder" in n for n in decay)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


# -- Pfeiffer and Houlsby -----------------------------------------------------------------------
def _big_adapter_cfg(kind: str, bottleneck: int = 8):
    return OmegaConf.create(
        {
            "name": kind,
            "kind": kind,
            "lr": 1e-3,
            "bottleneck": bottleneck,
            "activation": "relu",
            "init_std": 0.5,
        }  # fmt: skip
    )  # a large init, so the adapter visibly changes the output


def test_pfeiffer_is_the_adapterfusion_placement_with_the_original_layer_norm():
    """It sat in Houlsby's FFN slot (on the dense output, before the residual and the LN)."""
    base = _bert().eval()
    model = apply_method(_bert(), _big_adapter_cfg("pfeiffer"), _ctx()).eval()
    block = model.bert.encoder.layer[0].output
    inter, x = torch.randn(4, 5, 64), torch.randn(4, 5, 32)
    with torch.no_grad():
        h = block.dense(inter)  # eval: dropout is the identity
        normed = block.LayerNorm(h + x)
        expected = block.LayerNorm(h + x + block.adapter.branch(normed))
        assert torch.allclose(block(inter, x), expected, atol=1e-6)
        assert not torch.allclose(block(inter, x), normed, atol=1e-3)  # the adapter acts
    # no LayerNorm of its own: the per-layer count stays 2*d*m + d + m, the LN is the model's
    method, _ = count_trainable(model, HEAD)
    assert method == 2 * (2 * 32 * 8 + 32 + 8)
    assert sum(1 for n, _ in model.named_modules() if "LayerNorm" in n) == sum(
        1 for n, _ in base.named_modules() if "LayerNorm" in n
    )


def test_houlsby_trains_the_layer_norms_and_reads_the_sub_layer_after_dropout():
    """The LayerNorms were frozen, and the adapter read the output before the dropout."""
    model = apply_method(_bert(hidden_dropout_prob=0.5), _big_adapter_cfg("houlsby"), _ctx())
    for layer in model.bert.encoder.layer:
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            assert all(p.requires_grad for p in norm.parameters())
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    seen: dict[str, torch.Tensor] = {}
    block = model.bert.encoder.layer[0].output
    block.dropout.register_forward_pre_hook(lambda m, a: seen.__setitem__("dense", a[0]))
    block.dropout.adapter.down.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("adapter_in", a[0])
    )
    model.train()
    torch.manual_seed(0)
    model(**_inputs())
    dropped = seen["adapter_in"]
    assert (dropped == 0).float().mean() > 0.3  # dropout zeroed about half of the entries
    kept = dropped != 0
    assert torch.allclose(dropped[kept], 2 * seen["dense"][kept])  # survivors scaled by 1/(1-p)


# -- hybrids ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mam", "unipelt"])
def test_hybrids_train_count_and_save_the_head_once(name):
    """peft's frozen original_module of the head was switched back on: the head twice."""
    model = apply_method(_bert(), _yaml(name), _ctx())
    _, head = count_trainable(model, HEAD)
    assert head == 32 * 2 + 2
    originals = [n for n, p in model.named_parameters() if "original_module" in n]
    assert originals and not any(
        p.requires_grad for n, p in model.named_parameters() if "original_module" in n
    )


def test_unipelt_gates_once_per_example_from_the_mean_over_the_sequence():
    """The gate was computed per token (round two: the mean of per-token sigmoids, issue 34)."""
    torch.manual_seed(0)
    lora = GatedLoRA(32, 32, rank=4)
    nn.init.normal_(lora.lora_B.weight)
    x = torch.randn(3, 7, 32)
    gate = torch.sigmoid(lora.gate(x)).mean(dim=1, keepdim=True)
    assert torch.allclose(lora(x), gate * lora.lora_B(lora.lora_A(x)), atol=1e-6)
    adapter = GatedAdapter(32, 8, init_std=0.5)
    branch = adapter.up(adapter.act(adapter.down(x)))
    gate = torch.sigmoid(adapter.gate(x)).mean(dim=1, keepdim=True)
    assert torch.allclose(adapter(x), x + gate * branch, atol=1e-6)


# -- budget matching: Compacter -----------------------------------------------------------------
def test_compacter_can_be_budget_matched():
    """The search started at bottleneck 1 (not divisible by n=4) and gave up."""
    model = _bert()
    cfg = _yaml("compacter")
    cfg.budget_pct = 6.0  # the trained norms alone are 1% of this tiny model
    sized, facts = fit_budget(model, cfg, _ctx())
    assert sized.bottleneck % sized.phm_dim == 0 and facts["value"] == sized.bottleneck
    reached, _ = count_trainable(apply_method(_bert(), sized, _ctx()), HEAD)
    target = 0.06 * backbone_size(model, HEAD)
    assert abs(reached - target) <= TOLERANCE * target


# -- AdaLoRA: dev selection waits for the final budget ------------------------------------------
def test_adalora_selection_starts_once_its_final_budget_is_reached():
    model = apply_method(_bert(), _yaml("adalora"), _ctx(total_steps=10))
    # tinit 1, tfinal 4: peft masks to the final rank pattern at 0-based step 6 (1-based 7)
    assert select_from_step(model) == 7
    assert select_from_step(_bert()) == 0  # every other method: any step may be selected


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=((self.w * input_ids) ** 2).mean())


class _Loader(list):
    batch_sampler = None


class _WorseEveryTime:
    """A dev metric that only gets worse: plain selection would keep the first evaluation."""

    primary_metric, higher_is_better = "score", True

    def __init__(self) -> None:
        self.calls = 0

    def predict_batch(self, model, batch) -> list:
        return [0]

    def references(self, batch) -> list:
        return [0]

    def compute_metrics(self, preds, refs) -> dict:
        self.calls += 1
        return {"score": -float(self.calls)}


@pytest.mark.parametrize(("select_from", "best"), [(None, 1), (3, 3)])
def test_the_loop_selects_only_from_the_methods_first_selectable_step(select_from, best):
    """A best-dev pick before AdaLoRA's final budget restored a model with too many ranks."""
    model = _Toy()
    if select_from is not None:
        setattr(model, SELECT_FROM_ATTR, select_from)
    cfg = OmegaConf.create(
        {
            "max_steps": 4,
            "epochs": 1,
            "warmup_ratio": 0.0,
            "eval_every_steps": 1,
            "log_every_steps": 1,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
        }  # fmt: skip
    )
    loader = _Loader([{"input_ids": torch.ones(2)}] * 4)
    result = train(
        model, train_loader=loader, dev_loader=loader, task=_WorseEveryTime(), cfg=cfg,
        lr=0.1, device=torch.device("cpu"), timer=StepTimer(0, torch.device("cpu")),
        eval_clock=Clock(), log=lambda row: None,
    )  # fmt: skip
    assert result.best_step == best


# -- prompt tuning initialisation ---------------------------------------------------------------
def test_prompt_tuning_starts_from_vocabulary_embeddings():
    """Prompts were N(0, 1) noise (peft's RANDOM), not embeddings (Lester et al. 2021)."""
    model = apply_method(_bert(), _yaml("prompt"), _ctx())
    prompts = model.prompt_encoder["default"].embedding.weight.detach()
    vocab = model.base_model.bert.embeddings.word_embeddings.weight.detach()
    assert (prompts[:, None, :] == vocab[None, :, :]).all(dim=-1).any(dim=1).all()
