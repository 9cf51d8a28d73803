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


class DiesAfter(Dataset):
    """Raises on the n-th item fetched: a run killed half-way."""

    def __init__(self, inner, n):
        self.inner, self.n, self.fetched = inner, n, 0
        self.captions = inner.captions

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched > self.n:
            raise Interrupt()
        return self.inner[i]


class Unreadable(Dataset):
    """Every item unreadable: what FolderDataset yields (None) for files that cannot be decoded."""

    def __init__(self, size=16):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return None
