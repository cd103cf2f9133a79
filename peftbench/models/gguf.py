"""GGUF checkpoints, dequantized once to fp32 safetensors and cached by the file's sha256.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=name)`` and
dequantizes every tensor to the requested dtype. That takes 15-70 s on a CPU for the offline
decoders (SmolLM2-135M, Gemma-3-270M), and the model it returns is flagged as quantized
(``save_pretrained`` refuses it, peft treats it specially). So the first use converts the file
to a plain folder, ``<cache>/dequantized/<sha256[:16]>-fp32/`` (config, ``model.safetensors``,
tokenizer), and every run loads that folder like any other safetensors model (under a second).

The folder depends only on the GGUF bytes (and the pinned transformers/gguf versions, noted in
the marker file): runs before and after the cache exists load bit-identical weights, and the
conversion runs with the random state saved and restored, so head initialisation is the same.
Delete the folder to rebuild it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from peftbench.assets import file_sha256

MARKER_NAME = "peftbench-dequantized.json"


def dequantized_dir(gguf: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns the cached fp32 safetensors folder of a GGUF file, converting it on first use.

    Args:
        gguf: The GGUF file.
        cache_dir: Cache root override (default ``$PEFTBENCH_CACHE`` or ~/.cache/peftbench).

    Returns:
        A folder that ``AutoModelFor*.from_pretrained`` and ``AutoTokenizer`` load directly.
    """
    from peftbench.assets import cache_root

    sha = file_sha256(gguf)
    folder = cache_root(cache_dir) / "dequantized" / f"{sha[:16]}-fp32"
    if (folder / MARKER_NAME).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        _convert(gguf, staging, sha)
        try:
            os.rename(staging, folder)
        except OSError:  # another process published it first; its copy is identical
            if not (folder / MARKER_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path, sha: str) -> None:
    """Dequantizes ``gguf`` into ``out`` as a plain causal LM; the marker is written last."""
    import torch
    import transformers

    print(
        f"peftbench: dequantizing {gguf.name} to fp32 safetensors (first use only)",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    # Loading may draw random numbers (e.g. for an absent lm_head); keep the caller's stream
    # untouched so a run's head initialisation does not depend on whether the cache existed.
    with torch.random.fork_rng(devices=[]):
        kwargs = {"gguf_file": gguf.name}
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, **kwargs, dtype=torch.float32
        )
    _forget_quantization(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {
        "gguf": gguf.name,
        "gguf_sha256": sha,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "convert_s": round(time.perf_counter() - start, 1),
    }
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=1), encoding="utf-8")


def _forget_quantization(model: object) -> None:
    """The weights are already dequantized fp32 tensors; drop the "quantized by GGUF" flags
    so that ``save_pretrained`` writes a plain checkpoint (it refuses GGUF-quantized models).
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
