"""Contract tests over every conf/method/*.yaml: a new method YAML is tested with no new code."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, BertConfig

from peftbench.methods import MethodContext, apply_method, load_trainable, save_trainable
from peftbench.methods.adapters import BottleneckAdapter
from tests.conftest import METHOD_YAMLS

CONTEXT = MethodContext(head_modules=["classifier"], peft_task_type="SEQ_CLS", model_type="bert")


def _tiny_classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return AutoModelForSequenceClassification.from_config(config)


def _batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, 50, (4, 12), generator=generator),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }


@pytest.fixture(params=METHOD_YAMLS, ids=lambda p: p.stem)
def method_cfg(request):
    return OmegaConf.load(request.param)


def test_one_step_trains_the_method_and_nothing_else(method_cfg):
    model = apply_method(_tiny_classifier(), method_cfg, CONTEXT)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_trainable <= total
    if method_cfg.kind != "full":
        assert n_trainable < total
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**_batch()).loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"
    assert any("classifier" in n for n in changed), "the task head must train for every method"
    assert changed, "one step changed nothing"


def test_saved_trainable_state_reloads_to_identical_logits(method_cfg, tmp_path):
    model = apply_method(_tiny_classifier(), method_cfg, CONTEXT)
    with torch.no_grad():  # move the trainable state away from its initialisation
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = tmp_path / "state.safetensors"
    assert save_trainable(model, path) == path.stat().st_size > 0
    fresh = apply_method(_tiny_classifier(), method_cfg, CONTEXT).eval()
    load_trainable(fresh, path)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, fresh(**batch).logits)


@pytest.mark.parametrize("bottleneck", [8, 64])
def test_houlsby_parameter_count_matches_the_paper(bottleneck):
    d, layers = 32, 2
    cfg = OmegaConf.create(
        {
            "name": "adapter",
            "kind": "houlsby",
            "lr": 1e-3,
            "bottleneck": bottleneck,
            "activation": "relu",
            "init_std": 1e-2,
        }
    )
    model = apply_method(_tiny_classifier(), cfg, CONTEXT)
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    # Houlsby et al. 2019: per layer 2 adapters of (d*m + m) + (m*d + d) parameters
    assert adapters == layers * 2 * (2 * d * bottleneck + d + bottleneck)
    head = sum(p.numel() for p in model.classifier.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == adapters + head


def test_houlsby_adapter_starts_near_identity():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(32, 8)
    x = torch.randn(4, 32)
    assert torch.allclose(adapter(x), x, atol=0.05)
    assert not torch.equal(adapter(x), x)  # near, not exactly: both projections get gradients


def test_adapters_are_found_in_a_decoder_family():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    model = LlamaForSequenceClassification(config)
    cfg = OmegaConf.create(
        {
            "name": "adapter",
            "kind": "houlsby",
            "lr": 1e-3,
            "bottleneck": 4,
            "activation": "relu",
            "init_std": 1e-2,
        }
    )
    ctx = MethodContext(head_modules=["score"], peft_task_type="SEQ_CLS", model_type="llama")
    model = apply_method(model, cfg, ctx)
    n_adapters = sum(1 for n, _ in model.named_modules() if n.endswith(".adapter"))
    assert n_adapters == 2 * 2  # attention and MLP of each of the 2 layers


def test_unknown_method_kind_names_the_valid_ones():
    cfg = OmegaConf.create({"name": "x", "kind": "houlsbi", "lr": 1e-3})
    with pytest.raises(KeyError, match="Did you mean houlsby"):
        apply_method(_tiny_classifier(), cfg, CONTEXT)
