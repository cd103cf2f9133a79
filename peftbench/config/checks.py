"""Validates a composed config before anything is loaded: one line per problem, exit code 2.

:func:`validate` checks one composed config against a small schema (types, ranges) and the
combinations that cannot work. ``experiment.run`` calls it first, so a programmatic caller
gets a :class:`ConfigError` before any data or model is read; the command-line pre-check
(:mod:`peftbench.config.precheck`) calls it for every job of a sweep before Hydra starts.

This module must stay light (no torch, transformers or pandas imports): the whole check runs in
well under the 5 seconds the command line promises.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from peftbench.errors import INPUT_ERRORS, ConfigError, exit_with
from peftbench.methods import specs
from peftbench.models.architectures import FAMILIES, families_serving

#: Keys a ``+key=value`` override may add although no YAML defines them. ``method.peft`` takes
#: any peft argument; elsewhere an added key would be silently ignored, so it is a typo.
OPEN_PREFIXES = ("hydra.", "method.peft.")
OPTIONAL_KEYS = ("method.budget_pct", "method.requires", "task.label_words")
#: Hydra flags that print something instead of running jobs: nothing to validate.
INFO_FLAGS = ("help", "hydra_help", "version", "cfg", "info", "shell_completion")


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Rule:
    """What one value must be.

    Attributes:
        kind: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``list`` or ``object``
            (any kind: ``test`` decides).
        test: extra condition on a value of the right kind.
        expect: the condition in words, for the message ("an integer >= 1").
        example: a valid value, for the fix ("16").
        nullable: whether ``null`` is allowed.
    """

    kind: type
    test: Callable[[Any], bool]
    expect: str
    example: str
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Returns what is wrong with ``value`` ("must be ..., got ...") or None."""
        if value is None:
            return None if self.nullable else f"must be {self.expect}, got null"
        if not _has_kind(value, self.kind) or not self.test(value):
            return f"must be {self.expect}, got {_show(value)}"
        return None


def _has_kind(value: Any, kind: type) -> bool:
    if kind is object:  # a rule over several kinds: its test decides
        return True
    if isinstance(value, bool):  # bool is an int subclass; true is never a batch size
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    if kind is list:
        return isinstance(value, (list, tuple, ListConfig))
    return isinstance(value, kind)


def _show(value: Any) -> str:
    if isinstance(value, ListConfig):
        value = list(value)
    return repr(value)


def _int_at_least(low: int, example: str, nullable: bool = False) -> Rule:
    return Rule(int, lambda v: v >= low, f"an integer >= {low}", example, nullable)


def _positive(example: str) -> Rule:
    return Rule(float, lambda v: math.isfinite(v) and v > 0, "a number > 0", example)


def _unit_interval(example: str, *, closed: bool = False) -> Rule:
    bracket = "]" if closed else ")"
    return Rule(
        float,
        lambda v: 0 <= v <= 1 if closed else 0 <= v < 1,
        f"a number in [0, 1{bracket}",
        example,
    )


def _one_of(*choices: str) -> Rule:
    return Rule(str, lambda v: v in choices, f"one of {', '.join(choices)}", choices[0])


_NON_EMPTY_STR = Rule(str, lambda v: bool(v.strip()), "a non-empty string", "results")
#: task, model and method names make the run id, which names the record, checkpoint and lock
#: files and Hydra's job folder: no path separator (a ``/`` put Hydra's folder outside
#: results_dir), nothing a shell or file system mangles, short enough for a 255-byte file name
#: (3 names + seed + hash + timestamp + status).
NAME_MAX = 64
_NAME = Rule(
    str,
    lambda v: re.fullmatch(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{NAME_MAX - 1}}}", v) is not None,
    f"a name of letters, digits and . _ + - (at most {NAME_MAX} characters)",
    "my-method",
)
_BOOL = Rule(bool, lambda v: True, "true or false", "false")
_DEVICE = Rule(
    str,
    lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
    "auto, cpu, mps, cuda or cuda:<index>",
    "auto",
)

