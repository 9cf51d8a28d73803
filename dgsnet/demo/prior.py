"""The demo's pretrained stand-in for CLIP: a small open_clip model trained contrastively, offline.

DGS-Net protects what a pretrained encoder already knows. The demo has no download, so it makes a
prior of its own: both towers of a small open_clip model are trained with open_clip's ClipLoss on
pairs of (photo crop after generic low-level operations, a caption naming the operations), e.g.
"a photo, resampled from 60% size with a bicubic filter, JPEG quality 30". The text tower then means
something, and the image tower has learned what detail, noise and compression look like.

The operations are not the generator families of the test set (dgsnet.demo.families): they
degrade an image by standard tools (PIL's resampling filters at non-integer factors, Gaussian blur,
Gaussian noise, JPEG, unsharp masking, colour and brightness), never by an integer-factor
upsampling decoder with fixed "learned" kernels, which is what every family is (PRIOR_VS_FAMILIES).

The trained weights are cached in the run folder (prior.safetensors + prior.json); a re-run with the
same parameters reuses them.
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

#: bump when the prior's data or training changes for the same parameters
PRIOR_FORMAT = 1
WEIGHTS = "prior.safetensors"
RECORD = "prior.json"
PRIOR_VS_FAMILIES = (
    "the prior was pretrained on photos degraded by standard tools (PIL resampling at 40-80% size, blur, "
    "noise, JPEG, sharpening, colour); every test family instead re-synthesises a 2x- or 4x-downsampled "
    "crop with an integer-factor upsampling decoder of its own (transposed convolution, pixel shuffle, "
    "nearest + blur, cubic + noise + median, bilinear + JPEG). Shared by both: lost fine detail, and JPEG "
    "in bilinear_jpeg")


@dataclass
class PriorConfig:
    model: str = "dgs-tiny"
    seed: int = 0
    pool: int = 1024  # distinct (image, caption) pairs, made once
    steps: int = 400
    batch_size: int = 64  # every batch holds distinct captions (ClipLoss has one positive per row)
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.1
    size: int = 256  # side of a crop before patch selection


# ---------------------------------------------------------------- the pretraining operations
_RESAMPLE = {"box": Image.BOX, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def _resample(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    fraction = float(rng.choice([0.4, 0.6, 0.8]))  # never 1/2 or 1/4: the families' factors
    name = list(_RESAMPLE)[rng.integers(len(_RESAMPLE))]
    side = img.size[0]
    small = max(1, int(round(side * fraction)))
    out = img.resize((small, small), _RESAMPLE[name]).resize((side, side), _RESAMPLE[name])
    return out, f"resampled from {round(fraction * 100)}% size with a {name} filter"


def _blur(img, rng):
    sigma = float(rng.choice([0.7, 1.6]))
    return img.filter(ImageFilter.GaussianBlur(sigma)), "slightly blurred" if sigma < 1 else "blurred"


def _noise(img, rng):
    sigma = float(rng.choice([4.0, 12.0]))
    noisy = np.asarray(img, np.float64) + rng.normal(0.0, sigma, (img.size[1], img.size[0], 1))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)), ("with faint noise" if sigma < 8
                                                                                 else "noisy")


def _jpeg(img, rng):
    quality = int(rng.choice([30, 60, 90]))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB"), f"JPEG quality {quality}"


def _sharpen(img, rng):
    return img.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=2)), "sharpened"


def _colour(img, rng):
    if rng.random() < 0.5:
        return ImageEnhance.Color(img).enhance(1.8), "with boosted colours"
    return ImageEnhance.Brightness(img).enhance(0.6), "darkened"


OPERATIONS = (_resample, _blur, _noise, _jpeg, _sharpen, _colour)


def degraded_pair(photo: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random size x size crop of `photo` (HxWx3 uint8) after 0-2 operations, and its caption."""
    h, w = photo.shape[:2]
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    img = Image.fromarray(photo[top:top + size, left:left + size])
    words = []
    for k in rng.permutation(len(OPERATIONS))[: rng.integers(0, 3)]:
        img, word = OPERATIONS[k](img, rng)
        words.append(word)
    return np.asarray(img), "a photo" + "".join(", " + word for word in words)


