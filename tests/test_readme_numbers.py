"""The measured numbers the README (and docs/benchmarks.md) quote come from committed results files.

The convention, in the README's "## Measured numbers" section and docs/benchmarks.md's
"## Committed results": one table whose last column, "results file", names the file under
bench/results/<device>/ (in backticks) and, after it, the fields the row quotes:

    | what | result | results file |
    | inference (dgs-small, batch 16) | **1.13x** | `bench/results/amd-epyc-x2/bench_inference.json`: x_torch_eager |

- a measured number is written in bold; it must round from a value of one of the named fields
  ("1.13x" from 1.1298, "759" from 759.42, "3e-7" from 2.6e-7) at the precision it is written with;
- every other number of the row (settings such as "batch 16" or "ViT-B/16") must round from some
  number the file holds, and so must every number in the section's prose (code spans, which are
  names, and link targets aside).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENTS = [("README.md", "Measured numbers"), ("docs/benchmarks.md", "Committed results")]

# A number that is not part of a word or of another number: "1.00x", "B=256", "ViT-B/16", "3e-7";
# not the 32 of "fp32" or the 2 of "x2".
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(\d+(?:\.\d+)?(?:e-?\d+)?)")
BOLD = re.compile(r"\*\*(.+?)\*\*")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next level-2 heading)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise AssertionError(f"no '## {heading}' section")
    return match.group(1)


def table_rows(body: str) -> list[dict]:
    """The rows of the section's table: {"line", "cells" (all but the last), "files", "fields"}.

    The header's last column must be "results file"; a row that names no file, a file that is not
    under bench/results/<device>/, or no field, is an error.
    """
    lines = [line.strip() for line in body.splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        raise AssertionError("no table in the section")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    if header[-1] != "results file":
        raise AssertionError(f"the table's last column is {header[-1]!r}, not 'results file'")
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            raise AssertionError(f"{len(cells)} cells, the header has {len(header)}: {line}")
        files = [ROOT / name for name in re.findall(r"`([^`]+)`", cells[-1])]
        if not files:
            raise AssertionError(f"the row names no results file: {line}")
        for path in files:
            if path.parent.parent != RESULTS:
                raise AssertionError(f"{path} is not a file under bench/results/<device>/: {line}")
        fields = FIELD.findall(CODE_SPAN.sub(" ", cells[-1]))
        if not fields:
            raise AssertionError(f"the row names no field of its results file: {line}")
        rows.append({"line": line, "cells": cells[:-1], "files": files, "fields": fields})
    return rows


def quoted_numbers(text: str) -> list[str]:
    """The numbers a piece of markdown quotes, code spans and link targets left out."""
    return NUMBER.findall(CODE_SPAN.sub(" ", LINK_TARGET.sub("]", text)))


def _walk(value, key=None):
    """(key, number) for every number in a JSON value, numbers inside strings ("ViT-B/16") included."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield key, float(value)
    elif isinstance(value, str):
        for n in NUMBER.findall(value):
            yield key, float(n)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def file_numbers(path: Path, fields=None) -> list[float]:
    """The numbers a JSON results file holds: all of them, or those of the keys named `fields`."""
    pairs = list(_walk(json.loads(path.read_text())))
    if fields is None:
        return [v for _, v in pairs]
    return [v for k, v in pairs if k in fields]


