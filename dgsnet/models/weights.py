"""Whether an open_clip pretrained tag's weights can be had, decided in a second, not after a minute.

Without network, open_clip (through huggingface_hub) retries its download for about a minute before
failing. Here the tag is resolved to the file open_clip would fetch, the local cache is looked at,
and only when the file is not there is the host probed, once, with a short timeout.
"""
from __future__ import annotations

import os
import threading
import urllib.error
import urllib.parse
import urllib.request

PROBE_SECONDS = 3.0
_reachable: dict[str, str | None] = {}  # host -> None (reachable) or why not: one probe a process


class WeightsUnavailableError(RuntimeError):
    pass


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now: huggingface_hub reads it once, at import."""
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def hf_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def source(model: str, tag: str) -> dict | None:
    """Where open_clip gets `tag` of `model`: {"hf": repo id, "files": names tried in order} or
    {"url": url, "file": its cache path}; None for a tag open_clip does not know (it says so itself)."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg or "file" in cfg:
        return None
    if cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():  # open_clip prefers the hub
        repo, name = os.path.split(cfg["hf_hub"])
        name = name or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if name == HF_WEIGHTS_NAME else \
            name[:-4] + ".safetensors" if name.endswith((".bin", ".pth")) else None
        return {"hf": repo, "files": [f for f in (safe, name) if f]}
    if cfg.get("url"):
        return {"url": cfg["url"], "file": os.path.join(os.path.expanduser("~/.cache/clip"),
                                                        os.path.basename(cfg["url"]))}
    return None


def cached_file(where: dict) -> str | None:
    """The local copy of `where`'s weights, if there is one."""
    if "url" in where:
        return where["file"] if os.path.isfile(where["file"]) else None
    from huggingface_hub import try_to_load_from_cache

    for name in where["files"]:
        found = try_to_load_from_cache(where["hf"], name, cache_dir=hf_cache_dir())
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why `url`'s host cannot be reached (None: it answered). One HEAD request, no retries, bounded
    by `timeout` even while a name lookup hangs (it runs in a thread)."""
    parts = urllib.parse.urlsplit(url)
    host = f"{parts.scheme}://{parts.netloc}"
    if host in _reachable:
        return _reachable[host]
    result = [f"no answer within {timeout:g} s"]

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(host, method="HEAD"), timeout=timeout).close()
            result[0] = None
        except urllib.error.HTTPError:  # an HTTP status is an answer
            result[0] = None
        except Exception as exc:  # noqa: BLE001 - any failure to connect means unreachable
            reason = getattr(exc, "reason", exc)
            result[0] = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    _reachable[host] = result[0]
    return result[0]


def check_available(model: str, tag: str | None) -> str | None:
    """Fails at once when the weights of an open_clip `tag` are neither cached nor downloadable.
    Returns the cached file (None when it will be downloaded, or `tag` is no open_clip tag)."""
    if not tag:
        return None
    where = source(model, tag)
    if where is None:
        return None
    found = cached_file(where)
    if found:
        return found
    if "hf" in where:
        name, place = f"{hf_endpoint()}/{where['hf']}", f"cache {hf_cache_dir()}"
        if hf_offline():
            why = "HF_HUB_OFFLINE=1 is set"
        else:
            failure = unreachable(hf_endpoint())
            why = failure and f"{hf_endpoint()} cannot be reached ({failure})"
    else:
        name, place = where["url"], f"cache {where['file']}"
        failure = unreachable(where["url"])
        why = failure and f"it cannot be reached ({failure})"
    if why is None:
        return None
    raise WeightsUnavailableError(
        f"--pretrained {tag} ({model}): the weights ({name}) are not in the local {place} and {why}. "
        "Ways on: --pretrained none (random init, for tests), --pretrained /path/to/weights.bin|.safetensors "
        "(a local file), or run once online to fill the cache (then HF_HUB_OFFLINE=1 runs from it)")
