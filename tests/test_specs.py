"""The method specs and the architecture table are the one place their facts live.

Each test here breaks when a fact is declared somewhere else, declared wrongly, or not at all:
a native method function without its spec line, a prompt-learning flag that disagrees with
peft, a config check that branches on a method's name instead of reading its spec.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftbench.config.checks import validate
from peftbench.errors import ConfigError
from peftbench.methods import specs
from peftbench.models import architectures
from tests.conftest import METHOD_YAMLS, ROOT, tiny_overrides

NATIVE_MODULES = ("adapters", "baselines", "hybrid", "peft_backend", "quantized", "selective")


def _method_functions() -> set[str]:
    """Every public ``f(model, cfg, ctx)`` defined in the methods package, as module:name."""
    found = set()
    for stem in NATIVE_MODULES:
        module = importlib.import_module(f"peftbench.methods.{stem}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            params = list(inspect.signature(fn).parameters)
            mine = fn.__module__ == module.__name__ and not name.startswith("_")
            if mine and params == ["model", "cfg", "ctx"]:
                found.add(f"{module.__name__}:{name}")
    return found


def test_every_method_function_is_declared_in_the_spec_list_and_every_spec_resolves():
    declared = {s.apply for s in specs.METHOD_SPECS}
    declared |= {s.analytic_size for s in specs.METHOD_SPECS if s.analytic_size}
    assert _method_functions() == declared  # a function without its spec line fails here
    kinds = [s.kind for s in specs.METHOD_SPECS]
    assert len(set(kinds)) == len(kinds), "a method kind is declared twice"
    for spec in specs.METHOD_SPECS:
        assert callable(spec.applier())
        assert spec.sizer() is None or callable(spec.sizer())


@pytest.mark.parametrize("yaml", METHOD_YAMLS, ids=lambda p: p.stem)
def test_every_method_yaml_names_a_declared_kind(yaml):
    assert OmegaConf.load(yaml).kind in specs.kinds()


def test_an_unknown_kind_names_the_nearest_one():
    with pytest.raises(KeyError, match="Did you mean houlsby"):
        specs.spec("houlsbi")


def test_the_prompt_learning_flags_agree_with_peft():
    """Every peft type, including those no YAML uses yet: a new prompt-learning type that
    peft adds fails here until it is declared in PEFT_TYPES."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    types = {peft_type.value: config for peft_type, config in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    assert set(specs.PEFT_TYPES) <= set(types)
    for name, config_class in types.items():
        prompt_learning = issubclass(config_class, peft.PromptLearningConfig)
        assert specs.peft_type(name).prompt_learning == prompt_learning, name


def _cfg(method_kind: str, task_kind: str, family: str) -> dict:
    return {
        "method": {"name": "m", "kind": method_kind, "lr": 1e-3},
        "task": {"name": "t", "kind": task_kind},
        "model": {"name": "x", "family": family},
    }


def test_the_config_check_reads_head_only_from_the_spec(monkeypatch):
    """A new head-only kind is refused where there is no head with no change to config.py."""
    probe = specs.MethodSpec("probe2", "peftbench.methods.baselines:linear_probe", head_only=True)
    monkeypatch.setattr(specs, "_BY_KIND", {**specs._BY_KIND, "probe2": probe})
    with pytest.raises(ConfigError, match="trains only a task head"):
        validate(_cfg("probe2", "translation", "encoder_decoder"))
    validate(_cfg("probe2", "classification", "encoder"))
    validate(_cfg("full", "translation", "encoder_decoder"))


def test_an_undeclared_kind_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match=r"unknown method kind 'lora' \(method.kind\); valid"):
        validate(_cfg("lora", "classification", "encoder"))


@pytest.mark.parametrize(
    ("family", "task_kind", "served"),
    [
        ("encoder", "classification", True),
        ("encoder", "token_classification", True),
        ("encoder", "translation", False),
        ("encoder_decoder", "translation", True),
        ("encoder_decoder", "token_classification", False),
        ("decoder", "token_classification", True),
        ("decoder", "translation", True),
        ("encoder", "regression", True),  # a kind no family refuses is open to all
    ],
)
def test_the_family_table_decides_which_task_kinds_a_model_serves(family, task_kind, served):
    cfg = _cfg("full", task_kind, family)
    if served:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match="choose a model whose family is"):
            validate(cfg)


def test_every_role_has_a_pattern_and_every_pattern_compiles():
    import re

    for role in architectures.ROLES:
        patterns = architectures.block_patterns(role)
        assert patterns and all(re.compile(p) for p in patterns)
    assert architectures.layer_stack_patterns()
    with pytest.raises(KeyError, match="unknown block role"):
        architectures.block_patterns("mlp")


def test_per_type_peft_targets_come_from_the_architecture_entry():
    from peftbench.methods.base import MethodContext
    from peftbench.methods.peft_backend import peft_args

    ia3 = OmegaConf.load(ROOT / "conf/method/ia3.yaml")
    lora = OmegaConf.load(ROOT / "conf/method/lora.yaml")
    bert = MethodContext(["classifier"], "SEQ_CLS", "roberta")
    llama = MethodContext(["score"], "SEQ_CLS", "llama")
    warm = MethodContext([], "SEQ_2_SEQ_LM", "encoder-decoder")
    entry = architectures.for_model_type("roberta")
    assert (
        peft_args(ia3, bert)["target_modules"],
        peft_args(ia3, bert)["feedforward_modules"],
    ) == (entry.ia3_targets)
    assert "target_modules" not in peft_args(lora, llama)  # peft's own default
    assert peft_args(lora, warm)["target_modules"] == (
        architectures.for_model_type("encoder-decoder").peft_targets
    )


def test_a_copy_of_lora_yaml_under_a_new_name_runs_with_no_other_change(tiny_bert_dir, tmp_path):
    """README "Adding things": a peft method is one YAML; nothing else names it."""
    from hydra import compose, initialize_config_dir

    from peftbench.runner import experiment
    from tests.test_methods import test_every_method_yaml_cites_a_paper_and_declares_its_size_knob

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    copy = conf / "method" / "lora_copy.yaml"
    copy.write_text(
        (ROOT / "conf/method/lora.yaml").read_text().replace("name: lora", "name: lora_copy")
    )
    test_every_method_yaml_cites_a_paper_and_declares_its_size_knob(copy)

    results = tmp_path / "results"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "config", overrides=tiny_overrides(tiny_bert_dir, results, "method=lora_copy")
        )
    summary = experiment.run(cfg)
    assert summary["status"] == "success"
    record = json.loads(next(Path(results, "records").glob("*lora_copy*.json")).read_text())
    assert record["experiment"]["method"] == "lora_copy" and record["params"]["trainable"] > 0
