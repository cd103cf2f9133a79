"""Tokenized splits cached on disk by content fingerprint.

The key covers everything that can change the encoded features: the task's data fingerprint
(task version + every example), the task config (fields, max length, ...), the tokenizer's full
serialisation, and ENCODING_VERSION (bump it when encoding code changes). A second run on the
same (model, task) reads JSON instead of tokenizing; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ENCODING_VERSION = 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's complete definition (vocabulary, normaliser, special tokens)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Truncation and padding are call-time state that encoding itself sets: not identity.
        definition.pop("truncation", None)
        definition.pop("padding", None)
        h.update(json.dumps(definition, sort_keys=True).encode())
    else:  # slow tokenizers: the vocabulary and the special tokens define the encoding
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(tokenizer.padding_side).encode())
    return h.hexdigest()


def cache_key(task: Any, split: str, tokenizer: Any) -> str:
    task_cfg = json.dumps(OmegaConf.to_container(task.cfg, resolve=True), sort_keys=True)
    parts = [
        str(ENCODING_VERSION),
        task.fingerprint,
        split,
        task_cfg,
        tokenizer_fingerprint(tokenizer),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_encode(
    encode: Callable[[], list[dict]], *, key: str, cache_dir: Path | None
) -> tuple[list[dict], dict]:
    """Returns the encoded features (from the cache when present) and what happened.

    Args:
        encode: computes the features when the cache has none.
        key: from :func:`cache_key`.
        cache_dir: folder of cached encodings; None disables the cache.

    Returns:
        (features, info) where info = {"hit": bool, "seconds": time to load or encode}.
    """
    start = time.perf_counter()
    path = cache_dir / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            features = json.loads(path.read_text())
            return features, {"hit": True, "seconds": time.perf_counter() - start}
        except (OSError, json.JSONDecodeError):
            pass  # a damaged entry is re-encoded and overwritten
    features = encode()
    if path is not None:
        _write_json_atomic(path, features)
    return features, {"hit": False, "seconds": time.perf_counter() - start}
