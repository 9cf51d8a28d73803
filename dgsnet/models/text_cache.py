"""Features of captions from the frozen text tower, each distinct caption encoded once.

The text tower never trains, so a caption's feature is a pure function of
(backbone, weights, caption). Keyed by the tower's fingerprint; optionally
persisted to a safetensors file so later runs and other processes reuse it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import torch

from dgsnet.fileio import atomic_write


class CaptionFeatureCache:
    def __init__(self, encode: Callable[[list[str]], torch.Tensor], key: str, batch_size: int = 256,
                 path: str | None = None):
        """encode: maps a list of captions to (n, D) features; key: identity of the text tower."""
        self.encode = encode
        self.key = key
        self.batch_size = batch_size
        self.path = path
        self._features: dict[str, torch.Tensor] = {}
        self.encoded = 0  # captions sent to the encoder, ever (for tests and logs)
        if path and os.path.exists(path):
            self._load(path)

    def __len__(self) -> int:
        return len(self._features)

    @torch.no_grad()
    def add(self, captions: Sequence[str]) -> None:
        missing = list(dict.fromkeys(c for c in captions if c not in self._features))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            feats = self.encode(chunk).float().cpu()
            self.encoded += len(chunk)
            self._features.update(zip(chunk, feats))

    def features(self, captions: Sequence[str], device=None) -> torch.Tensor:
        """(B, D) float32 features of `captions`, encoding any not seen before."""
        self.add(captions)
        return torch.stack([self._features[c] for c in captions]).to(device)

    def save(self, path: str | None = None) -> None:
        path = path or self.path
        if not path or not self._features:
            return
        from safetensors.torch import save

        captions = list(self._features)
        blob = save({"features": torch.stack([self._features[c] for c in captions]).contiguous()},
                    metadata={"key": self.key, "captions": json.dumps(captions)})
        atomic_write(path, blob)

    def _load(self, path: str) -> None:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("key") != self.key:
                return  # another backbone's cache: ignore, it will be rewritten
            feats = fh.get_tensor("features")
        self._features.update(zip(json.loads(meta["captions"]), feats))
