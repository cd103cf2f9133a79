"""Bad input around the runs: command-line tools, long CSV fields, unwritable results."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftbench import cli
from peftbench.config.checks import validate
from peftbench.errors import ConfigError, DataError
from tasks.readers import CSV_FIELD_LIMIT, _table_records


@pytest.mark.parametrize(
    "argv",
    [["tune", "--methods", "lora,lorra", "--dry-run"], ["costs", "overhead", "method=lorra"]],
)
def test_tools_refuse_an_unknown_method_in_one_line(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peftbench: error: unknown method 'lorra'")
    assert "did you mean lora" in err[0]


def test_a_long_document_in_a_csv_reads_and_an_overlong_field_is_one_line(tmp_path, monkeypatch):
    long_text = "word " * 40_000  # 200 kB: over csv's default limit of 128 KiB
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",pos\n', encoding="utf-8")
    ((row_no, row),) = list(_table_records(path, "csv"))
    assert row_no == 1 and row["text"] == long_text
    monkeypatch.setattr("tasks.readers.CSV_FIELD_LIMIT", 1000)
    with pytest.raises(
        DataError, match=r"long.csv: row 1 \(line 2\): not readable as CSV .*fix the row"
    ):
        list(_table_records(path, "csv"))
    assert CSV_FIELD_LIMIT == 64 * 2**20


def test_results_dir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    # root may write anywhere, so the denial is simulated where the check writes its probe
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(ConfigError, match="is not writable .* give results_dir a folder"):
        validate({"results_dir": str(tmp_path / "results")})


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda r: (r / "records").write_text("x"), "records is a file, not a folder; move it"),
        (
            lambda r: (r / "records").symlink_to(r / "gone"),
            "records is a dangling symlink .*; remove it or point it at a folder",
        ),
    ],
    ids=["records-a-file", "records-dangling-symlink"],
)
def test_a_records_folder_that_cannot_take_records_is_refused_before_training(
    tmp_path, make, expected
):
    results = tmp_path / "results"
    results.mkdir()
    make(results)
    with pytest.raises(ConfigError, match=expected):
        validate({"results_dir": str(results)})


def test_results_dir_that_cannot_be_created_is_refused():
    with pytest.raises(ConfigError, match=r"results_dir=/proc/foo is not writable"):
        validate({"results_dir": "/proc/foo"})
    with pytest.raises(ConfigError, match=r"\(5000 characters\) cannot be used"):
        validate({"results_dir": "/tmp/" + "x" * 4995})


@pytest.mark.parametrize(
    "name",
    ["a/b", "../up", "x" * 200, "with space", ""],
    ids=["slash", "dots", "long", "space", "empty"],
)
def test_a_name_that_cannot_name_files_is_refused(name):
    with pytest.raises(ConfigError, match=r"method.name must be a name of letters, digits"):
        validate({"method": {"name": name}})


def _table(tmp_path, rows: list[str]) -> Path:
    path = tmp_path / "table.csv"
    path.write_text("text,label\n" + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def test_a_csv_with_an_unclosed_quote_is_refused_with_its_line_not_half_read(tmp_path):
    rows = [f"example {i},pos" for i in range(200)]
    rows[100] = '"example 100 with a stray quote,pos'  # line 102: header + 101 rows
    with pytest.raises(DataError, match=r"table.csv: row 101 \(line 102\): .*never closed"):
        list(_table_records(_table(tmp_path, rows), "csv"))


def test_csv_rows_with_text_after_a_quote_or_extra_fields_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"row 2 \(line 3\): not readable as CSV"):
        list(_table_records(_table(tmp_path, ["a,pos", '"b" c,pos']), "csv"))
    with pytest.raises(DataError, match=r"row 2 \(line 3\): 3 fields but the header has 2"):
        list(_table_records(_table(tmp_path, ["a,pos", "b, c,pos"]), "csv"))


def test_a_jsonl_line_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n["b", "neg"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl: row 2: a JSON list, not an object"):
        list(_table_records(path, "jsonl"))
