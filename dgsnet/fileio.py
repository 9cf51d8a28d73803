"""File I/O every part shares: atomic writes with the umask's permissions, and reads of JSON,
safetensors and torch files that fail with one error naming the file. Torch is imported only by
the torch reader."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings


def new_file_mode(existing: str | None = None, executable: bool = False) -> int:
    """The mode a written file gets: an existing file's own, else 0666 (0777 for a script) minus the
    umask, as open() and chmod +x do; mkstemp's 0600 would hide a run's outputs from teammates and
    serving containers."""
    if existing is not None:
        try:
            return stat.S_IMODE(os.stat(existing).st_mode)
        except OSError:
            pass
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if executable else 0o666) & ~mask


def atomic_write(path: str, data: bytes | str, executable: bool = False) -> None:
    """Writes to a temporary file in the same directory, fsyncs, then renames over `path`.
    `executable`: a script, made runnable by whoever may read it (a replaced file keeps its mode)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, new_file_mode(path, executable))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def printable(text: str) -> str:
    """`text` (a path or a folder name) as valid Unicode for reports, CSV and stdout: bytes of a file
    name that are not UTF-8 (which Python keeps as surrogate escapes) are shown as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def read_json(path: str, what: str) -> dict:
    """A JSON object from `path`, or one ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {what}; the file is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, expected {what} (an object)")
    return data


def read_tensors(path: str) -> dict:
    """A safetensors file, or one ValueError naming it (truncated, empty, a forged header)."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable safetensors file ({first}); the file is damaged or "
                         "truncated: restore it, or re-create it") from None


def read_torch_state_dict(path: str, expected: str) -> dict:
    """A state dict from a torch file with torch.load(weights_only=True): no code in it runs.
    A {"state_dict": ...} wrapper and DataParallel's "module." prefixes are undone."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unpickling refusal or a corrupt file
        import pickle

        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            # torch's own text runs to a dozen lines and suggests turning the protection off
            refused = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
            raise ValueError(f"{path}: holds Python objects besides tensors, which could run code when "
                             f"loaded, so it was not loaded{f' ({refused})' if refused else ''}; give "
                             f"{expected}, or re-save its state_dict() with torch.save") from None
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {first}); give {expected}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict; give {expected}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
