"""train.precision=auto: bf16 where the hardware multiplies bf16 natively, and ids that say so."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from peftbench.config.identity import recipe, recipe_hash
from peftbench.runner import device as device_module
from peftbench.runner.device import cpu_has_native_bf16, resolve_precision

EPYC_FLAGS = "flags\t\t: fpu vme avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
OLDER_FLAGS = "flags\t\t: fpu vme avx2 avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize(
    ("text", "native"),
    [
        (EPYC_FLAGS, True),
        ("flags\t\t: fpu avx2 amx_tile amx_bf16 amx_int8\n", True),  # Sapphire Rapids
        (OLDER_FLAGS, False),  # AVX-512 without BF16: torch emulates, slower than fp32
        ("processor\t: 0\n", False),  # no flags line at all
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + text)
    assert cpu_has_native_bf16(str(cpuinfo)) is native


def test_a_machine_without_cpuinfo_counts_as_without_bf16(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


@pytest.mark.parametrize(
    ("precision", "kind", "native", "expected"),
    [
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", False, "bf16"),
        ("auto", "cuda:1", False, "bf16"),
        ("auto", "mps", True, "fp32"),
        ("fp32", "cpu", True, "fp32"),  # an explicit choice always wins
        ("bf16", "cpu", False, "bf16"),
    ],
)
def test_auto_resolves_by_device_and_cpu(monkeypatch, precision, kind, native, expected):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision(precision, kind) == expected


def _recipe(compose, kind: str, native: bool, monkeypatch, *overrides: str) -> dict:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    cfg = compose(*overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    precision = resolve_precision(str(cfg.train.precision), kind)
    return recipe(config, device=kind, precision=precision)


def test_auto_keeps_its_old_id_where_it_trains_as_before(compose, monkeypatch):
    """fp32 on a CPU without bf16 and bf16 on CUDA are what auto always meant: the recipe
    keeps the word ``auto``, so every earlier record keeps its id (and is skipped as done)."""
    config = OmegaConf.to_container(compose(), resolve=True)
    assert _recipe(compose, "cpu", False, monkeypatch) == recipe(config, device="cpu")
    assert _recipe(compose, "cuda", False, monkeypatch) == recipe(config, device="cuda")
    assert _recipe(compose, "cpu", False, monkeypatch)["train.precision"] == "auto"


def test_auto_on_a_bf16_cpu_is_another_recipe_than_fp32(compose, monkeypatch):
    """Otherwise a bf16 run would be skipped as done by an fp32 record of the same config."""
    fp32_machine = _recipe(compose, "cpu", False, monkeypatch)
    bf16_machine = _recipe(compose, "cpu", True, monkeypatch)
    assert bf16_machine["train.precision"] == "bf16"
    assert recipe_hash(bf16_machine) != recipe_hash(fp32_machine)
    explicit = _recipe(compose, "cpu", True, monkeypatch, "train.precision=bf16")
    assert recipe_hash(bf16_machine) == recipe_hash(explicit)  # one arithmetic, one id


def test_the_run_trains_in_the_precision_its_recipe_names(compose, monkeypatch):
    import torch

    from peftbench.runner.device import accelerate

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    model = torch.nn.Linear(2, 2)
    train_cfg = compose().train
    assert accelerate(model, torch.device("cpu"), train_cfg) is torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert accelerate(model, torch.device("cpu"), train_cfg) is None
