"""Captions for the text branch: a JSON file of {image path: caption}.

Which file: `--captions FILE.json` when given, else `<root>/captions.json`,
else the published DGS-Net location `<root.parent>_text/<root.name>.json`
(e.g. `AIGIBench/train` -> `AIGIBench_text/train.json`).

Which key an image gets: its path relative to the root or its absolute path
on this machine (exact matches), else the key sharing the longest path suffix
with the image, compared folder by folder from the file name upward (at least
the file name must match). This accepts the published files, whose keys are
absolute paths on the authors' machine. A tie between keys for one image is
an error (CaptionsError naming the image and the keys); when several images
best match one key, the closest image takes it and a tie is an error too.

Images without a caption get a label-free template ("a photo", or "a photo
of a <class>" in ProGAN-style folders): the template must not leak the
label into the text branch. How many got a real caption is logged once per
dataset; the trainer refuses a captions file that leaves too many images on
the template (TrainConfig.caption_max_template).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .layouts import Sample

log = logging.getLogger("dgsnet.data")

DEFAULT_FILE = "captions.json"
TEXT_FOLDER_SUFFIX = "_text"  # published: <parent>_text/<split>.json next to <parent>/<split>
_SHOWN = 3  # example paths / keys quoted in messages


class CaptionsError(ValueError):
    """The captions file cannot be used; the message names it and the expected format."""


def template_caption(group: str) -> str:
    return f"a photo of a {group}" if group else "a photo"


def load_captions(path) -> dict[str, str]:
    """Read a captions JSON file: an object mapping image paths to caption strings (keys normalised)."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: captions file does not exist; pass an existing JSON file or leave it unset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptionsError(f"{path}: not valid JSON ({exc}); expected {{\"0_real/img.png\": \"a caption\", ...}}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CaptionsError(f"{path}: expected a JSON object of image path (relative to the dataset root, "
                            "or absolute) -> caption string")
    return {_key(k): v for k, v in data.items()}


def _key(path: str) -> str:
    key = path.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _parts(key: str) -> list[str]:
    """Path components of a normalised key or posix path (empty and "." components dropped)."""
    parts = key.split("/")
    if not parts[0]:  # absolute path: drop the empty first component
        del parts[0]
    if "" in parts or "." in parts:
        parts = [p for p in parts if p and p != "."]
    return parts


def candidate_files(root) -> list[Path]:
    """The files looked for when no captions file is given, in order of preference."""
    root = Path(root).expanduser()
    out = []
    for folder in (Path(os.path.abspath(root)), root.resolve()):
        out.append(folder / DEFAULT_FILE)
        if folder.name and folder.parent != folder:
            out.append(folder.parent.parent / f"{folder.parent.name}{TEXT_FOLDER_SUFFIX}" / f"{folder.name}.json")
    return list(dict.fromkeys(out))


def find_captions_file(root, captions=None) -> Path | None:
    """`captions` when given, else <root>/captions.json, else <root.parent>_text/<root.name>.json, else None."""
    if captions:
        return Path(captions)
    return next((path for path in candidate_files(root) if path.is_file()), None)


def caption_table(root, captions=None) -> tuple[dict[str, str], Path | None]:
    """The captions of the file `find_captions_file` picks (empty when none) and that file."""
    file = find_captions_file(root, captions)
    if file is None:
        return {}, None
    table = load_captions(file)
    log.info("%s: captions from %s (%d entries)", root, file, len(table))
    return table, file


class CaptionIndex:
    """The keys of a captions table, for lookup by longest common path suffix (built on first need).

    Keys are grouped by file name; a group with several keys gets a trie of
    their parent folders (file name upward), built on its first lookup, so one
    lookup costs the depth of the image path, not the number of keys.
    """

    def __init__(self, table: dict[str, str], file: Path | None = None, skip: set[str] | frozenset = frozenset()):
        """`skip`: keys not to match (those an image matched exactly)."""
        self.table, self.file, self.skip = table, file, skip
        self._keys: list[str] | None = None
        self._by_name: dict[str, list[int] | int] = {}
        self._tries: dict[str, _Node | int] = {}

    def _build(self) -> None:
        keys = self._keys = [key for key in self.table if key not in self.skip] if self.skip else list(self.table)
        by_name: dict[str, list[int] | int] = {}
        for i, key in enumerate(keys):
            name = key[key.rfind("/") + 1:]
            if not name or name == ".":  # "dir/" or "a/.": take the last real component
                parts = _parts(key)
                if not parts:
                    continue
                name = parts[-1]
            group = by_name.get(name)
            if group is None:
                by_name[name] = i  # most names are unique: an int, not a list
            elif type(group) is int:
                by_name[name] = [group, i]
            else:
                group.append(i)
        self._by_name = by_name

    def suffix(self, path: str) -> tuple[str | None, int, list[str]]:
        """For a posix image path: (key, n, []) of the unique key sharing the most trailing components
        with it, where it shares at least n (the exact count: `common_suffix`); (None, 0, []) when no
        key has its file name; (None, n, first tied keys) when several share exactly n, the most."""
        if self._keys is None:
            self._build()
        name = path[path.rfind("/") + 1:]
        node = self._by_name.get(name)
        if node is None:
            return None, 0, []
        depth = 1
        if type(node) is not int:
            trie = self._tries.get(name)
            if trie is None:
                trie = self._tries[name] = _trie(node, 1, {i: _parts(self._keys[i]) for i in node})
            node = trie
            if type(node) is not int:
                parts = path.rsplit("/", node.height + 1)  # only the components the walk can reach
                size = len(parts)
                while type(node) is not int:
                    child = node.children.get(parts[-1 - depth]) if depth < size else None
                    if child is None:  # every key below shares exactly `depth` components: a tie
                        return None, depth, [self._keys[i] for i in node.first]
                    node, depth = child, depth + 1
        return self._keys[node], depth, []


def common_suffix(path: str, key: str) -> int:
    """How many trailing path components `path` and `key` share."""
    a, b = _parts(path), _parts(key)
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class _Node:
    __slots__ = ("children", "first", "height")

    def __init__(self, children: dict, first: list[int], height: int):
        self.children, self.first, self.height = children, first, height


def _trie(ids: list[int], depth: int, parts: dict[int, list[str]]) -> _Node | int:
    """Trie over keys `ids` that share their last `depth` components; a leaf is one key's index."""
    if len(ids) == 1:
        return ids[0]
    split: dict[str, list[int]] = {}
    for i in ids:
        if len(parts[i]) > depth:
            split.setdefault(parts[i][-1 - depth], []).append(i)
    children = {name: _trie(sub, depth + 1, parts) for name, sub in split.items()}
    height = 1 + max((c.height if type(c) is _Node else 0 for c in children.values()), default=0)
    return _Node(children, ids[:_SHOWN + 2], height)


@dataclass
class CaptionAssignment:
    """One caption per sample and how each was found."""
    captions: list[str]
    exact: int = 0  # matched by relative or absolute path
    suffix: int = 0  # matched by longest common path suffix
    unmatched: list[str] = field(default_factory=list)  # image paths on the template caption
    ambiguous: list[str] = field(default_factory=list)  # (eval only) on the template because of a tie

    @property
    def missing(self) -> int:
        return len(self.unmatched)

    @property
    def matched(self) -> int:
        return self.exact + self.suffix


def _fix(root, file) -> str:
    return (f"fix: key the captions in {file} by the image path relative to {root} "
            "(e.g. \"car/0_real/00012.png\") or by its absolute path on this machine, "
            "or keep enough parent folders in each key to tell the images apart, "
            "or pass the right file with --captions")


def assign_captions(samples: Sequence[Sample], root, table: dict[str, str] | CaptionIndex,
                    strict: bool = True) -> CaptionAssignment:
    """One caption per sample: its entry keyed by the path relative to `root` or by the absolute path,
    else the key with the longest common path suffix (file name upward), else the template.

    A key matched exactly belongs to that image; a key that is the best suffix match of several
    images goes to the one sharing the most components. Ties (one image, several best keys; or one
    key, several best images) are a CaptionsError when `strict` (training), else the template (eval).
    """
    index = table if isinstance(table, CaptionIndex) else CaptionIndex(table)
    table = index.table
    root = Path(root).resolve()
    to_posix = (lambda p: p.replace(os.sep, "/")) if os.sep != "/" else (lambda p: p)
    prefix = to_posix(str(root)).rstrip("/") + "/"
    result = CaptionAssignment(captions=[None] * len(samples))
    captions = result.captions
    if not table:
        result.captions = [template_caption(s.group) for s in samples]
        result.unmatched = [s.path for s in samples]
        return result
    exact_keys: set[str] = set()
    rest: list[tuple[int, str]] = []  # (sample index, posix path) of samples without an exact key
    for n, sample in enumerate(samples):
        absolute = to_posix(sample.path)
        if absolute.startswith(prefix):
            relative = absolute[len(prefix):]
        else:
            relative = Path(os.path.relpath(sample.path, root)).as_posix()
        text = table.get(relative)
        key = relative
        if text is None:  # absolute keys work too (files listed by a captioning tool)
            text, key = table.get(absolute), absolute
        if text is not None:
            captions[n] = text
            result.exact += 1
            exact_keys.add(key)
        else:
            rest.append((n, absolute))
    # suffix matching among the keys no image matched exactly: a key naming one image is not
    # handed to a look-alike of it, and look-alikes of two matched images do not tie
    finder = CaptionIndex(table, index.file, skip=exact_keys) if rest and exact_keys else index
    claims: dict[str, int] = {}  # suffix-matched key -> the sample matching it
    shared: dict[str, list[int]] = {}  # key -> every sample matching it, when several do
    for n, absolute in rest:
        key, length, tied = finder.suffix(absolute)
        if key is not None:
            first = claims.setdefault(key, n)
            if first != n:
                shared.setdefault(key, [first]).append(n)
        elif tied:
            if strict:
                shown = ", ".join(repr(k) for k in tied[:_SHOWN])
                raise CaptionsError(
                    f"{index.file or 'captions'}: image {samples[n].path} matches several caption keys equally "
                    f"well (same last {length} path components), e.g. {shown}; refusing to guess its caption; "
                    + _fix(root, index.file))
            result.ambiguous.append(samples[n].path)
    for key, n in claims.items():
        takers = shared.get(key)
        if takers:  # the image sharing the most components takes it
            lengths = [common_suffix(to_posix(samples[i].path), key) for i in takers]
            length = max(lengths)
            winners = [i for i, m in zip(takers, lengths) if m == length]
            if len(winners) > 1:
                if strict:
                    shown = ", ".join(samples[i].path for i in winners[:_SHOWN])
                    raise CaptionsError(
                        f"{index.file or 'captions'}: caption key {key!r} is the closest key of {len(winners)} "
                        f"images equally (same last {length} path components), e.g. {shown}; refusing to guess "
                        "which image it belongs to; " + _fix(root, index.file))
                result.ambiguous.extend(samples[i].path for i in winners)
                continue
            n = winners[0]
        captions[n] = table[key]
        result.suffix += 1
    for n, sample in enumerate(samples):
        if captions[n] is None:
            captions[n] = template_caption(sample.group)
            result.unmatched.append(sample.path)
    return result


def report_captions(missing: int, total: int, root, file: Path | None, exact: int = 0, suffix: int = 0,
                    ambiguous: int = 0) -> None:
    """Log, once per dataset, how many images got a caption from the file and how many the template."""
    if file is None:
        if total:
            log.warning("%s: no captions file (%s, or %s); all %d images use the template caption; pass "
                        "--captions FILE.json (image path -> caption) to feed the text branch", root,
                        DEFAULT_FILE, f"<parent>{TEXT_FOLDER_SUFFIX}/<split>.json", total)
        return
    how = f"{exact} by relative/absolute path, {suffix} by longest common path suffix"
    if not missing:
        log.info("%s: all %d images of %s have a caption (%s)", file, total, root, how)
        return
    tie = f"; {ambiguous} of them match several keys equally well" if ambiguous else ""
    log.warning("%s: %d of %d images have no caption and use the template caption; %d have one (%s)%s",
                file, missing, total, total - missing, how, tie)


def check_template_fraction(assignment: CaptionAssignment, total: int, root, file: Path | None,
                            max_fraction: float) -> None:
    """CaptionsError when a captions file is in use and more than `max_fraction` of the images got the
    template caption (a wrong or mismatched file would otherwise train the text branch on templates)."""
    if file is None or not total:
        return
    missing = assignment.missing
    if missing / total <= max_fraction or math.isclose(missing / total, max_fraction):
        return
    shown = ", ".join(assignment.unmatched[:_SHOWN])
    raise CaptionsError(
        f"{file}: {missing} of {total} images of {root} ({missing / total:.1%}) have no caption in it and "
        f"would train the text branch on the template caption, above --caption-max-template {max_fraction:g}; "
        f"e.g. {shown}. Fix: check that {file} is the captions file of {root} (keys: image path relative to "
        "the root, absolute path, or any path ending in the same folders and file name), pass the right "
        "file with --captions FILE.json, or raise --caption-max-template (1 accepts any fraction)")
