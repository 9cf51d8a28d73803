"""Where a command may write: never over its own inputs, and never half a file.

`check_output(out, inputs, what)` runs before any model is loaded: it refuses an
output path that cannot be created (under a file, in a read-only folder), that is (or resolves to, through symbolic or hard links) an input
file or the model, an existing file inside an input folder or the run
directory (a new file there is fine, except the run's own file names), or an
existing directory. `atomic_sink(out)` opens a temporary file next to
`out` that replaces it only when the writer finishes.

Torch-free: used by the library's jobs (evaluate, train) and by the exported runtime (dgsnet_export).
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import Iterable, Iterator, TextIO

from dgsnet.fileio import new_file_mode


class OutputError(ValueError):
    """An output file cannot, or must not, be written (one line: both paths and the fix)."""


def _is_under(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives (Windows)
        return False


def _stat(path: str):
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _input_items(inputs) -> Iterator[tuple[str, str | None]]:
    for item in inputs:
        if isinstance(item, tuple):
            path, role = item
        else:
            path, role = item, None
        if path is not None:
            yield os.fspath(path), role


def _hard_link_in(folder: str, target) -> str | None:
    """A file under `folder` that is the same file as `target` (an os.stat result), or None."""
    for dirpath, _dirs, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = _stat(path)
            if st is not None and os.path.samestat(st, target):
                return path
    return None


#: The files of a dgsnet run directory (and its resume folders): never an output of another command.
RUN_FILES = frozenset({"model.safetensors", "model.json", "config.yaml", "log.txt", "log.jsonl",
                       "backbone.json", "backbone.safetensors", "caption_cache.safetensors"})
RUN_FOLDERS = frozenset({"resume", "resume.old", "resume.tmp"})


def _would_destroy(out: str, folder: str, out_stat) -> bool:
    """Writing `out` inside input `folder` destroys something: it exists (it may be an input), or it
    is where a run directory keeps its own files. A new file next to the inputs is harmless."""
    if out_stat is not None:
        return True
    parts = os.path.relpath(out, folder).split(os.sep)
    return parts[0] in RUN_FOLDERS or (len(parts) == 1 and parts[0] in RUN_FILES)


def check_creatable(path, what: str = "--out", *, option: str = "--out") -> None:
    """Refuses a path that cannot be created: a component of it is a file, or the deepest existing
    folder is not writable. Checked before any work, so the error is not met after an hour's run."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise OutputError(f"{what} {path}: {folder} is a file, not a folder; choose another {option}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: the folder {folder} is not writable by this user; "
                          f"choose another {option} or fix the folder's permissions")


def check_output(out, inputs: Iterable, what: str = "--out", *, option: str = "--out") -> None:
    """Raises OutputError if writing `out` could destroy one of `inputs`, or if `out` is a directory.

    inputs: paths, or (path, role) pairs such as (model, "the model"); a folder (an input folder or a
    run directory) protects every file inside it. `what` names the output in the message ("--out",
    "the export record"); `option` is the flag the user should change. `out=None` (stdout) passes.
    """
    if out is None:
        return
    out = os.fspath(out)
    fix = f"choose another {option}"
    if os.path.isdir(out):
        raise OutputError(f"{what} {out} is an existing directory; {fix} (a file name)")
    check_creatable(out, what, option=option)
    out_abs, out_real = os.path.abspath(out), os.path.realpath(out)
    out_stat = _stat(out) or _stat(out_abs)  # "missing/../a.png" names a.png too
    linked = out_stat is not None and stat.S_ISREG(out_stat.st_mode) and out_stat.st_nlink > 1
    for path, role in _input_items(inputs):
        in_abs, in_real = os.path.abspath(path), os.path.realpath(path)
        if os.path.isdir(path):
            role = role or "the input folder"
            inside = _is_under(out_abs, in_abs) or _is_under(out_real, in_real)
            if inside and _would_destroy(out_real if _is_under(out_real, in_real) else out_abs,
                                         in_real if _is_under(out_real, in_real) else in_abs, out_stat):
                how = "is an existing file inside" if out_stat is not None else "is a checkpoint file of"
                if not _is_under(out_abs, in_abs):
                    how = f"resolves to {out_real}, inside"
                raise OutputError(f"{what} {out} {how} {role} {path}, which this command reads; "
                                  f"{fix}, outside that folder or under a new name")
            if linked:
                twin = _hard_link_in(path, out_stat)
                if twin is not None:
                    raise OutputError(f"{what} {out} is a hard link to {twin} in {role} {path}, which this "
                                      f"command reads; {fix}")
            continue
        role = role or "the input file"
        in_stat = _stat(path) if out_stat is not None else None
        if out_abs == in_abs:
            how = "is"
        elif out_real == in_real or (in_stat is not None and os.path.samestat(out_stat, in_stat)):
            how = ("is a hard link to" if out_real != in_real else
                   "is a link to" if os.path.islink(out) else "is the same file as")
        else:
            continue
        raise OutputError(f"{what} {out} {how} {role} {path}; writing there would destroy it: {fix}")


@contextlib.contextmanager
def atomic_sink(out, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text file to write `out` through: a temporary file in the same folder, renamed over `out`
    when the block ends without an exception (fsynced first). On any exception, KeyboardInterrupt
    included, the temporary file is removed and a previous `out` is left as it was.

    A symbolic link at `out` is written through (its target is replaced); an existing non-regular
    file (/dev/null, a pipe) is written directly, as renaming over it would replace the device.
    """
    out = os.fspath(out)
    target = os.path.realpath(out) if os.path.islink(out) else out
    existing = _stat(target)
    if existing is not None and not stat.S_ISREG(existing.st_mode) and not stat.S_ISDIR(existing.st_mode):
        with open(target, "w", encoding=encoding) as sink:
            yield sink
        return
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(target))
    try:
        os.chmod(tmp, new_file_mode(target))
        with os.fdopen(fd, "w", encoding=encoding) as sink:
            fd = None
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
