"""peftbench as an installed package: the wheel carries conf/, and every command works from it.

The slow test builds the wheel, installs it (not editable) into a fresh virtual environment
and runs each subcommand from a folder outside the checkout, so nothing can fall back on the
source tree. The environment borrows this one's dependencies through a ``.pth`` line (a
second torch install would take minutes and prove nothing about peftbench).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import tomllib

from tests.conftest import ROOT, tiny_overrides


def test_the_package_list_names_every_package_of_the_tree():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("peftbench", "tasks", "analysis", "hydra_plugins")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found | {"peftbench.conf"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(root / "dist"), str(ROOT)],
        check=True, cwd=root, timeout=300,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("peftbench-*.whl")
    venv.create(root / "env", with_pip=True)
    bin_dir = root / "env" / "bin"
    site = next((root / "env" / "lib").glob("python3*/site-packages"))
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        check=True, timeout=300,
    )  # fmt: skip
    return bin_dir


def _peftbench(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    return subprocess.run(
        [bin_dir / "peftbench", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_every_command_runs_from_the_installed_wheel(installed, tiny_bert_dir, tmp_path):
    work = tmp_path / "elsewhere"  # not the checkout: only the wheel can answer
    work.mkdir()
    results = work / "results"
    tiny = tiny_overrides(tiny_bert_dir, results)
    where = _ok(_peftbench(installed, "run", "--info", "searchpath", cwd=work))
    assert str(installed.parent) in where and str(ROOT / "conf") not in where

    _ok(_peftbench(installed, "run", "-m", "method=lora,bitfit", *tiny, cwd=work))
    records = sorted((results / "records").glob("*__success.json"))
    assert [json.loads(p.read_text())["experiment"]["method"] for p in records] == [
        "bitfit", "lora",
    ]  # fmt: skip
    codes = [json.loads(p.read_text())["code"] for p in records]
    assert codes[0]["git_sha"] is None  # no checkout of its own
    assert len({c["source_digest"] for c in codes}) == 1  # the wheel's files, pinned once

    # a user's own conf/ folder adds a method without forking (Hydra's --config-dir)
    mine = work / "myconf" / "method"
    mine.mkdir(parents=True)
    lora = (ROOT / "conf" / "method" / "lora.yaml").read_text()
    (mine / "mylora.yaml").write_text(lora.replace("name: lora", "name: mylora", 1))
    _ok(_peftbench(installed, "run", "-cd", str(work / "myconf"), "method=mylora", *tiny, cwd=work))
    assert list((results / "records").glob("*--mylora--*__success.json"))

    _ok(_peftbench(installed, "report", "--results", str(results), "--out", "rep", cwd=work))
    assert "lora" in (work / "rep" / "comparison.md").read_text()
    run_id = json.loads(records[1].read_text())["run_id"]
    _ok(_peftbench(installed, "reproduce", run_id, "--results", str(results), cwd=work))
    _ok(_peftbench(installed, "tune", "--methods", "lora", "--trials", "1", "--dry-run", cwd=work))
    grid = _peftbench(
        installed, "benchmark", "grid", "--results", "bench", "--tasks", "polarity", "--dry-run",
        cwd=work,
    )  # fmt: skip
    assert "peftbench run -m +experiment=offline-benchmark task=polarity" in _ok(grid)
    costs = _peftbench(
        installed, "costs", "overhead", "--steps", "2", "--repeats", "1",
        *[o for o in tiny if not o.startswith("results_dir=")], cwd=work,
    )  # fmt: skip
    assert "ratio" in _ok(costs).lower()
    assert "minilm" in _ok(_peftbench(installed, "assets", "list", cwd=work)).lower()
