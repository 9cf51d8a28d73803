"""A small learnable real/fake set held in memory: smooth images vs checkerboard-textured ones."""
import torch
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    def __init__(self, size=48, seed=0, image_size=224):
        gen = torch.Generator().manual_seed(seed)
        base = torch.nn.functional.interpolate(torch.rand(size, 3, 8, 8, generator=gen), size=image_size,
                                               mode="bilinear", align_corners=False)
        self.labels = [i % 2 for i in range(size)]
        yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
        checker = ((yy + xx) % 2).float() * 2 - 1
        self.images = []
        for i, img in enumerate(base):
            if self.labels[i]:
                img = img + 0.35 * checker
            self.images.append((img - 0.5) / 0.25)
        self.captions = [f"a {'generated' if i % 3 == 0 else 'plain'} picture {i % 5}" for i in range(size)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], self.captions[i], f"toy/{i:03d}.png"


class Interrupt(Exception):
    pass


class _ChangesAfter(Dataset):
    """`inner`, until more than n items were fetched (workers=0: items come in the sampler's order)."""

    def __init__(self, inner, n):
        self.inner, self.n, self.fetched = inner, n, 0
        self.captions = inner.captions

    def __len__(self):
        return len(self.inner)

    def _past_n(self) -> bool:
        self.fetched += 1
        return self.fetched > self.n


class DiesAfter(_ChangesAfter):
    """Raises on the n-th item fetched: a run killed half-way."""

    def __getitem__(self, i):
        if self._past_n():
            raise Interrupt()
        return self.inner[i]


class PoisonedFrom(_ChangesAfter):
    """NaN images from the n-th item fetched on: a loss that turns non-finite mid-run."""

    def __getitem__(self, i):
        bad = self._past_n()
        img, y, c, p = self.inner[i]
        return (img * float("nan") if bad else img), y, c, p


class Unreadable(Dataset):
    """Every item unreadable: what FolderDataset yields (None) for files that cannot be decoded."""

    def __init__(self, size=16):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return None
