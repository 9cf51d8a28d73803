"""Prediction files (JSON lines or CSV) and the one-line summary, shared by `dgsnet-predict` and `dgsnet predict`.

Both commands write the same records, so their files can be diffed: equal
numbers through onnxruntime and through torch are the point of the export.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable

from dgsnet.outputs import OutputError, atomic_sink

__all__ = ["CSV_FIELDS", "FORMATS", "FormatError", "OutputError", "Tally", "progress_bar", "resolve_format",
           "score_and_report", "write_records"]

FORMATS = ("jsonl", "csv")
_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
#: The CSV header: every field a record can have (an error record fills `path` and `error` only).
CSV_FIELDS = ("path", "logit", "probability", "label", "error")


class FormatError(ValueError):
    pass


def resolve_format(fmt: str | None, out: str | None) -> str:
    """--format, else the one --out's suffix names (.csv; .jsonl, .json, .ndjson), else jsonl (also on
    stdout). An explicit --format that the suffix contradicts is an error, not a silent surprise."""
    implied = _SUFFIX_FORMATS.get(os.path.splitext(out)[1].lower()) if out else None
    if fmt is None:
        return implied or "jsonl"
    if fmt not in FORMATS:
        raise FormatError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if implied is not None and implied != fmt:
        raise FormatError(f"--format {fmt} contradicts --out {out} (a {implied} name); name the file "
                          f"*.{fmt}, or drop --format")
    return fmt


def _flatten(record: dict, prefix: str = "") -> dict:
    """Nested values become dotted columns ({"a": {"b": 1}} -> {"a.b": 1}), so a CSV row holds every field."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class _CsvRows:
    """Writes records as CSV rows under the fixed header; floats as repr, so they read back exactly."""

    def __init__(self, sink):
        self._writer = csv.DictWriter(sink, fieldnames=CSV_FIELDS, lineterminator="\n")
        self._writer.writeheader()

    def __call__(self, record: dict) -> None:
        row = _flatten(record)
        extra = sorted(set(row) - set(CSV_FIELDS))
        if extra:  # the header is written first, so a new field cannot be added mid-stream
            raise RuntimeError(f"a prediction record has fields the CSV header lacks: {extra}")
        self._writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


@dataclass
class Tally:
    labels: tuple[str, str]
    scored: int = 0
    errors: int = 0
    per_label: dict = field(default_factory=dict)

    def add(self, record: dict) -> None:
        if "error" in record:
            self.errors += 1
        else:
            self.scored += 1
            self.per_label[record["label"]] = self.per_label.get(record["label"], 0) + 1

    def summary(self, *, threshold: float, seconds: float, engine: str, skipped: int = 0,
                out: str | None = None) -> str:
        """e.g. '5 images scored (2 generated, 3 real at threshold 0.5), 1 unreadable; 12.3 images/s on ...'."""
        negative, positive = self.labels
        rate = self.scored / seconds if seconds > 0 else 0.0
        text = (f"{self.scored} images scored ({self.per_label.get(positive, 0)} {positive}, "
                f"{self.per_label.get(negative, 0)} {negative} at threshold {threshold:g}), "
                f"{self.errors} unreadable")
        if skipped:
            text += f", {skipped} non-image files in folders skipped"
        text += f"; {rate:.1f} images/s on {engine}"
        return text + (f"; lines in {out}" if out else "")


def write_records(records: Iterable[dict], out: str | None, labels: tuple[str, str], fmt: str = "jsonl") -> Tally:
    """Writes each record as one strict JSON line (no NaN/Infinity), or as a CSV row under a header
    (`fmt` "csv"), to `out`, or streams it to stdout.

    `out` is written atomically: the lines go to a temporary file in the same folder that is
    renamed over `out` once every record is written, so a failed or interrupted run leaves any
    previous file as it was and no partial one. An unreadable file's error line is printed to
    stderr as well, and the batch goes on.
    """
    tally = Tally(labels=tuple(labels))

    def cannot_write(exc: OSError) -> OutputError:
        return OutputError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable file")

    with contextlib.ExitStack() as stack:
        sink = sys.stdout
        if out:
            try:
                sink = stack.enter_context(atomic_sink(out))
            except OSError as exc:
                raise cannot_write(exc) from None
        try:
            write_csv = _CsvRows(sink) if fmt == "csv" else None
        except OSError as exc:
            raise cannot_write(exc) from None
        for record in records:
            try:
                if write_csv is not None:
                    write_csv(record)
                else:
                    sink.write(json.dumps(record, allow_nan=False) + "\n")
                sink.flush()
            except OSError as exc:
                raise cannot_write(exc) from None
            if "error" in record:
                print(f"skipped {record['error']}", file=sys.stderr)
            tally.add(record)
        if out:
            try:
                stack.close()  # the rename: only now does `out` change
            except OSError as exc:
                raise cannot_write(exc) from None
    return tally


def progress_bar(total: int, enabled: bool, prog: str):
    """Progress of scoring `total` images on stderr (dgsnet.progress: a bar on a terminal, plain lines
    in logs and pipes, nothing when disabled)."""
    from dgsnet.progress import reporter

    return reporter(total, prog, enabled=enabled)


def score_and_report(found, logits_fn, preprocess, *, labels: tuple[str, str], threshold: float,
                     batch_size: int, workers: int | None, out: str | None, progress: bool, prog: str,
                     pixel_budget=None,
                     engine: str, fmt: str = "jsonl") -> Tally:
    """What both predict commands do once they have an engine: score `found` (an InputList) with
    progress on stderr, write the records (`fmt`: jsonl or csv) to `out` (or stdout) and print the
    summary line to stderr."""
    import time

    from dgsnet.scoring import iter_predictions

    bar = progress_bar(len(found.paths), progress, prog)
    start = time.perf_counter()
    try:
        records = iter_predictions(found.paths, logits_fn, preprocess, labels=labels, threshold=threshold,
                                   batch_size=batch_size, workers=workers, progress=bar,
                                   pixel_budget=pixel_budget)
        tally = write_records(records, out, labels, fmt)
    finally:
        bar.close()
    print(f"{prog}: " + tally.summary(threshold=threshold, seconds=time.perf_counter() - start,
                                      engine=engine, skipped=len(found.skipped), out=out), file=sys.stderr)
    return tally
