"""Prediction files: --format jsonl|csv, chosen by the --out suffix unless given; CSV holds the JSONL's fields."""
import csv
import io
import json
import os

import pytest

from dgsnet.cli import main as dgsnet_main
from dgsnet_export.runtime.cli import main as onnx_predict
from dgsnet_export.runtime.records import CSV_FIELDS, FormatError, resolve_format


@pytest.fixture(scope="module")
def inputs(photo_dir, tmp_path_factory):
    """Three photos and one unreadable image: every kind of record."""
    folder = tmp_path_factory.mktemp("inputs")
    for p in sorted(photo_dir.iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "9_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return folder


def _rows(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames) == CSV_FIELDS
    return list(reader)


def _same(row: dict, record: dict) -> None:
    """A CSV row says what its JSON line says: the same fields, numbers exactly, the rest empty."""
    assert set(CSV_FIELDS) >= set(record)
    for field in CSV_FIELDS:
        if field not in record:
            assert row[field] == ""
        elif isinstance(record[field], float):
            assert float(row[field]) == record[field]
        else:
            assert row[field] == str(record[field])


@pytest.mark.parametrize("name,fmt,expected", [
    ("p.csv", None, "csv"), ("p.CSV", None, "csv"), ("p.jsonl", None, "jsonl"), ("p.ndjson", None, "jsonl"),
    ("p.json", None, "jsonl"), ("p.txt", None, "jsonl"), (None, None, "jsonl"), (None, "csv", "csv"),
    ("p.txt", "csv", "csv"), ("p.csv", "csv", "csv")])
def test_the_format_follows_the_flag_then_the_suffix(name, fmt, expected):
    assert resolve_format(fmt, name) == expected


@pytest.mark.parametrize("name,fmt", [("p.jsonl", "csv"), ("p.csv", "jsonl"), ("p.json", "csv")])
def test_a_format_the_suffix_contradicts_is_refused(name, fmt):
    with pytest.raises(FormatError, match=f"--format {fmt} contradicts --out {name}"):
        resolve_format(fmt, name)


def test_onnx_predict_writes_csv_for_a_csv_name_with_the_jsonl_fields(fp32_export, inputs, tmp_path, capsys):
    model = str(fp32_export[0])
    common = [model, str(inputs), "--provider", "cpu", "--no-progress", "--batch-size", "2"]
    assert onnx_predict([*common, "--out", str(tmp_path / "p.jsonl")]) == 1  # 1: the broken file
    assert onnx_predict([*common, "--out", str(tmp_path / "p.csv")]) == 1
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = _rows((tmp_path / "p.csv").read_text())
    assert len(rows) == len(records) == 4
    for row, record in zip(rows, records):
        _same(row, record)
    assert [r["error"] != "" for r in rows] == [False, False, False, True]
    assert "9_broken.png" in rows[-1]["path"] and rows[-1]["logit"] == ""
    capsys.readouterr()
    assert onnx_predict([*common, "--format", "csv"]) == 1  # stdout, chosen by the flag
    assert _rows(capsys.readouterr().out) == rows


def test_a_contradicting_format_is_one_error_line_before_anything_is_written(fp32_export, run_dir, inputs,
                                                                             tmp_path, capsys):
    out = tmp_path / "p.csv"
    code = onnx_predict([str(fp32_export[0]), str(inputs), "--out", str(out), "--format", "jsonl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--format jsonl contradicts --out" in err[0]
    assert not out.exists()
    code = dgsnet_main(["predict", "--ckpt", str(run_dir), str(inputs), "--out", str(out),
                        "--format", "jsonl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "contradicts" in err[0] and not out.exists()


def test_torch_predict_writes_the_same_csv_rows_as_its_jsonl(run_dir, inputs, tmp_path):
    common = ["predict", "--ckpt", str(run_dir), str(inputs), "--no-progress"]
    assert dgsnet_main([*common, "--out", str(tmp_path / "t.jsonl")]) == 1
    assert dgsnet_main([*common, "--out", str(tmp_path / "t.csv"), "--format", "csv"]) == 1
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    rows = _rows((tmp_path / "t.csv").read_text())
    assert len(rows) == len(records) == 4
    for row, record in zip(rows, records):
        _same(row, record)
    assert oct(os.stat(tmp_path / "t.csv").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