def rounds_from(quoted: str, values: list[float]) -> bool:
    """Whether some value rounds to `quoted` at the precision it is written with."""
    mantissa, _, exponent = quoted.partition("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10.0 ** (int(exponent or 0) - decimals)
    target = float(quoted)
    return any(math.isfinite(v) and abs(v - target) <= unit / 2 * (1 + 1e-9) for v in values)


def row_problems(row: dict) -> list[str]:
    """What in a table row does not come from its results file (empty when all of it does)."""
    text = " | ".join(row["cells"])
    problems = []
    keys = {k for path in row["files"] for k, _ in _walk(json.loads(path.read_text()))}
    problems += [f"field {f!r} is not in the file" for f in row["fields"] if f not in keys]
    measured = [n for span in BOLD.findall(text) for n in quoted_numbers(span)]
    if not measured:
        problems.append("no measured (bold) number")
    values = [v for path in row["files"] for v in file_numbers(path, set(row["fields"]))]
    problems += [f"{n} (bold) does not round from {', '.join(row['fields'])}" for n in measured
                 if not rounds_from(n, values)]
    everything = [v for path in row["files"] for v in file_numbers(path)]
    problems += [f"{n} is not in the file" for n in quoted_numbers(BOLD.sub(" ", text))
                 if not rounds_from(n, everything)]
    return problems


def _rows():
    params = []
    for doc, heading in DOCUMENTS:
        for row in table_rows(section((ROOT / doc).read_text(), heading)):
            params.append(pytest.param(row, id=f"{doc}: {row['cells'][0][:60]}"))
    return params


@pytest.mark.parametrize("doc,heading", DOCUMENTS)
def test_the_table_names_an_existing_results_file_in_every_row(doc, heading):
    rows = table_rows(section((ROOT / doc).read_text(), heading))
    assert len(rows) >= 5
    for row in rows:
        for path in row["files"]:
            assert path.is_file(), f"{doc}: {path.relative_to(ROOT)} does not exist ({row['line']})"


@pytest.mark.parametrize("row", _rows())
def test_every_number_in_a_row_rounds_from_its_results_file(row):
    names = ", ".join(str(p.relative_to(ROOT)) for p in row["files"])
    assert row_problems(row) == [], f"{names}: {row['line']}"


@pytest.mark.parametrize("doc,heading", DOCUMENTS)
def test_numbers_in_the_prose_come_from_the_files_the_table_names(doc, heading):
    body = section((ROOT / doc).read_text(), heading)
    files = sorted({p for row in table_rows(body) for p in row["files"]})
    values = [v for path in files for v in file_numbers(path)]
    prose = "\n".join(line for line in body.splitlines() if not line.strip().startswith("|"))
    assert [n for n in quoted_numbers(prose) if not rounds_from(n, values)] == []


# ---------------------------------------------------------------- the check itself can fail

INFERENCE = "`bench/results/amd-epyc-x2/bench_inference.json`: x_torch_eager"


def _row(result: str, source: str = INFERENCE) -> dict:
    body = f"\n| what | result | results file |\n|---|---|---|\n| dgs-small | {result} | {source} |\n"
    return table_rows(body)[0]


def test_the_check_rejects_a_number_the_results_do_not_hold():
    # onnxruntime vs torch eager, dgs-small, batch 16: x_torch_eager is 1.1298 in this file
    assert row_problems(_row("**1.13x** at batch 16")) == []
    assert row_problems(_row("**0.97x** at batch 16")) == [  # what the README once said
        "0.97 (bold) does not round from x_torch_eager"]
    assert row_problems(_row("**1.130x** at batch 16")) == []  # 1.1298 to three decimals
    assert row_problems(_row("**1.129x** at batch 16")) == [  # a wrong third decimal is caught
        "1.129 (bold) does not round from x_torch_eager"]
    assert row_problems(_row("**1.13x** at batch 32")) == ["32 is not in the file"]
    assert row_problems(_row("1.13x at batch 16")) == ["no measured (bold) number"]
    assert row_problems(_row("**1.13x**", INFERENCE + ", x_torch")) == ["field 'x_torch' is not in the file"]
    assert not rounds_from("3e-7", [3.6e-7]) and rounds_from("4e-7", [3.6e-7])
    assert rounds_from("759", [759.42]) and not rounds_from("760", [759.42])


def test_the_check_rejects_a_row_without_a_results_file():
    with pytest.raises(AssertionError, match="names no results file"):
        _row("**1.5x**", "")
    with pytest.raises(AssertionError, match="names no field"):
        _row("**1.5x**", "`bench/results/amd-epyc-x2/bench_inference.json`")
    with pytest.raises(AssertionError, match="not a file under bench/results"):
        _row("**1.5x**", "`README.md`: ratio")
    with pytest.raises(AssertionError, match="not 'results file'"):
        table_rows("\n| what | result |\n|---|---|\n| a | **1.5x** |\n")
