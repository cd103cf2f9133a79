"""Keeps secrets out of records, reports and wandb: ``scrub(obj)`` returns a redacted copy.

Two rules, applied to any JSON-like tree (dicts, lists, tuples, strings, scalars):

1. A text value whose key names a secret is replaced by :data:`REDACTED` (numbers are
   measurements, never credentials: ``flops_per_token`` stays). A key names a secret
   when its last word ends with KEY, TOKEN, SECRET or PASSWORD (``wandb_api_key``,
   ``hfToken``, ``DB-PASSWORD``, ``apikey``). The last word, not any substring, so that
   measurements and settings such as ``tokens_per_s``, ``token_dim`` or ``keyword`` are
   kept; tokenizer special tokens (``pad_token``...) are not secrets either. The same rule
   applies to ``name=value`` pairs inside strings (Hydra overrides, command lines).
2. Any string containing the value of a secret-looking environment variable (its *name*
   matches the patterns as a substring, e.g. ``WANDB_API_KEY``, ``HF_TOKEN``) has that value
   replaced, wherever it appears: in an override, a command line, a URL, an error message.
   Values shorter than :data:`MIN_SECRET_LEN` are ignored: flags such as
   ``TOKENIZERS_PARALLELISM=false`` match the name pattern but hide nothing, and replacing
   every ``false`` or ``1`` in a record would destroy it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDACTED = "***REDACTED***"
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MIN_SECRET_LEN = 8

# Word boundaries inside identifiers: separators and lower->upper camel-case steps.
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# ``name=value`` inside a string: a Hydra override, an environment assignment, a CLI flag.
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][\w.\-]*)=(?P<value>[^\s'\"]+)")
# Tokenizer settings (pad_token: "[PAD]") that the TOKEN rule would otherwise hide.
_SPECIAL_TOKENS = frozenset({"PAD", "CLS", "SEP", "EOS", "BOS", "UNK", "MASK"})


def is_secret_key(key: object) -> bool:
    """Whether a mapping key (or the name in a ``name=value`` pair) names a secret.

    Args:
        key: The key; non-strings never name a secret. A dotted name (``tracker.api_key``)
            is judged by its last component.

    Returns:
        True if the value under this key must be redacted.
    """
    if not isinstance(key, str):
        return False
    words = [w.upper() for w in _WORD_SPLIT.split(key.rsplit(".", 1)[-1]) if w]
    if not words or (len(words) == 2 and words[0] in _SPECIAL_TOKENS and words[1] == "TOKEN"):
        return False
    return any(words[-1].endswith(secret) for secret in SECRET_WORDS)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret, longest first.

    Args:
        environ: The environment to read (default ``os.environ``).

    Returns:
        Distinct values at least :data:`MIN_SECRET_LEN` long; longest first so that a secret
        containing another secret is replaced whole.
    """
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if any(word in name.upper() for word in SECRET_WORDS) and len(value) >= MIN_SECRET_LEN
    }
    return sorted(values, key=lambda v: (-len(v), v))


def scrub(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Returns a copy of ``obj`` with secrets redacted (see the module docstring).

    Args:
        obj: A JSON-like tree: a record, a config, a row of a report, or a plain string.
        environ: The environment whose secret-looking values are removed (default
            ``os.environ``); read once per call.

    Returns:
        The same structure (tuples stay tuples) with secret values replaced by
        :data:`REDACTED`; the input is not modified.
    """
    return _scrub(obj, secret_env_values(environ))


def _scrub(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, REDACTED)
        return _ASSIGNMENT.sub(_redact_assignment, obj)
    if isinstance(obj, Mapping):
        return {
            key: _redact(value) if is_secret_key(key) else _scrub(value, secrets)
            for key, value in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(_scrub(item, secrets) for item in obj)
    return obj


def _redact(value: Any) -> Any:
    """Every text under a secret key; numbers, booleans and None carry no credential."""
    if isinstance(value, str):
        return REDACTED
    if isinstance(value, Mapping):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(item) for item in value)
    return value


def _redact_assignment(match: re.Match[str]) -> str:
    if is_secret_key(match["name"]) and not _is_number(match["value"]):
        return f"{match['name']}={REDACTED}"
    return match[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def scrub_file(path: Path) -> None:
    """Rewrites a text file (a YAML or a log) with its secrets redacted, atomically.

    YAML is parsed and dumped again, so that a secret under a secret-looking key
    (``api_key: ...``) is caught as well as one spelt ``name=value`` or an environment
    secret's value anywhere.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        clean = yaml.safe_dump(scrub(yaml.safe_load(text)), sort_keys=False, allow_unicode=True)
    else:
        clean = scrub(text)
    if clean != text:
        tmp = path.with_name(f".{path.name}.scrub")
        tmp.write_text(clean, encoding="utf-8")
        os.replace(tmp, path)


class ScrubFilter(logging.Filter):
    """A logging filter that redacts secrets from every message before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True