#: Rules by dotted path; a path absent from the config is not checked (groups differ).
SCHEMA: dict[str, Rule] = {
    # numpy's and torch's seeders take 32 bits
    "seed": Rule(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)", "0"),
    "device": _DEVICE,
    "results_dir": _NON_EMPTY_STR,
    "force": _BOOL,
    "train.batch_size": _int_at_least(1, "16"),
    "train.eval_batch_size": _int_at_least(1, "128"),
    "train.epochs": _int_at_least(1, "2"),
    "train.max_steps": _int_at_least(1, "null", nullable=True),
    "train.warmup_ratio": _unit_interval("0.06"),
    "train.weight_decay": Rule(float, lambda v: v >= 0, "a number >= 0", "0.01"),
    "train.max_grad_norm": _positive("1.0"),
    "train.eval_every_steps": _int_at_least(0, "100"),
    "train.log_every_steps": _int_at_least(1, "10"),
    "train.warmup_steps_excluded": _int_at_least(0, "5"),
    "train.precision": _one_of("auto", "fp32", "bf16"),
    "train.gradient_checkpointing": _BOOL,
    "train.num_workers": _int_at_least(0, "0"),
    "train.checkpoint_every_steps": _int_at_least(0, "500"),
    "train.keep_checkpoints": _BOOL,
    "train.evaluate_test": _BOOL,
    "train.threads": Rule(
        object,
        lambda v: v == "auto" or (type(v) is int and v >= 1),
        "auto or an integer >= 1",
        "auto",
    ),
    "data_cache": _BOOL,
    "memory_guard": _BOOL,
    # once: the first seed of a recipe in results_dir (latency does not depend on the seed);
    # true is every (what it meant before once existed)
    "instrument.inference": Rule(
        object,
        lambda v: isinstance(v, bool) or v in ("once", "every"),
        "once, every or false",
        "once",
    ),
    "instrument.measured_peak": _BOOL,
    "instrument.peak_tflops": Rule(float, lambda v: v > 0, "TFLOP/s > 0", "989", nullable=True),
    "method.name": _NAME,
    "method.kind": _NON_EMPTY_STR,
    "method.lr": _positive("5e-4"),
    "method.lr_scale": _positive("1.0"),
    "method.head_lr": _positive("6e-3"),  # the head's own rate, where the paper gives one
    "method.budget_pct": Rule(
        float, lambda v: 0 < v <= 100, "a percentage in (0, 100]", "1", nullable=True
    ),
    "model.name": _NAME,
    "model.family": _one_of(*FAMILIES),
    "model.trust_remote_code": _BOOL,
    "model.weights": _one_of("pretrained", "synthetic"),
    "model.biases": _BOOL,
    # which attention kernel transformers runs (null: its default, sdpa where the model has it)
    "model.attn_implementation": Rule(
        str,
        lambda v: v in ("eager", "sdpa", "flash_attention_2"),
        "one of eager, sdpa, flash_attention_2 (null: the library's default)",
        "eager",
        nullable=True,
    ),
    # which side batches pad on (null: the tokenizer's own; decoders' configs say left)
    "model.padding_side": Rule(
        str, lambda v: v in ("left", "right"), "left or right (null: the tokenizer's own)",
        "left", nullable=True,
    ),  # fmt: skip
    "task.name": _NAME,
    "task.kind": _NON_EMPTY_STR,
    "task.version": _int_at_least(1, "1"),
    "task.max_length": _int_at_least(1, "128"),
    "task.max_target_length": _int_at_least(2, "80"),  # translation: a token and the eos
    "task.generation.num_beams": _int_at_least(1, "4"),
    "task.generation.max_new_tokens": _int_at_least(1, "80"),
    "task.labels": Rule(list, lambda v: len(v) >= 2, "a list of at least 2 labels", "[neg, pos]"),
    "task.metrics": Rule(list, lambda v: len(v) >= 1, "a non-empty list", "[accuracy]"),
    "task.primary_metric": _NON_EMPTY_STR,
    "task.train_size": Rule(
        float,
        lambda v: v >= 1 if isinstance(v, int) else 0 < v <= 1,
        "an integer >= 1 (examples) or a fraction in (0, 1]",
        "400",
        True,
    ),
    "task.metric_impl": _one_of("builtin", "evaluate"),
    "tracker.name": _NON_EMPTY_STR,
    "tracker.mode": _one_of("offline", "online", "disabled"),
}
#: Rules for method arguments by key name, wherever they sit under ``method`` (peft or native),
#: so a new method's YAML is checked without touching this file.
METHOD_ARG_RULES: dict[str, Rule] = {
    "r": _int_at_least(1, "8"),
    "rank": _int_at_least(1, "8"),
    "bottleneck": _int_at_least(1, "64"),
    "num_virtual_tokens": _int_at_least(1, "20"),
    "lora_alpha": _positive("16"),
    "init_std": Rule(float, lambda v: v >= 0, "a number >= 0", "0.01"),
}


