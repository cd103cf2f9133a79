"""Contract tests over every conf/method/*.yaml x model family: a new method YAML is tested
with no new code. Plus the native adapters' parameter counts against their papers' formulas.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
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
from peftbench.methods.base import (
    MethodNotApplicable,
    checkpoint_state,
    count_trainable,
    step_hook,
    trainable_state,
)
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
    """Applies the method; any refusal raises (an expected one is in REFUSALS, not here)."""
    return apply_method(_tiny_classifier(family, seed), cfg, _context(family))


_NO_BIASES = ("llama", "gemma3", "t5", "llama-lm")  # families built without bias terms
_NO_HEAD = ("t5", "llama-lm")  # the LM head writes the output: no task head to train
#: Every (method YAML, family) that must refuse, and a substring of its one-line reason.
#: A refusal not listed here fails the contract tests; a listed one that does not happen
#: fails test_expected_refusals_are_raised.
REFUSALS: dict[tuple[str, str], str] = {
    **{("bitfit", f): "needs bias terms" for f in _NO_BIASES},
    **{("linear", f): "trains only a task head" for f in _NO_HEAD},
}
if not torch.cuda.is_available():  # bitsandbytes' 4-bit kernels
    REFUSALS.update({("qlora", f): "needs a CUDA GPU" for f in FAMILIES})
#: On a CUDA machine qlora quantizes on the GPU; these CPU contract tests do not cover it.
_NOT_HERE = {("qlora", f) for f in FAMILIES} if torch.cuda.is_available() else set()


def _cells(*, refused: bool) -> list:
    cells = []
    for path in METHOD_YAMLS:
        for family in FAMILIES:
            key = (path.stem, family)
            if key in _NOT_HERE or (key in REFUSALS) != refused:
                continue
            cells.append(pytest.param(path, family, id=f"{path.stem}-{family}"))
    return cells


def _contract_cfg(yaml) -> OmegaConf:
    """The method YAML; a Fisher mask from one batch of examples, not 1,024 (a fifth of the
    suite's time). The selection itself is checked by test_fisher_mask_trains_exactly_k..."""
    cfg = OmegaConf.load(yaml)
    if "calibration_examples" in cfg:
        cfg.calibration_examples = 4
    if cfg.get("peft", {}).get("n_frequency", 0) > 256:  # FourierFT's n: tiny GQA v_proj 32x16
        cfg.peft.n_frequency = 256
    return cfg


def test_the_refusal_table_names_real_methods_and_families():
    stems = {p.stem for p in METHOD_YAMLS}
    for method, family in REFUSALS:
        assert method in stems and family in FAMILIES, (method, family)


@pytest.mark.parametrize(("yaml", "family"), _cells(refused=True))
def test_expected_refusals_are_raised(yaml, family):
    cfg = OmegaConf.load(yaml)
    with pytest.raises(MethodNotApplicable, match=REFUSALS[(yaml.stem, family)]) as refusal:
        _apply(cfg, family)
    assert "\n" not in str(refusal.value) and f"'{cfg.name}'" in str(refusal.value)


@pytest.mark.parametrize(("yaml", "family"), _cells(refused=False))
def test_one_step_trains_the_method_and_nothing_else(yaml, family):
    method_cfg = _contract_cfg(yaml)
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


@pytest.mark.parametrize(("yaml", "family"), _cells(refused=False))
def test_saved_trainable_state_reloads_to_identical_logits(yaml, family, tmp_path):
    method_cfg = _contract_cfg(yaml)
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


@pytest.mark.parametrize("yaml", METHOD_YAMLS, ids=lambda p: p.stem)
def test_every_method_yaml_cites_a_paper_and_declares_its_size_knob(yaml):
    cfg = OmegaConf.load(yaml)
    assert cfg.name == yaml.stem, f"{yaml.name}: name must be the file name, {yaml.stem!r}"
    text = yaml.read_text()
    header = "\n".join(itertools.takewhile(lambda ln: ln.startswith("#"), text.splitlines()))
    years = [int(y) for y in re.findall(r"\b(?:19|20)\d\d\b", header)]
    assert any(1950 <= y <= datetime.date.today().year for y in years), (
        f"{yaml.name}: the leading # comment must cite the paper with its year"
    )
    assert {"kind", "lr", "budget_pct", "budget_knob"} <= set(cfg), yaml.name
    if cfg.budget_knob:
        assert OmegaConf.select(cfg, cfg.budget_knob) is not None


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
    if kind == "unipelt":  # its gated LoRA starts at zero; zero the (near-identity) adapter
        cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "unipelt"))
        cfg.init_std = 0.0
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
        return
    # A prefix attends to extra keys, so the output moves; without the prefix, the native
    # branches (zero up-projection, zero LoRA B) leave the backbone's logits as they were.
    assert not torch.allclose(reference, adapted)
    with torch.no_grad():  # the wrapped model, without peft's prefix (disable_adapter breaks
        inert = model.base_model(**batch).logits  # for SEQ_CLS in peft 0.21: no generation)
    assert torch.equal(inert, reference)  # exactly: the tiny model's logits move by ~1e-7


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


