"""records.redact.scrub: secret-named values and secret environment values are redacted."""

from __future__ import annotations

from peftbench.records.redact import REDACTED, is_secret_key, scrub

ENV = {
    "WANDB_API_KEY": "0123456789abcdef",
    "DB_PASSWORD": "hunter2hunter2",
    "TOKENIZERS_PARALLELISM": "false",  # matches *TOKEN* but is a flag, not a secret
    "HOME": "/root/not-a-secret",
}


def test_secret_keys_are_judged_by_their_last_word() -> None:
    for key in ("api_key", "WANDB_API_KEY", "apikey", "hfToken", "access-token", "client_secret",
                "DB_PASSWORD", "tracker.api_key", "secret"):  # fmt: skip
        assert is_secret_key(key), key
    for key in ("tokens_per_s", "token_dim", "num_virtual_tokens", "keyword", "pad_token",
                "key_padding", "head_modules", 3, None):  # fmt: skip
        assert not is_secret_key(key), key


def test_scrub_redacts_by_key_and_by_environment_value() -> None:
    record = {
        "config": {
            "tracker": {"api_key": "zzz"},
            "train": {"lr": 0.1},
            "password": None,
            "client_secret": {"a": ["x", 2]},
        },
        "cost": {
            "tokens_per_s": 1500.0,
            "flops_per_token": 9000,
            "note": "train.flops_per_token=9",
        },
        "error": "401 for https://x/?k=0123456789abcdef",
        "experiment": {"overrides": ["seed=1", "tracker.api_key=zzz", "db=hunter2hunter2"]},
        "flags": ("false", 1, True),
    }
    clean = scrub(record, ENV)
    assert clean["config"]["tracker"]["api_key"] == REDACTED
    assert clean["config"]["password"] is None  # nothing to hide
    assert clean["config"]["client_secret"] == {"a": [REDACTED, 2]}
    assert clean["config"]["train"] == {"lr": 0.1} and clean["cost"] == record["cost"]
    assert clean["error"] == f"401 for https://x/?k={REDACTED}"
    assert clean["experiment"]["overrides"] == [
        "seed=1",
        f"tracker.api_key={REDACTED}",
        f"db={REDACTED}",
    ]
    assert clean["flags"] == ("false", 1, True)  # short env values are never replaced
    assert record["config"]["tracker"]["api_key"] == "zzz"  # the input is untouched


def test_scrub_reads_os_environ_by_default(monkeypatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdefgh-1234")
    assert scrub("curl -H 'Bearer tok-abcdefgh-1234'") == f"curl -H 'Bearer {REDACTED}'"
