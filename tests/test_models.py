"""Model configs and load paths: every conf/model/*.yaml, the Hub branch (mocked, no network),
GGUF dequantized once and cached (a tiny GGUF written here), and synthetic weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.frame import load_records, quality_runs
from peftbench.config.checks import validate
from peftbench.errors import ConfigError
from peftbench.models.backbones import load_backbone, resolve_source
from peftbench.models.gguf import MARKER_NAME
from peftbench.runner import experiment
from tasks import build_task
from tests.conftest import ROOT

MODEL_YAMLS = sorted((ROOT / "conf" / "model").glob("*.yaml"))
HUB_YAMLS = [p for p in MODEL_YAMLS if OmegaConf.load(p).source.get("hub_id")]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# -- every model config ----------------------------------------------------------------------
@pytest.mark.parametrize("path", MODEL_YAMLS, ids=lambda p: p.stem)
def test_every_model_yaml_composes_and_validates(path):
    # A warm-started encoder-decoder only generates: check it on a translation task.
    task = "bible-de-en" if OmegaConf.load(path).get("warm_start") else "polarity"
    cfg = _compose(f"model={path.stem}", f"task={task}", "tracker=none")
    validate(cfg, cuda_available=False)
    assert cfg.model.name == path.stem
    assert cfg.model.get("weights", "pretrained") in ("pretrained", "synthetic")
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("path", HUB_YAMLS, ids=lambda p: p.stem)
def test_hub_models_pin_a_commit_sha(path):
    revision = OmegaConf.load(path).source.revision
    assert re.fullmatch(r"[0-9a-f]{40}", revision), f"{path.name}: revision {revision!r}"


def test_hub_source_resolves_to_the_id_at_the_pinned_revision():
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "bert-base-uncased.yaml")
    where, kwargs, printable = resolve_source(model_cfg)
    sha = "86b5e0934494bd15c9632b12f734a8a67f723594"
    assert (where, kwargs) == ("google-bert/bert-base-uncased", {"revision": sha})
    assert printable == f"google-bert/bert-base-uncased@{sha}"


def test_hub_load_passes_revision_safetensors_and_no_remote_code(
    monkeypatch, compose, tiny_bert_dir
):
    """The Hub branch of load_backbone, with from_pretrained redirected to the tiny BERT."""
    calls = []

    def recorder(original):
        def fake(where, **kwargs):
            calls.append((where, kwargs))
            return original(
                str(tiny_bert_dir), **{k: v for k, v in kwargs.items() if k != "revision"}
            )

        return fake

    auto_model = transformers.AutoModelForSequenceClassification
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        recorder(transformers.AutoTokenizer.from_pretrained),
    )
    monkeypatch.setattr(auto_model, "from_pretrained", recorder(auto_model.from_pretrained))
    cfg = compose("model=roberta-base", "model.source.path=null")
    backbone = load_backbone(cfg.model, build_task(cfg.task))
    sha = "e2da8e2f811d1448a5b465c236feacd80ffbac7b"
    (tok_where, tok_kwargs), (model_where, model_kwargs) = calls
    assert tok_where == model_where == "FacebookAI/roberta-base"
    assert tok_kwargs == {"revision": sha} and model_kwargs["revision"] == sha
    assert model_kwargs["use_safetensors"] is True and model_kwargs["trust_remote_code"] is False
    assert backbone.source == f"FacebookAI/roberta-base@{sha}"
    assert backbone.weights == "pretrained"


# -- config-time refusals --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model=gemma3-270m", "task=wnut16"), "no token_classification head"),
        (("model=smollm2-135m", "method=bitfit"), "has none (model.biases: false)"),
        (("model=llama-1b-synthetic", "~model.architecture"), "no model.architecture"),
        (
            ("model.attn_implementation=flash",),
            "model.attn_implementation must be one of eager, sdpa, flash_attention_2",
        ),
    ],
)
def test_models_refuse_what_they_cannot_do_before_loading(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(_compose(*overrides, "tracker=none"), cuda_available=False)


def test_a_gguf_file_missing_from_the_model_folder_is_a_config_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    cfg = _compose("model=smollm2-135m", "model.source.asset=null", f"model.source.path={tmp_path}")
    with pytest.raises(ConfigError, match="is not in"):
        validate(cfg, cuda_available=False)


# -- the attention kernel ---------------------------------------------------------------------
def test_the_attention_kernel_is_the_one_named_and_computes_the_same_outputs(compose):
    default = _load(compose())
    eager = _load(compose("model.attn_implementation=eager"))
    sdpa = _load(compose("model.attn_implementation=sdpa"))
    assert default.model.config._attn_implementation == "sdpa"  # the library's default
    assert eager.model.config._attn_implementation == "eager"
    assert sdpa.model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[2, 5, 9, 7, 3, 0], [2, 8, 6, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():  # eval mode: no dropout, so the kernels must agree
        logits = [b.model.eval()(input_ids=ids, attention_mask=mask).logits for b in (eager, sdpa)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_a_synthetic_model_gets_the_attention_kernel_too(compose):
    backbone = _load(_synthetic(compose, "model.attn_implementation=eager"))
    assert backbone.model.config._attn_implementation == "eager"


# -- GGUF: dequantized once, cached by sha256 ------------------------------------------------
_WORDS = ["the", "film", "is", "good", "bad", "a", "movie", "not", "very", "fun", "dull"]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Writes a 2-layer Llama (hidden 32) with a SentencePiece-style vocabulary as GGUF (F32)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [
        "<unk>",
        "<s>",
        "</s>",
        *("\u2581" + w for w in _WORDS),
        *"abcdefghijklmnopqrstuvwxyz",
    ]
    vocab, hidden, ffn, layers, heads, kv_heads = len(tokens), 32, 64, 2, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [-1.0] * len(_WORDS) + [-10.0] * 26)  # words first
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))  # unknown, control x2, normal
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def tensor(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", tensor(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    kv = hidden // heads * kv_heads
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden)}
    shapes |= {"attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden)}
    shapes |= {"ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    for i in range(layers):
        for name, shape in shapes.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", tensor(*shape))
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf_cfg(compose, tmp_path, monkeypatch):
    """A composed config whose model is a tiny GGUF Llama in a folder; a private cache."""
    folder = tmp_path / "gguf-model"
    folder.mkdir()
    write_tiny_gguf(folder / "tiny.gguf")
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    return compose(
        "model=smollm2-135m", f"model.source.path={folder}", "model.source.gguf_file=tiny.gguf"
    )


def _load(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return load_backbone(cfg.model, build_task(cfg.task))


def test_gguf_is_dequantized_once_then_loaded_from_the_cache(tiny_gguf_cfg, tmp_path, monkeypatch):
    first = _load(tiny_gguf_cfg)
    (folder,) = (tmp_path / "cache" / "dequantized").iterdir()
    marker = json.loads((folder / MARKER_NAME).read_text())
    assert marker["gguf"] == "tiny.gguf" and folder.name == f"{marker['gguf_sha256'][:16]}-fp32"
    assert (folder / "model.safetensors").is_file()

    def no_gguf(*args, **kwargs):
        raise AssertionError("the cached folder must be used, not the GGUF file")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    second = _load(tiny_gguf_cfg)
    # Same weights, and the same head for the same seed: the cache never changes a result.
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    assert first.head_modules == ["score"] and first.source.endswith("tiny.gguf")
    assert not getattr(first.model, "is_quantized", False)  # a plain fp32 model for peft


def test_dequantized_weights_equal_transformers_gguf_loading(tiny_gguf_cfg):
    backbone = _load(tiny_gguf_cfg)
    folder = Path(str(tiny_gguf_cfg.model.source.path))
    direct = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="tiny.gguf", dtype=torch.float32
    )
    cached = backbone.model.model.state_dict()
    assert all(torch.equal(v, cached[k]) for k, v in direct.model.state_dict().items())
    direct_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file="tiny.gguf")
    text = "the film is not very good"
    assert backbone.tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"]


# -- synthetic weights -------------------------------------------------------------------------
_TINY_LLAMA = (
    "model.architecture.hidden_size=32",
    "model.architecture.intermediate_size=64",
    "model.architecture.num_hidden_layers=2",
    "model.architecture.num_attention_heads=4",
    "model.architecture.num_key_value_heads=2",
    "model.architecture.head_dim=8",
    "model.architecture.vocab_size=20",  # smaller than the tokenizer: ids are clipped
)


def _synthetic(compose, *extra: str):
    return compose("model=llama-1b-synthetic", "model.source.gguf_file=null", *_TINY_LLAMA, *extra)


def test_synthetic_model_is_built_from_the_config_without_reading_weights(compose, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("synthetic weights must not load a checkpoint")

    monkeypatch.setattr(
        transformers.AutoModelForSequenceClassification, "from_pretrained", no_weights
    )
    backbone = _load(_synthetic(compose))
    assert backbone.weights == "synthetic" and backbone.head_modules == ["score"]
    assert backbone.model.config.num_hidden_layers == 2
    assert backbone.source.startswith("synthetic llama")
    ids = torch.tensor([[5, 19, 30, 2]])  # 30 is beyond the 20-row embedding
    logits = backbone.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_llama_1b_synthetic_has_the_size_of_llama_3_2_1b():
    architecture = OmegaConf.to_container(
        OmegaConf.load(ROOT / "conf/model/llama-1b-synthetic.yaml").architecture
    )
    config = transformers.AutoConfig.for_model(architecture.pop("model_type"), **architecture)
    with torch.device("meta"):  # no memory, no time: only the shapes
        model = transformers.AutoModelForCausalLM.from_config(config)
    # meta-llama/Llama-3.2-1B: 1,235,814,400 parameters (embeddings tied to the LM head)
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400


def test_a_synthetic_run_is_recorded_as_such_and_kept_out_of_quality_tables(compose, tmp_path):
    summary = experiment.run(_synthetic(compose, "method=lora", "instrument.inference=false"))
    assert summary["status"] == "success"
    record = json.loads(Path(summary["path"]).read_text())
    assert record["experiment"]["weights"] == "synthetic"
    assert record["model_source"]["weights"] == "synthetic"
    records = load_records(tmp_path / "results")
    assert list(records["weights"]) == ["synthetic"] and quality_runs(records).empty


def test_a_decoder_pads_on_the_left_so_its_classifier_reads_a_real_token(tiny_gguf_cfg, compose):
    """Prompt tuning hands a decoder's classifier inputs_embeds; it then reads each row's last
    position, which must be a real token in every row, not padding (right padding made it a
    pad token in every row shorter than its batch)."""
    cfg = tiny_gguf_cfg
    task = build_task(cfg.task)
    backbone = load_backbone(cfg.model, task)
    assert backbone.tokenizer.padding_side == "left"
    rows = [{**backbone.tokenizer(text), "labels": 0} for text in ("a", "a b c d e f g")]
    mask = task.collate(rows, backbone.tokenizer)["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1] and mask[0, 0] == 0  # padded at the front
    # null keeps the tokenizer's own side (and every earlier run id): MiniLM pads on the right
    encoder = compose()
    assert encoder.model.padding_side is None
    right = load_backbone(encoder.model, build_task(encoder.task)).tokenizer.padding_side
    assert right == "right"