def make_pool(cfg: PriorConfig) -> tuple[np.ndarray, list[str]]:
    """cfg.pool pretraining pairs: (N, 3, 224, 224) float32 tiles (patch-selected and normalised as
    the detector's inputs are) and N captions."""
    from dgsnet.demo.photos import load_photos
    from dgsnet.image.preprocess import normalize, select_patches

    photos = load_photos(min_side=cfg.size)
    rng = np.random.default_rng([0x9410, cfg.seed])
    tiles, captions = [], []
    for _ in range(cfg.pool):
        pixels, caption = degraded_pair(photos[rng.integers(len(photos))].pixels, cfg.size, rng)
        tiles.append(normalize(select_patches(pixels, rng)))
        captions.append(caption)
    return np.stack(tiles), captions


# ---------------------------------------------------------------- training
def _distinct_caption_batches(captions: list[str], batch_size: int, rng: np.random.Generator):
    by_caption: dict[str, list[int]] = {}
    for index, caption in enumerate(captions):
        by_caption.setdefault(caption, []).append(index)
    keys = sorted(by_caption)
    size = min(batch_size, len(keys))
    while True:
        chosen = rng.choice(len(keys), size, replace=False)
        yield [int(rng.choice(by_caption[keys[k]])) for k in chosen]


def train_prior(cfg: PriorConfig, log=print) -> tuple[dict, dict]:
    """Trains the prior; returns (CLIP state dict, record with the loss curve and timings)."""
    import torch
    from open_clip.loss import ClipLoss

    from dgsnet.models import BackboneSpec
    from dgsnet.models.backbone import create_clip, tokenizer

    start = time.perf_counter()
    tiles, captions = make_pool(cfg)
    pool_seconds = time.perf_counter() - start
    torch.manual_seed(cfg.seed)
    spec = BackboneSpec(cfg.model, None, init_seed=cfg.seed)
    model = create_clip(spec).train()
    images = torch.from_numpy(tiles)
    tokens = tokenizer(spec)(captions)
    # logit_scale stays at CLIP's initial 1/0.07: learning it on a few hundred captions lets the
    # loss collapse to log(batch) (all similarities equal) in the first steps
    model.logit_scale.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    # AdamW (decoupled weight decay), spelt as Adam's flag: the oldest supported torch has both
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    loss_fn = ClipLoss()
    batches = _distinct_caption_batches(captions, cfg.batch_size, np.random.default_rng([0x9411, cfg.seed]))
    losses = []
    for step in range(cfg.steps):
        scale = min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * scale
        index = torch.tensor(next(batches))
        image_features, text_features, logit_scale = model(images[index], tokens[index])[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        if not torch.isfinite(loss):
            raise RuntimeError(f"demo prior: the contrastive loss became {loss.item()} at step {step}; "
                               "lower PriorConfig.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"  prior step {step + 1}/{cfg.steps}: contrastive loss {losses[-1]:.3f} "
                f"(chance {math.log(len(index)):.3f})")
    record = {"format": PRIOR_FORMAT, "config": asdict(cfg), "distinct_captions": len(set(captions)),
              "loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])),
              "chance_loss": math.log(min(cfg.batch_size, len(set(captions)))),
              "pool_seconds": pool_seconds, "seconds": time.perf_counter() - start}
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, record


def prior_weights(out_dir: str, cfg: PriorConfig, log=print) -> tuple[str, dict]:
    """The prior's weights file under `out_dir` (trained now, or reused when the cached one was made
    with the same parameters) and its record."""
    from safetensors.torch import save

    from dgsnet.fileio import atomic_write

    weights, record_path = os.path.join(out_dir, WEIGHTS), os.path.join(out_dir, RECORD)
    wanted = {"format": PRIOR_FORMAT, "config": asdict(cfg)}
    if os.path.isfile(weights) and os.path.isfile(record_path):
        try:
            with open(record_path, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            record = {}
        if {k: record.get(k) for k in wanted} == wanted:
            return weights, {**record, "reused": True}
    os.makedirs(out_dir, exist_ok=True)
    state, record = train_prior(cfg, log)
    atomic_write(weights, save(state))
    # the record last: it marks the weights as complete
    atomic_write(record_path, (json.dumps(record, indent=1) + "\n").encode())
    return weights, {**record, "reused": False}
