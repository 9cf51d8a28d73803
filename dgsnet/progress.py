"""Progress on stderr for training, eval and both predict commands (stdlib + optional tqdm, no torch).

On a terminal: a tqdm bar. Elsewhere (SLURM logs, pipes) a bar's carriage
returns turn into megabytes of noise, so instead one plain line at most every
DGSNET_PROGRESS_SECONDS (default 30) and one at the end, e.g.
"eval: 1200/5000 images (24%), 310 img/s, eta 12 s". `--no-progress` calls
`set_enabled(False)`, which silences every reporter made afterwards in the process.

    with reporter(total, "eval") as bar:
        bar.update(n)              # also: bar.set_postfix({"loss": "0.41"})
    for item in iterate(loader, "eval", total=len(dataset), step=batch_size): ...
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

__all__ = ["ENV_SECONDS", "ProgressSettingError", "iterate", "period_seconds", "reporter", "set_enabled"]

ENV_SECONDS = "DGSNET_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0

_enabled = True


class ProgressSettingError(ValueError):
    pass


def set_enabled(flag: bool) -> bool:
    """Process-wide switch (--no-progress): training, eval and the demo run in-process under one CLI.
    Returns the previous setting, to put back."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def period_seconds() -> float:
    """Seconds between plain progress lines: $DGSNET_PROGRESS_SECONDS, else 30."""
    text = os.environ.get(ENV_SECONDS, "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0:  # also refuses nan
        raise ProgressSettingError(f"{ENV_SECONDS}={text!r}: not a number of seconds >= 0; set it to e.g. 30, "
                                   "or unset it")
    return value


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar(_Silent):
    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_postfix(self, values: dict) -> None:
        self._bar.set_postfix(values)

    def close(self) -> None:
        self._bar.close()


class _Lines(_Silent):
    """Plain lines for logs: no carriage returns, no cursor codes."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, stream, period: float):
        self.total, self.desc, self.unit, self.stream, self.period = total, desc, unit, stream, period
        self.n = self._start_n = initial
        self.postfix: dict = {}
        self._start = self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.period:
            self._last = now
            self._emit(now, final=False)

    def set_postfix(self, values: dict) -> None:
        self.postfix = dict(values)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._emit(time.monotonic(), final=True)

    def line(self, now: float, final: bool) -> str:
        seconds = max(now - self._start, 1e-9)
        rate = (self.n - self._start_n) / seconds
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"{self.desc}: {count} {self.unit}"
        if self.total:
            text += f" ({100.0 * self.n / self.total:.0f}%)"
        text += f", {_rate(rate)} {_short(self.unit)}/s"
        if final:  # a job cut short (an error, Ctrl-C) says so rather than look finished
            cut = self.total and self.n < self.total
            text += f", stopped after {seconds:.0f} s" if cut else f", {seconds:.0f} s"
        elif self.total and rate > 0:
            text += f", eta {max(self.total - self.n, 0) / rate:.0f} s"
        if self.postfix:
            text += ", " + ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return text

    def _emit(self, now: float, final: bool) -> None:
        try:
            print(self.line(now, final), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed log must not stop the job
            pass


def _short(unit: str) -> str:
    return {"images": "img"}.get(unit, unit)


def _rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def reporter(total: int | None, desc: str, *, unit: str = "images", initial: int = 0, enabled: bool = True,
             leave: bool = True, stream=None):
    """An object with update(n), set_postfix(dict), close() (and `with`): a tqdm bar when `stream`
    (default stderr) is a terminal and tqdm is installed, plain periodic lines otherwise, nothing
    when disabled here or process-wide."""
    stream = sys.stderr if stream is None else stream
    if not (enabled and _enabled):
        return _Silent()
    if _is_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:  # optional in the torch-free runtime: fall back to lines
            pass
        else:
            return _Bar(tqdm(total=total, initial=initial, desc=desc, unit=_short(unit), file=stream,
                             dynamic_ncols=True, leave=leave))
    return _Lines(total, desc, unit, initial, stream, period_seconds())


def iterate(iterable: Iterable, desc: str, *, total: int, step: int = 1, unit: str = "images",
            enabled: bool = True, leave: bool = True) -> Iterator:
    """Yields `iterable`'s items, counting `step` per item up to `total` (a loader of batches of
    `step` images counts images, its last short batch included)."""
    done = 0
    with reporter(total, desc, unit=unit, enabled=enabled, leave=leave) as bar:
        for item in iterable:
            yield item
            n = min(step, max(total - done, 0))
            done += n
            bar.update(n)