def walk(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields (dotted path, leaf value) for every leaf of a nested mapping."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from walk(value, f"{path}.")
        else:
            yield path, value


def lookup(tree: Mapping, path: str, default: Any = None) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


ABSENT = object()


def _check_rules(cfg: Mapping) -> None:
    for path, rule in SCHEMA.items():
        value = lookup(cfg, path, ABSENT)
        if value is not ABSENT:
            _raise_if(path, rule, value)
    for path, value in walk(cfg.get("method") or {}, "method."):
        leaf = path.rsplit(".", 1)[-1]
        rule = METHOD_ARG_RULES.get(leaf)
        if rule is None and leaf.endswith("dropout"):
            rule = _unit_interval("0.1")
        if rule is not None:
            _raise_if(path, rule, value)


def _raise_if(path: str, rule: Rule, value: Any) -> None:
    problem = rule.problem(value)
    if problem is not None:
        raise ConfigError(f"{path} {problem}", f"set e.g. {path}={rule.example}")


# --------------------------------------------------------------------------- combinations


def _check_split(cfg: Mapping) -> None:
    fractions = lookup(cfg, "task.split.fractions")
    if fractions is None:
        return
    names = {"train", "dev", "test"}
    values = dict(fractions)
    bad = [k for k, v in values.items() if not _has_kind(v, float) or not 0 < v < 1]
    if set(values) != names or bad or abs(sum(values.values()) - 1) > 1e-6:
        raise ConfigError(
            f"task.split.fractions must give train, dev and test each a share in (0, 1) "
            f"summing to 1, got {values}",
            "set e.g. task.split.fractions={train:0.8,dev:0.1,test:0.1}",
        )


def _check_task(cfg: Mapping) -> None:
    metrics = lookup(cfg, "task.metrics")
    primary = lookup(cfg, "task.primary_metric")
    if metrics is not None and primary is not None and primary not in list(metrics):
        raise ConfigError(
            f"task.primary_metric {primary!r} is not among task.metrics {list(metrics)}",
            f"set task.primary_metric to one of {', '.join(map(str, metrics))}",
        )
    words, labels = lookup(cfg, "task.label_words"), lookup(cfg, "task.labels")
    if words is not None and labels is not None:
        words, labels = list(words), list(labels)
        if len(words) != len(labels) or len(set(words)) < len(words):
            raise ConfigError(
                f"task.label_words {words} must give each of the {len(labels)} labels "
                f"{labels} its own word",
                f"list {len(labels)} different words, in the order of task.labels",
            )
    _check_split(cfg)


def _check_model_source(cfg: Mapping) -> None:
    source = lookup(cfg, "model.source")
    if source is None:
        return
    given = [k for k in ("asset", "hub_id", "path") if source.get(k)]
    if not given:
        raise ConfigError(
            f"model {lookup(cfg, 'model.name')!r} has no weights source",
            "set one of model.source.asset, model.source.hub_id (+ revision), model.source.path",
        )
    if len(given) > 1:
        raise ConfigError(
            f"model.source sets {' and '.join(given)}; only one may be set",
            f"set the others to null, e.g. model.source.{given[0]}=null",
        )
    if given == ["hub_id"] and not source.get("revision"):
        raise ConfigError(
            f"model.source.hub_id {source['hub_id']!r} has no pinned revision",
            "set model.source.revision=<commit sha> so the run can be reproduced",
        )
    if lookup(cfg, "model.weights") == "synthetic":
        _check_architecture(cfg)
    elif given == ["path"]:
        _check_model_folder(Path(str(source["path"])), source.get("gguf_file"))


def _check_architecture(cfg: Mapping) -> None:
    """Synthetic weights are built from ``model.architecture``: it must name a model type."""
    architecture = lookup(cfg, "model.architecture")
    if not isinstance(architecture, Mapping) or not architecture.get("model_type"):
        raise ConfigError(
            f"model {lookup(cfg, 'model.name')!r} has synthetic weights but no "
            "model.architecture.model_type to build them from",
            "add architecture: {model_type: llama, ...} to the model YAML "
            "(see conf/model/llama-1b-synthetic.yaml)",
        )


def _check_model_folder(folder: Path, gguf_file: str | None = None) -> None:
    if not folder.is_dir():
        raise ConfigError(
            f"model.source.path {folder} is not a folder", "point it at a saved model folder"
        )
    if gguf_file and not (folder / gguf_file).is_file():
        raise ConfigError(
            f"model.source.gguf_file {gguf_file!r} is not in {folder}",
            "fix model.source.gguf_file, or set it to null for a safetensors folder",
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.gguf")):
        # .bin/.pt/.ckpt weights are pickles: loading one can run arbitrary code.
        raise ConfigError(
            f"model.source.path {folder} has no .safetensors or .gguf weights "
            "(pickled .bin/.pt weights are never loaded)",
            "convert the weights to safetensors (model.save_pretrained(folder))",
        )


#: Position embeddings a model type reserves before the first token (RoBERTa's padding offset).
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}
#: peft types whose ``r`` is a rank of a weight update: above the hidden size it adds nothing
#: (VeRA's ``r`` is the size of shared random matrices, routinely larger: not checked).
_LOW_RANK_TYPES = ("LORA", "ADALORA", "LOHA", "LOKR")


def check_model_limits(cfg: Mapping, folder: Path) -> None:
    """``task.max_length`` and a low-rank method's rank against the model's own config.json.

    Both otherwise fail only after the model loaded: a length beyond the model's position
    embeddings as an index error, a rank of 10**9 as an out-of-memory whose advice (a smaller
    batch) cannot help. Read from config.json, without torch; a model without one (a GGUF
    file) or without absolute positions (T5) is not checked.
    """
    if isinstance(cfg, DictConfig):
        cfg = _plain(cfg)
    config = _model_config(folder)
    if not config:
        return
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if isinstance(positions, int):
        usable = positions - _POSITION_OFFSET.get(str(config.get("model_type")), 0)
        length = lookup(cfg, "task.max_length")
        if isinstance(length, int) and length > usable:
            raise ConfigError(
                f"task.max_length={length} exceeds the {usable} positions of model "
                f"{lookup(cfg, 'model.name')!r}",
                f"set task.max_length of at most {usable}",
            )
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
    peft_type, rank = lookup(cfg, "method.peft.peft_type"), lookup(cfg, "method.peft.r")
    low_rank = peft_type in _LOW_RANK_TYPES and isinstance(rank, int)
    if isinstance(hidden, int) and low_rank and rank > hidden:
        raise ConfigError(
            f"method.peft.r={rank} exceeds the hidden size {hidden} of model "
            f"{lookup(cfg, 'model.name')!r}: a rank above it adds parameters, not rank",
            f"set method.peft.r of at most {hidden}, e.g. method.peft.r=8",
        )


def _model_config(folder: Path) -> dict | None:
    """A model folder's config.json (a warm-started encoder-decoder's encoder), or None."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    encoder = config.get("encoder")
    return encoder if isinstance(encoder, dict) and "model_type" in encoder else config


def _check_method_kind_needs(cfg: Mapping) -> None:
    """A method run by peft needs its ``peft:`` section (peft_type and arguments)."""
    kind = lookup(cfg, "method.kind")
    if kind in ("peft", "qlora") and not lookup(cfg, "method.peft.peft_type"):
        raise ConfigError(
            f"method {lookup(cfg, 'method.name')!r} (kind {kind}) has no peft: section with a "
            "peft_type",
            "add peft: {peft_type: LORA, r: 8, ...} to its YAML (see conf/method/lora.yaml)",
        )


def _check_family(cfg: Mapping) -> None:
    kind, family = lookup(cfg, "task.kind"), lookup(cfg, "model.family")
    if family in FAMILIES and kind in FAMILIES[family].refuses:
        raise ConfigError(
            f"task {lookup(cfg, 'task.name')!r} (kind {kind}) cannot use model "
            f"{lookup(cfg, 'model.name')!r}: it is an {family} model",
            f"choose a model whose family is {' or '.join(families_serving(str(kind)))}",
        )
    if kind in (lookup(cfg, "model.unsupported_task_kinds") or ()):
        raise ConfigError(
            f"model {lookup(cfg, 'model.name')!r} has no {kind} head in transformers "
            f"(model.unsupported_task_kinds), so task {lookup(cfg, 'task.name')!r} cannot use it",
            "choose another model or a task of another kind",
        )


def _check_kind(cfg: Mapping) -> None:
    kind = lookup(cfg, "method.kind")
    if kind is not None and kind not in specs.kinds():
        raise ConfigError(
            f"unknown method kind {kind!r} (method.kind)", f"valid: {', '.join(specs.kinds())}"
        )


#: Task kinds whose output an encoder-decoder writes as text with its LM head (no task head).
_TEXT_OUTPUT_KINDS = ("translation",)


def _check_warm_start(cfg: Mapping) -> None:
    """A warm-started encoder-decoder (two BERT stacks) generates, and edits weights only.

    peft's prompt learning reads one stack's layer count from the model config (an
    EncoderDecoderConfig has none) and BERT's decoder would take the prefix for its position
    offset, so those methods are refused here rather than failing in the run.
    """
    if not lookup(cfg, "model.warm_start"):
        return
    model, kind = lookup(cfg, "model.name"), lookup(cfg, "task.kind")
    if kind not in _TEXT_OUTPUT_KINDS:
        raise ConfigError(
            f"model {model!r} is a warm-started encoder-decoder for generation, but task "
            f"{lookup(cfg, 'task.name')!r} is {kind}",
            "use it for translation, or choose an encoder model such as model=minilm-l6",
        )
    peft_types = {v for p, v in walk(cfg.get("method") or {}) if p.endswith("peft_type")}
    prompt_learning = sorted(t for t in peft_types if specs.peft_type(t).prompt_learning)
    if prompt_learning:
        raise ConfigError(
            f"method {lookup(cfg, 'method.name')!r} ({prompt_learning[0]}) cannot run on model "
            f"{model!r}: peft's prompt learning needs a single-stack config, and a "
            "warm-started encoder-decoder has two BERT stacks",
            "choose a method that edits weights, e.g. method=lora or method=adapter",
        )


_TEXT_TO_TEXT_KINDS = ("classification", "regression")


def _check_head(cfg: Mapping) -> None:
    """A head-only method (the linear probe) needs a task head, which generation lacks.

    Generation and text-to-text write their output with the LM head. A warm-started
    encoder-decoder is the exception: what it creates new (cross-attention, the LM head's
    transform) counts as its head, so the probe trains that.
    """
    method_kind = lookup(cfg, "method.kind")
    if method_kind not in specs.kinds() or lookup(cfg, "model.warm_start"):
        return
    if not specs.spec(method_kind).head_only:
        return
    kind, family = lookup(cfg, "task.kind"), lookup(cfg, "model.family")
    if kind in _TEXT_OUTPUT_KINDS or (kind in _TEXT_TO_TEXT_KINDS and family == "encoder_decoder"):
        how = "generates its output" if kind in _TEXT_OUTPUT_KINDS else "classifies text-to-text"
        raise ConfigError(
            f"method {lookup(cfg, 'method.name')!r} trains only a task head, but model "
            f"{lookup(cfg, 'model.name')!r} {how} on task {lookup(cfg, 'task.name')!r} "
            "with its LM head, so there is none",
            "choose another method, e.g. method=lora",
        )


def _check_requires(cfg: Mapping, cuda_available: bool | None) -> None:
    """A method's ``requires:`` list (cuda, biases) against the device and the model."""
    requires = list(lookup(cfg, "method.requires") or [])
    method = lookup(cfg, "method.name")
    device = str(lookup(cfg, "device", "auto"))
    if "cuda" in requires:
        no_cuda = device in ("cpu", "mps") or (device == "auto" and cuda_available is False)
        if no_cuda:
            raise ConfigError(
                f"method {method!r} needs a CUDA GPU but the run is on "
                f"{device if device != 'auto' else 'cpu (no CUDA device found)'}",
                "run it on a machine with a GPU, or choose another method",
            )
    if "biases" in requires and lookup(cfg, "model.biases") is False:
        raise ConfigError(
            f"method {method!r} trains bias terms but model {lookup(cfg, 'model.name')!r} "
            "has none (model.biases: false)",
            "choose a model with biases or another method",
        )


def _check_device(cfg: Mapping, cuda_devices: int | None) -> None:
    """A CUDA device that this machine does not have (None: not known, not checked), or
    Apple's MPS off a Mac (it exists on macOS only: known without importing torch)."""
    device = str(lookup(cfg, "device", "auto"))
    if device == "mps" and sys.platform != "darwin":
        raise ConfigError(
            f"device=mps but this machine is not a Mac ({sys.platform}): MPS is Apple's GPU",
            "use device=auto (a GPU when there is one, else the CPU) or device=cpu",
        )
    if cuda_devices is None or not device.startswith("cuda"):
        return
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= cuda_devices:
        have = f"{cuda_devices} CUDA device(s)" if cuda_devices else "no CUDA device"
        raise ConfigError(
            f"device={device} but this machine has {have}",
            "use device=auto (a GPU when there is one, else the CPU) or device=cpu",
        )


#: Below this much free space a run's record, checkpoint and report cannot be trusted to fit.
MIN_FREE_BYTES = 16 * 2**20
#: The folders a run writes under results_dir (records/store.py, runner/checkpoint.py).
RESULT_FOLDERS = ("records", "checkpoints", "locks")


def _check_results_dir(cfg: Mapping) -> None:
    """``results_dir`` must be a folder this process can create and write records into.

    Checked for real (a temp folder or file created and removed), not by permission bits:
    root passes ``os.access`` on ``/proc``, and a full disk or a ``records`` that is a file
    or a dangling symlink only shows when written, by then after hours of training.
    """
    value = lookup(cfg, "results_dir")
    if not isinstance(value, str) or not value:
        return
    path = Path(value).expanduser()
    bad = f"results_dir={_short(value)}"
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as error:  # e.g. a name longer than the file system allows
        raise ConfigError(f"{bad} cannot be used ({error.strerror})", _FIX_DIR) from None
    if not existing.is_dir():
        raise ConfigError(
            f"{bad} is not a folder ({existing} is a file)", "give results_dir a folder path"
        )
    for name in RESULT_FOLDERS if existing == path else ():
        sub = path / name
        if sub.is_symlink() and not sub.exists():
            raise ConfigError(
                f"{bad}: {sub} is a dangling symlink (to {os.readlink(sub)})",
                "remove it or point it at a folder",
            )
        if sub.exists() and not sub.is_dir():
            raise ConfigError(f"{bad}: {sub} is a file, not a folder", "move it away")
    where = path / "records" if (path / "records").is_dir() else existing
    _probe_write(where, bad)


_FIX_DIR = "give results_dir a folder you can write to"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _probe_write(folder: Path, bad: str) -> None:
    """Creates and removes a temp file in ``folder``; a refusal is a ConfigError."""
    import shutil
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".peftbench-write-check-")
        os.close(fd)
        os.unlink(name)
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise ConfigError(
            f"{bad} is not writable ({folder}: {error.strerror or error})", _FIX_DIR
        ) from None
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"{bad} has {free / 2**20:.1f} MiB free (a run needs at least "
            f"{MIN_FREE_BYTES // 2**20} MiB for its record and checkpoint)",
            "free some space or give results_dir another disk",
        )


