"""JSON-lines output of predictions and the one-line summary, shared by `dgsnet-predict` and `dgsnet predict`.

Both commands write the same records, so their files can be diffed: equal
numbers through onnxruntime and through torch are the point of the export.
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import Iterable

from dgsnet.outputs import OutputError, atomic_sink

__all__ = ["OutputError", "Tally", "progress_bar", "score_and_report", "write_records"]


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


def write_records(records: Iterable[dict], out: str | None, labels: tuple[str, str]) -> Tally:
    """Writes each record as one strict JSON line (no NaN/Infinity) to `out`, or streams it to stdout.

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
        for record in records:
            line = json.dumps(record, allow_nan=False) + "\n"
            try:
                sink.write(line)
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
    """A tqdm bar on stderr when it is a terminal (tqdm is optional for the runtime), else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc=prog)


def score_and_report(found, logits_fn, preprocess, *, labels: tuple[str, str], threshold: float,
                     batch_size: int, workers: int | None, out: str | None, progress: bool, prog: str,
                     pixel_budget=None,
                     engine: str) -> Tally:
    """What both predict commands do once they have an engine: score `found` (an InputList) with a
    progress bar, write the JSON lines to `out` (or stdout) and print the summary line to stderr."""
    import time

    from dgsnet.scoring import iter_predictions

    bar = progress_bar(len(found.paths), progress, prog)
    start = time.perf_counter()
    try:
        records = iter_predictions(found.paths, logits_fn, preprocess, labels=labels, threshold=threshold,
                                   batch_size=batch_size, workers=workers, progress=bar,
                                   pixel_budget=pixel_budget)
        tally = write_records(records, out, labels)
    finally:
        if bar is not None:
            bar.close()
    print(f"{prog}: " + tally.summary(threshold=threshold, seconds=time.perf_counter() - start,
                                      engine=engine, skipped=len(found.skipped), out=out), file=sys.stderr)
    return tally