@pytest.mark.parametrize(
    ("family", "k", "top"),
    [
        ("bert", 1, ["bert.encoder.layer.1."]),
        ("bert", 2, ["bert.encoder.layer.0.", "bert.encoder.layer.1."]),
        ("t5", 1, ["encoder.block.1.", "decoder.block.1."]),  # the top k of each stack
    ],
)
def test_last_layers_trains_the_top_k_of_each_stack(family, k, top):
    cfg = OmegaConf.create({"name": "last_layers", "kind": "last_layers", "lr": 1e-4, "k": k})
    model = apply_method(_tiny_classifier(family), cfg, _context(family))
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    in_top = {n for n in params if n.startswith(tuple(top))}
    in_head = {n for n in params if n.split(".")[0] in _heads(family)}
    assert all(any(n.startswith(t) for n in in_top) for t in top)  # each top layer exists
    assert trainable == in_top | in_head  # all of the top k layers and the head, nothing else


def test_fisher_mask_trains_exactly_k_entries_with_the_largest_fisher():
    from peftbench.methods.selective import empirical_fisher, fisher_k

    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "fisher_mask"))
    cfg.density_pct = 2.0
    cfg.calibration_examples = 2 * len(CONTEXT.calibration_batches(1)[0]["labels"])
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


def _adalora_steps(model: torch.nn.Module, steps: range) -> None:
    """Steps as the loop takes them: backward, optimiser, AdaLoRA's hook, zero_grad (plain
    SGD holds no state and dropout is off, so only the allocator's state can differ)."""
    hook, optimizer = step_hook(model), torch.optim.SGD(model.parameters(), lr=0.5)
    model.eval()
    for step in steps:
        model(**_batch(step)).loss.backward()
        optimizer.step()
        hook(step)
        optimizer.zero_grad()


@pytest.mark.parametrize("stop", [4, 8])  # of 10: 4 while the budget shrinks, 8 past its end
def test_adalora_continues_from_its_checkpoint_state_as_if_never_stopped(stop):
    from peftbench.runner.checkpoint import _flatten, _unflatten

    cfg = OmegaConf.load(next(p for p in METHOD_YAMLS if p.stem == "adalora"))
    whole = apply_method(_tiny_classifier(), cfg, CONTEXT)
    _adalora_steps(whole, range(stop))
    tensors: dict = {}  # the state as a checkpoint writes it: JSON plus named tensors
    saved = json.loads(json.dumps(_flatten(checkpoint_state(whole).state_dict(), "m", tensors)))
    weights = {k: v.clone() for k, v in trainable_state(whole).items()}
    _adalora_steps(whole, range(stop, TOTAL_STEPS))

    def resumed(with_state: bool) -> torch.nn.Module:
        model = apply_method(_tiny_classifier(), cfg, CONTEXT)
        assert not model.load_state_dict(weights, strict=False).unexpected_keys
        if with_state:
            checkpoint_state(model).load_state_dict(_unflatten(saved, tensors))
        _adalora_steps(model, range(stop, TOTAL_STEPS))
        return model

    final = trainable_state(whole)
    assert all(torch.equal(final[k], v) for k, v in trainable_state(resumed(True)).items())
    assert (
        resumed(True).peft_config["default"].rank_pattern
        == whole.peft_config["default"].rank_pattern
    )


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
