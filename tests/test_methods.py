"""Contract tests over every conf/method/*.yaml x model family: a new method YAML is tested
with no new code. Plus the native adapters' parameter counts against their papers' formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    Gemma3TextConfig,
    LlamaConfig,
    PretrainedConfig,
    T5Config,
)

from peftbench.methods import MethodContext, apply_method, load_trainable, save_trainable
from peftbench.methods.adapters import BottleneckAdapter
from peftbench.methods.base import MethodNotApplicable, count_trainable, step_hook
from tests.conftest import METHOD_YAMLS


class Family(NamedTuple):
    config: Callable[[], PretrainedConfig]
    head: str | None  # the task head module; None: the LM head writes the output
    auto_class: type = AutoModelForSequenceClassification
    peft_task_type: str = "SEQ_CLS"
    labels: str = "class"  # class (one per text), tokens (one per token), target or lm (text)


def _bert() -> BertConfig:
    return BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )


def _llama() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        num_labels=2,
    )


#: Model families with the heads peftbench gives them, per task kind. Hidden 32, 2 layers each.
FAMILIES = {
    "bert": Family(_bert, "classifier"),
    "llama": Family(_llama, "score"),
    "gemma3": Family(  # Gemma 3 text: sandwich norms, GQA, sliding-window layers; no bias terms
        lambda: Gemma3TextConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=8,
            pad_token_id=0,
            num_labels=2,
        ),
        "score",
    ),
    # T5 classifies text-to-text (tasks/classification.py) and translates: its seq2seq LM
    "t5": Family(
        lambda: T5Config(
            vocab_size=50,
            d_model=32,
            d_kv=8,
            num_heads=4,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            decoder_start_token_id=0,
            pad_token_id=0,
        ),
        None,
        AutoModelForSeq2SeqLM,
        "SEQ_2_SEQ_LM",
        "target",
    ),
    # NER (token classification) and decoder-only translation (causal LM, prompt + target)
    "bert-ner": Family(_bert, "classifier", AutoModelForTokenClassification, "TOKEN_CLS", "tokens"),
    "llama-lm": Family(_llama, None, AutoModelForCausalLM, "CAUSAL_LM", "lm"),
}
TOTAL_STEPS = 10


def _tiny_classifier(family: str = "bert", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[family].auto_class.from_config(FAMILIES[family].config())


def _batch(seed: int = 0, family: str = "bert") -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 50, (4, 12), generator=generator)
    classes = torch.tensor([0, 1, 0, 1])
    kind = FAMILIES[family].labels
    if kind == "tokens":  # a tag per token, the last three ignored (padding, sub-words)
        labels = torch.randint(0, 2, (4, 12), generator=generator)
        labels[:, -3:] = -100
    elif kind == "target":  # text-to-text: a label "word" of one token, then eos
        labels = torch.stack([classes + 5, torch.ones(4, dtype=torch.long)], dim=1)
    elif kind == "lm":  # prompt + target: the loss is on the target tokens only
        labels = input_ids.clone()
        labels[:, :6] = -100
    else:
        labels = classes
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": labels,
    }


def _heads(family: str) -> list[str]:
    head = FAMILIES[family].head
    return [head] if head else []


def _context(family: str = "bert") -> MethodContext:
    return MethodContext(
        head_modules=_heads(family),
        peft_task_type=FAMILIES[family].peft_task_type,
        model_type=FAMILIES[family].config().model_type,
        calibration_batches=lambda n: [_batch(seed, family) for seed in range(n)],
        total_steps=TOTAL_STEPS,
    )


CONTEXT = _context("bert")


def _apply(cfg, family: str, seed: int = 0) -> torch.nn.Module:
    """Applies the method; a documented refusal (e.g. BitFit without biases) skips the case."""
    try:
        return apply_method(_tiny_classifier(family, seed), cfg, _context(family))
    except MethodNotApplicable as refusal:
        pytest.skip(f"refused: {refusal}")


@pytest.fixture(params=METHOD_YAMLS, ids=lambda p: p.stem)
def method_cfg(request):
    return OmegaConf.load(request.param)


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


def test_one_step_trains_the_method_and_nothing_else(method_cfg, family):
    model = _apply(method_cfg, family)
    head = FAMILIES[family].head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_trainable <= total
    if method_cfg.kind == "full":
        assert n_trainable == total
    else:
        assert n_trainable < total
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**_batch(family=family)).loss.backward()
    optimizer.step()
    if (hook := step_hook(model)) is not None:
        hook(0)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed <= trainable, f"frozen parameters moved: {sorted(changed - trainable)[:3]}"
    in_head = {n for n in changed if head in n.split(".")}
    if head is not None:
        assert in_head, "the task head must train for every method"
    assert changed - in_head or method_cfg.kind == "linear", (
        "the method's own parameters did not move"
    )


def test_saved_trainable_state_reloads_to_identical_logits(method_cfg, family, tmp_path):
    model = _apply(method_cfg, family)
    with torch.no_grad():  # move the trainable state away from its initialisation
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = tmp_path / "state.safetensors"
    assert save_trainable(model, path) == path.stat().st_size > 0
    fresh = _apply(method_cfg, family).eval()
    load_trainable(fresh, path)
    batch = _batch(family=family)  # a seq2seq LM reads its decoder inputs off the labels
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, fresh(**batch).logits)


def test_every_method_yaml_cites_a_paper_and_declares_its_size_knob(method_cfg):
    text = (METHOD_YAMLS[[p.stem for p in METHOD_YAMLS].index(method_cfg.name)]).read_text()
    assert text.startswith("#") and any(str(year) in text for year in range(2018, 2026))
    assert "lr" in method_cfg and "budget_pct" in method_cfg and "budget_knob" in method_cfg
    if method_cfg.budget_knob:
        assert OmegaConf.select(method_cfg, method_cfg.budget_knob) is not None


def _adapter_cfg(kind: str, bottleneck: int, **extra) -> OmegaConf:
    return OmegaConf.create(
        {
            "name": kind,
            "kind": kind,
            "lr": 1e-3,
            "bottleneck": bottleneck,
            "activation": "relu",
            "init_std": 1e-2,
            **extra,
        }
    )


def _adapter_params(model: torch.nn.Module) -> int:
    method, _ = count_trainable(model, ["classifier"])
    return method


@pytest.mark.parametrize("bottleneck", [8, 64])
def test_houlsby_parameter_count_matches_the_paper(bottleneck):
    d, layers = 32, 2
    model = apply_method(_tiny_classifier(), _adapter_cfg("houlsby", bottleneck), CONTEXT)
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    # Houlsby et al. 2019: per layer 2 adapters of (d*m + m) + (m*d + d) parameters
    assert adapters == layers * 2 * (2 * d * bottleneck + d + bottleneck)
    head = sum(p.numel() for p in model.classifier.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == adapters + head + layers * 2 * 2 * d  # + the 2 LayerNorms per layer


@pytest.mark.parametrize("bottleneck", [8, 24])
def test_pfeiffer_parameter_count_matches_the_paper(bottleneck):
    d, layers = 32, 2
    model = apply_method(_tiny_classifier(), _adapter_cfg("pfeiffer", bottleneck), CONTEXT)
    # Pfeiffer et al. 2021: one adapter per layer, after the FFN: 2*d*m + d + m
    assert _adapter_params(model) == layers * (2 * d * bottleneck + d + bottleneck)
    assert sum(1 for n, _ in model.named_modules() if n.endswith("output.adapter")) == 2


@pytest.mark.parametrize("bottleneck", [8, 64])
def test_parallel_adapter_parameter_count_matches_the_paper(bottleneck):
    d, layers = 32, 2
    cfg = _adapter_cfg("parallel_adapter", bottleneck, scale=4.0)
    model = apply_method(_tiny_classifier(), cfg, CONTEXT)
    # He et al. 2022: one parallel adapter per FFN block: W_down (d x m) + b + W_up (m x d) + b
    assert _adapter_params(model) == layers * (2 * d * bottleneck + d + bottleneck)


@pytest.mark.parametrize(("n", "bottleneck"), [(4, 8), (2, 16)])
def test_compacter_parameter_count_matches_the_paper(n, bottleneck):
    d, layers = 32, 2
    cfg = _adapter_cfg("compacter", bottleneck, phm_dim=n, phm_rank=1)
    model = apply_method(_tiny_classifier(), cfg, CONTEXT)
    # Mahabadi et al. 2021: rank-1 PHM layer d->m has n*(d/n + m/n) = d + m factor entries;
    # 4 PHM layers per transformer layer (2 adapters x down/up) -> 4L(d + m), plus the shared
    # n^3 rule A and the biases (m + d per adapter).
    expected = 4 * layers * (d + bottleneck) + n**3 + 2 * layers * (d + bottleneck)
    assert _adapter_params(model) == expected


def test_phm_layer_is_a_sum_of_kronecker_products():
    from peftbench.methods.adapters import PHMLinear

    torch.manual_seed(0)
    rule = torch.nn.Parameter(torch.randn(2, 2, 2))
    layer = PHMLinear(rule, 4, 6, rank=1)
    blocks = layer.s @ layer.t
    expected = sum(torch.kron(rule[i], blocks[i]) for i in range(2))
    assert torch.allclose(layer.weight(), expected)


def test_houlsby_adapter_starts_near_identity():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(32, 8)
    x = torch.randn(4, 32)
    assert torch.allclose(adapter(x), x, atol=0.05)
    assert not torch.equal(adapter(x), x)  # near, not exactly: both projections get gradients


@pytest.mark.parametrize("kind", ["parallel_adapter", "mam", "unipelt"])
def test_zero_initialised_branches_start_as_the_pretrained_model(kind):
    if kind == "unipelt":  # its gated LoRA starts at zero; drop the (near-identity) adapter
        cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "unipelt"))
        cfg.init_std = 0.0
        cfg.peft.num_virtual_tokens = 1
    elif kind == "mam":
        cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "mam"))
    else:
        cfg = _adapter_cfg(kind, 8, scale=4.0)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    base = _tiny_classifier().eval()
    model = apply_method(_tiny_classifier(), cfg, CONTEXT).eval()
    with torch.no_grad():
        reference, adapted = base(**batch).logits, model(**batch).logits
    if kind == "parallel_adapter":
        assert torch.equal(reference, adapted)
    else:  # a prefix attends to extra keys, so the output moves, but the branches are inert
        assert adapted.shape == reference.shape


@pytest.mark.parametrize("family", ["bert", "llama", "gemma3", "t5"])
@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer", "parallel_adapter", "compacter"])
def test_native_adapters_are_found_in_every_family(kind, family):
    cfg = _adapter_cfg(kind, 4, scale=4.0, phm_dim=4, phm_rank=1)
    model = apply_method(_tiny_classifier(family), cfg, _context(family))
    n_layers = {"bert": 2, "llama": 2, "gemma3": 2, "t5": 4}[
        family
    ]  # T5: 2 encoder + 2 decoder layers
    per_layer = 2 if kind in ("houlsby", "compacter") else 1
    names = [n for n, _ in model.named_modules() if n.endswith(("adapter", "parallel_adapter"))]
    assert len(names) == per_layer * n_layers
    logits = model(**_batch(family=family)).logits
    assert logits.shape == ((4, 2, 50) if family == "t5" else (4, 2))  # T5: 2 target tokens


@pytest.mark.parametrize(
    ("family", "model_class"),
    [
        ("llama", "LlamaForSequenceClassification"),
        ("gemma3", "Gemma3TextForSequenceClassification"),
    ],
)
def test_bitfit_refuses_a_model_without_biases(family, model_class):
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "bitfit"))
    with pytest.raises(MethodNotApplicable, match=rf"'bitfit'.*{model_class}"):
        apply_method(_tiny_classifier(family), cfg, _context(family))


def test_bitfit_trains_exactly_the_bias_terms():
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "bitfit"))
    model = apply_method(_tiny_classifier(), cfg, CONTEXT)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in model.named_parameters() if n.endswith("bias") or n.startswith("classifier")
    }


@pytest.mark.parametrize(("family", "k", "expected"), [("bert", 1, 1), ("t5", 1, 2)])
def test_last_layers_trains_the_top_k_of_each_stack(family, k, expected):
    cfg = OmegaConf.create({"name": "last_layers", "kind": "last_layers", "lr": 1e-4, "k": k})
    model = apply_method(_tiny_classifier(family), cfg, _context(family))
    top = {"bert": ["bert.encoder.layer.1."], "t5": ["encoder.block.1.", "decoder.block.1."]}
    moving = {
        n for n, p in model.named_parameters() if p.requires_grad and "layer" in n or "block" in n
    }
    trained = {n for n in moving if dict(model.named_parameters())[n].requires_grad}
    assert trained and all(any(t in n for t in top[family]) for n in trained)
    assert len({t for t in top[family] if any(t in n for n in trained)}) == expected


def test_fisher_mask_trains_exactly_k_entries_with_the_largest_fisher():
    from peftbench.methods.selective import empirical_fisher, fisher_k

    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "fisher_mask"))
    cfg.density_pct = 2.0
    cfg.calibration_batches = 2
    model = apply_method(_tiny_classifier(), cfg, CONTEXT)
    backbone = sum(
        p.numel() for n, p in _tiny_classifier().named_parameters() if "classifier" not in n
    )
    method, _ = count_trainable(model, ["classifier"])
    assert method == fisher_k(cfg, backbone)
    # the selected entries are the top-k of the Fisher computed independently
    probe = _tiny_classifier()
    params = {n: p for n, p in probe.named_parameters() if "classifier" not in n}
    scores = empirical_fisher(probe, CONTEXT.calibration_batches(2), params)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = torch.topk(flat, method).values.min()
    for name, module in model.named_modules():
        if name.endswith("parametrizations.weight.0") or name.endswith("parametrizations.bias.0"):
            original = name.rsplit(".parametrizations", 1)[0]
            tensor_name = f"{original}.{name.split('.')[-2]}"
            assert (scores[tensor_name].reshape(-1)[module.index] >= threshold).all()


def test_fisher_mask_refuses_without_calibration_data():
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "fisher_mask"))
    ctx = MethodContext(head_modules=["classifier"], peft_task_type="SEQ_CLS", model_type="bert")
    with pytest.raises(MethodNotApplicable, match="training batches"):
        apply_method(_tiny_classifier(), cfg, ctx)


def test_adalora_installs_a_step_hook_that_reallocates_ranks():
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "adalora"))
    model = apply_method(_tiny_classifier(), cfg, CONTEXT)
    hook = step_hook(model)
    assert hook is not None and hook.__name__ == "update_and_allocate"
    assert model.peft_config["default"].total_step == TOTAL_STEPS


def test_qlora_refuses_without_cuda_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the refusal does not apply")
    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "qlora"))
    with pytest.raises(MethodNotApplicable) as refusal:
        apply_method(_tiny_classifier(), cfg, CONTEXT)
    assert "CUDA" in str(refusal.value) and "\n" not in str(refusal.value)


@pytest.mark.parametrize("peft_type", ["PROMPT_TUNING", "P_TUNING"])
def test_prompt_methods_keep_token_labels_aligned(peft_type):
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(FAMILIES["bert"].config())
    extra = {"encoder_hidden_size": 16} if peft_type == "P_TUNING" else {}
    peft_cfg = {"peft_type": peft_type, "num_virtual_tokens": 5, **extra}
    cfg = OmegaConf.create({"name": "p", "kind": "peft", "lr": 1e-3, "peft": peft_cfg})
    ctx = MethodContext(head_modules=["classifier"], peft_task_type="TOKEN_CLS", model_type="bert")
    model = apply_method(model, cfg, ctx)
    batch = _batch()
    labels = torch.randint(0, 2, (4, 12))
    labels[:, -3:] = -100
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    assert out.logits.shape == (4, 12, 2)  # one prediction per input token
    expected = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100
    )
    assert torch.allclose(out.loss, expected)


def test_unknown_method_kind_names_the_valid_ones():
    cfg = OmegaConf.create({"name": "x", "kind": "houlsbi", "lr": 1e-3})
    with pytest.raises(KeyError, match="Did you mean houlsby"):
        apply_method(_tiny_classifier(), cfg, CONTEXT)