def _plain(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a Hydra job: check the literal values
        return OmegaConf.to_container(cfg, resolve=False)


def validate(
    cfg: Any, *, cuda_available: bool | None = None, cuda_devices: int | None = None
) -> None:
    """Checks a composed config: types, ranges and combinations that cannot work.

    Args:
        cfg: the composed config (DictConfig or plain dict).
        cuda_available: whether a CUDA device exists; None (the light pre-check, which must
            not import torch) skips the checks that need to know.
        cuda_devices: how many CUDA devices exist (None: not known, not checked).

    Raises:
        ConfigError: the first problem found, as ``<problem>; <fix>``.
    """
    if isinstance(cfg, DictConfig):
        cfg = _plain(cfg)
    _check_rules(cfg)
    _check_task(cfg)
    _check_model_source(cfg)
    _check_family(cfg)
    _check_kind(cfg)
    _check_method_kind_needs(cfg)
    _check_warm_start(cfg)
    _check_head(cfg)
    _check_requires(cfg, cuda_available)
    _check_device(cfg, cuda_devices)
    _check_results_dir(cfg)
    source = lookup(cfg, "model.source") or {}
    if source.get("path") and lookup(cfg, "model.weights") != "synthetic":  # last: the
        check_model_limits(cfg, Path(str(source["path"])))  # problems above say more


# --------------------------------------------------------------------------- suggestions


@contextmanager
def input_errors_exit() -> Iterator[None]:
    """Turns bad-input errors (config, data, assets) into one stderr line and exit code 2.

    Used around the Hydra task function: these errors are raised before a run starts, so
    no record exists for them and a traceback would only hide the one line that matters.
    """
    try:
        yield
    except INPUT_ERRORS as error:
        exit_with(str(error))
