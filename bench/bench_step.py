"""The whole stage-2 training step (images -> student and teacher features -> objective ->
backward -> optimizer step): images/s and peak memory (GPU only: torch.cuda's peak allocation;
"n/a (CPU)" on the CPU, where no allocator statistics exist), side by side in one run.

Part 1, the step on pre-made tensors (same images, labels and captions for all):
  published       the structure of the published DGS-Net code, written here from its
                  description: a separate frozen teacher copy of the image tower; the text tower
                  run on the batch's captions every step (tokenise + encode); q, k, v as separate
                  nn.Linear layers with CLIP-LoRA-style LoRA (the D x D product B A formed on
                  every call, dropout on the LoRA input) around scaled-dot-product attention;
                  float32 without autocast; the surgery by torch.autograd.grad on the two frozen
                  heads plus a tensor hook on the features; Adam
  floor           plain LoRA + teacher forward: dgsnet's student forward, the teacher forward,
                  BCE of the student head, backward, Adam (no text, no surgery): the floor the
                  DGS step is measured against (target: feature step <= 1.05x of it)
  none/feature/layer/both
                  dgsnet's step per surgery mode (bench/common.py dgs_step: what StageTrainer
                  runs), bf16 autocast on a GPU, fp32 on the CPU; `+compile` rows compile the
                  image encoder as --compile does (a second model, so both run in one process)
Before timing, published and dgsnet's feature step are checked to compute the same loss and
the same LoRA gradients from the same weights (dropout off), or the script stops.

Part 2, with data (a folder of JPEG photos, scikit-image's samples as crops; the same files):
  data path cost per image, one thread: published (PIL decode, the published per-patch
  selection loop, shuffle + flip, ToTensor + Normalize) vs dgsnet's FolderDataset item
  dgsnet loop     the real train_dgs (StageTrainer.fit with its DataLoader, --workers) after a
                  one-step stage 1, images/s from the trainer's own log records at a realistic
                  cadence: --log-every = --steps, so the device is read once per window as in a
                  real run (--log-every 1 would force a host read every step and hide the cost of
                  a per-step sync); the first window(s) (>= --warmup steps) are warm-up, the rate is
                  that of the following window of --steps steps; patches selected where --patch-selection
                  auto puts them (the device on a GPU, the DataLoader workers on the CPU), and a
                  second row with the other site
  published loop  the published step fed by a DataLoader (same workers) over the published
                  data path, images/s per step after --warmup steps
The two loops take turns, --loop-rounds times (default 3; --quick 1), and part 1's steps take
turns in --rounds rounds (default 5); a rate is the median over its rounds. Loop vs published
loop is the median of the rounds' own ratios (listed per round, `*_rounds`); feature vs floor
the median of 40 step-by-step pairs (order alternating; quartiles in the JSON), with the
rounds' ratios listed too: on a shared machine a load change between two competitors' runs then
does not read as a difference between them.
Ratios: dgsnet loop vs published loop (both with data paths), loop vs model-only (the loop's
images/s over the feature step's on pre-made tensors), feature step vs floor. The issue's three
targets get a pass/fail line each (JSON `targets`, and the `*_pass` ratios): loop vs published loop
>= 2.5; the loop within 1.2x of the model-only step (images/s ratio >= 1/1.2); feature step vs
floor <= 1.05. In the rows,
`x_published` is a speed-up (the published time over this one: > 1 is faster) and `x_floor` a
cost (this time over the floor's: the feature step's target is <= 1.05).

On a GPU the default model is ViT-L-14 (random init), batch 32 (the published batch), and
--max-batch also finds the largest batch that fits for the published, floor, none, feature,
layer and both steps (doubling until out of memory, then bisection between the last batch that
fitted and the first that did not, to a multiple of 8) and times them there.

    python bench/bench_step.py [--quick] [--device cpu|cuda] [--model dgs-small] [--batch 16]
                               [--steps N] [--no-compile] [--max-batch] [--workers W] [--out DIR]
"""
from __future__ import annotations

import os

# One BLAS thread per process, as bench_data.py: the data paths are measured per core, and the
# loops' DataLoader workers inherit it (patch selection's DFT runs on BLAS; with a thread per core
# in every worker, a busy 2-core machine measured it 4 to 15x slower).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from common import (add_threads_option, base_parser, device_name, dgs_step, interleaved_times, paired_ratio,  # noqa: E402
                    markdown_table, peak_memory_bytes, photo_jpegs, resolve_device, results_dir,
                    set_threads, synchronize, time_call, write_results)

MODES = ("none", "feature", "layer", "both")
LAM, EPS = 0.2, 1e-6  # the published code's weight of the alignment term and norm epsilon


# ------------------------------------------------------------------ the published structure

class PublishedLoRALinear(nn.Module):
    """A frozen projection plus CLIP-LoRA's update as the published code computes it:
    dropout(x) @ (B A)^T * alpha / sqrt(r), with the full D x D product B A formed on every call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rank: int, alpha: float,
                 dropout: float):
        super().__init__()
        out_features, in_features = weight.shape
        self.base = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            self.base.weight.copy_(weight)
            if bias is not None:
                self.base.bias.copy_(bias)
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / math.sqrt(rank)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.lora_B @ self.lora_A
        return self.base(x) + (self.dropout(x) @ delta.t()) * self.scale


class PublishedAttention(nn.Module):
    """Self-attention with q, k, v, out as separate nn.Linear layers (LoRA on q, k, v) around
    F.scaled_dot_product_attention, replacing a packed nn.MultiheadAttention."""

    def __init__(self, mha: nn.MultiheadAttention, rank: int, alpha: float, dropout: float):
        super().__init__()
        dim = mha.embed_dim
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        b = b.detach() if b is not None else None
        self.q_proj, self.k_proj, self.v_proj = (
            PublishedLoRALinear(w[i * dim:(i + 1) * dim], None if b is None else b[i * dim:(i + 1) * dim],
                                rank, alpha, dropout) for i in range(3))
        self.proj = copy.deepcopy(mha.out_proj).requires_grad_(False)
        self.heads, self.batch_first = mha.num_heads, mha.batch_first

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        x = query if self.batch_first else query.transpose(0, 1)  # (N, L, D)
        n, length, dim = x.shape
        q, k, v = (p(x).view(n, length, self.heads, dim // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.proj(out.transpose(1, 2).reshape(n, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


class PublishedStep:
    """The published stage-2 model and step (see the module docstring), built from a pristine CLIP."""

    def __init__(self, clip: nn.Module, spec, rank: int, alpha: float, dropout: float, device):
        from dgsnet.models.backbone import embed_dim, tokenizer

        self.device = device
        self.clip = copy.deepcopy(clip).to(device)  # the student; its text tower encodes captions
        self.clip.requires_grad_(False)
        for block in self.clip.visual.transformer.resblocks:
            block.attn = PublishedAttention(block.attn, rank, alpha, dropout)
        self.clip.to(device)
        self.teacher = copy.deepcopy(clip.visual).to(device).requires_grad_(False)  # a separate copy
        dim = embed_dim(clip)
        self.img_fc, self.text_fc, self.frozen_fc = (nn.Linear(dim, 1).to(device) for _ in range(3))
        self.frozen_fc.requires_grad_(False)
        self.tokenize = tokenizer(spec)
        self.params = [*self.lora_parameters(), *self.img_fc.parameters(), *self.text_fc.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=1e-4, betas=(0.9, 0.999))
        self._hook = None

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for block in self.clip.visual.transformer.resblocks
                for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)
                for p in (proj.lora_A, proj.lora_B)]

    def train(self, mode: bool = True) -> "PublishedStep":
        self.clip.train(mode)
        return self

    def loss(self, images: torch.Tensor, labels: torch.Tensor, captions: list[str]) -> torch.Tensor:
        feats = self.clip.encode_image(images)
        with torch.no_grad():
            frozen = self.teacher(images)
            text = self.clip.encode_text(self.tokenize(captions).to(self.device))
        frozen, text = frozen.detach().requires_grad_(), text.detach().requires_grad_()
        loss_img = F.binary_cross_entropy_with_logits(self.img_fc(feats).squeeze(1), labels)
        loss_frozen = F.binary_cross_entropy_with_logits(self.frozen_fc(frozen).squeeze(1), labels)
        loss_text = F.binary_cross_entropy_with_logits(self.text_fc(text).squeeze(1), labels)
        # The beneficial and harmful directions: gradients of the frozen heads' losses.
        g_frozen = torch.autograd.grad(loss_frozen, frozen, retain_graph=True)[0].detach()
        g_text = torch.autograd.grad(loss_text, text, retain_graph=True)[0].detach()
        help_term = (feats * torch.clamp(g_frozen, max=0.0)).sum(-1).mean()
        harm = torch.relu(g_text)
        harm = harm / (harm.norm(dim=-1, keepdim=True) + EPS)
        if self._hook is not None:
            self._hook.remove()
        self._hook = feats.register_hook(lambda g: g - (g * harm).sum(-1, keepdim=True) * harm)
        return loss_img + loss_text + LAM * help_term

    def step_fn(self, images, labels, captions):
        def step():
            loss = self.loss(images, labels, captions)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return step


def copy_weights_into_published(model, published: PublishedStep) -> None:
    """The dgsnet model's LoRA tensors and heads into the published structure (for the agreement check)."""
    from dgsnet.models.lora import lora_modules

    theirs = [block.attn for block in published.clip.visual.transformer.resblocks]
    with torch.no_grad():
        for mine, attn in zip(lora_modules(model.visual), theirs):
            for t, a, b in mine.lora_pairs():
                proj = getattr(attn, f"{t}_proj")
                proj.lora_A.copy_(a)
                proj.lora_B.copy_(b)
        for src, dst in ((model.student_head, published.img_fc), (model.text_head, published.text_fc),
                         (model.teacher_head, published.frozen_fc)):
            dst.load_state_dict(src.state_dict())


def check_agreement(model, published: PublishedStep, images, labels, captions) -> float:
    """Same weights (LoRA B made non-zero), dropout off: the published step and dgsnet's feature
    step give the same loss and LoRA gradients; returns the largest relative gradient error."""
    from dgsnet.surgery import dgs_objective

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.lora_parameters():
            if p.abs().sum() == 0:  # B starts at zero: a real check needs a non-zero update
                p.copy_(0.02 * torch.randn(p.shape, generator=gen).to(p))
    copy_weights_into_published(model, published)
    model.eval()
    published.train(False)
    text = model.encode_captions(captions)
    feats = model.visual(images)
    out = dgs_objective(feats, model.teacher_features(images), text, labels, model.student_head,
                        model.teacher_head, model.text_head, lam=LAM, eps=EPS, mode="feature",
                        variant="published", backend="reference", check_labels=False)
    mine = torch.autograd.grad(out.total, model.lora_parameters())
    loss = published.loss(images, labels, captions)
    theirs = torch.autograd.grad(loss, published.lora_parameters())
    if not torch.allclose(out.total, loss, rtol=1e-4, atol=1e-5):
        raise SystemExit(f"published-style and dgsnet losses differ: {float(loss)} vs {float(out.total)}")
    worst = 0.0
    for a, b in zip(mine, theirs):
        scale = float(a.abs().max()) + 1e-12
        worst = max(worst, float((a - b).abs().max()) / scale)
    if worst > 1e-3:
        raise SystemExit(f"published-style and dgsnet LoRA gradients differ (relative error {worst:.2e})")
    model.train()
    published.train(True)
    return worst


# ---------------------------------------------------------------------- the floor

def floor_step(model, optimizer, images, labels, *, encoder=None, amp=None):
    """Plain LoRA fine-tuning plus the teacher forward: the cheapest step DGS-Net could take."""
    import contextlib

    encoder = encoder if encoder is not None else model.visual

    def step():
        with contextlib.nullcontext() if amp is None else torch.autocast(images.device.type, dtype=amp):
            feats = encoder(images)
            model.teacher_features(images)
        logits = model.student_head(feats.float()).squeeze(-1)
        F.binary_cross_entropy_with_logits(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


# ------------------------------------------------------------------ the published data path

def published_tile(img, rng: random.Random):
    """The published patch selection, one patch at a time: crop to a multiple of 32, the spectral
    entropy of each patch by its own FFT, the 24 lowest and 25 highest, shuffled into a 7x7 tile."""
    from PIL import Image

    pixels = np.array(img)
    height, width = pixels.shape[0] // 32 * 32, pixels.shape[1] // 32 * 32
    if height * width < 49 * 32 * 32:
        raise ValueError(f"image of {pixels.shape[1]}x{pixels.shape[0]} has fewer than 49 patches of 32x32; "
                         "the published selection needs at least that (use photos of 224 px or more)")
    patches, entropies = [], []
    for top in range(0, height, 32):
        for left in range(0, width, 32):
            patch = pixels[top:top + 32, left:left + 32]
            grey = patch[..., :3] @ np.array([0.299, 0.587, 0.114])
            grey = grey / 255.0 if grey.max() > 1 else grey
            power = np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2
            p = power.ravel() / (power.sum() + 1e-12)
            patches.append(patch)
            entropies.append(-np.sum(p * np.log2(p + 1e-12)))
    order = np.argsort(np.array(entropies))
    chosen = [patches[i] for i in np.concatenate([order[:24], order[-25:]])]
    rng.shuffle(chosen)
    tile = np.zeros((224, 224, 3), dtype=np.uint8)
    for slot, patch in enumerate(chosen):
        row, col = divmod(slot, 7)
        tile[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = patch
    return Image.fromarray(tile)


class PublishedData(torch.utils.data.Dataset):
    """(image, caption, label) as the published loader gives them: PIL open + convert('RGB'), the
    per-patch selection, a random horizontal flip, ToTensor + ImageNet Normalize."""

    def __init__(self, paths: list[str], labels: list[int], captions: list[str]):
        import torchvision.transforms as T

        self.paths, self.labels, self.captions = paths, labels, captions
        self.after = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(),
                                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
        self.rng = random.Random(0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.open(self.paths[index]).convert("RGB")
        return self.after(published_tile(image, self.rng)), self.captions[index], self.labels[index]


# ------------------------------------------------------------------------- the data

def write_photo_folder(root: str, count: int, size: int) -> tuple[list[str], list[int], list[str]]:
    """`count` JPEG photos (crops of scikit-image's sample photos at several offsets) in
    root/{0_real,1_fake}/ with a captions.json; returns (paths, labels, captions)."""
    import io

    from PIL import Image

    from dgsnet.fileio import atomic_write

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    sources = [Image.open(io.BytesIO(data)) for data in photo_jpegs(2 * size, names)]
    paths, labels, captions = [], [], {}
    for i in range(count):
        label = i % 2
        src = sources[i % len(sources)]
        offset = (i // len(sources)) * 17 % size
        crop = src.crop((offset, offset, offset + size, offset + size))
        folder = os.path.join(root, ("0_real", "1_fake")[label])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.jpg")
        crop.save(path, format="JPEG", quality=95)
        paths.append(path)
        labels.append(label)
        captions[os.path.relpath(path, root)] = f"a photo, number {i} of the set"
    atomic_write(os.path.join(root, "captions.json"), json.dumps(captions))
    return paths, labels, [captions[os.path.relpath(p, root)] for p in paths]


# ------------------------------------------------------------------------ measurements

def build_model(spec, clip, device):
    from dgsnet.models import DGSNetModel, LoRAConfig

    model = DGSNetModel(spec, LoRAConfig(), clip=copy.deepcopy(clip)).to(device)
    model.set_stage(2)
    model.train()
    return model


def fits(make_step, device) -> bool:
    """Whether the step runs (twice: Adam's state is allocated on the first) without running out of memory."""
    try:
        step = make_step()
        step()
        step()
        synchronize(device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def largest_batch(make_step_at, start: int, device, limit: int = 4096, granularity: int = 1) -> int:
    """Largest batch (<= limit) whose step fits in memory, 0 if not even `start`: doubling from
    `start` until a batch fails, then bisection between the last that fitted and the first that
    failed (or limit + 1), to a multiple of `granularity` (memory grows with the batch, so what
    fits is a prefix). A multiple of `granularity` is returned unless only `start` itself fits."""
    batch, best = start, 0
    while batch <= limit and fits(lambda: make_step_at(batch), device):
        best, batch = batch, batch * 2
    if best == 0:
        return 0
    fail = min(batch, limit + 1)  # the smallest batch known not to fit (or not allowed)
    lo = best  # fits
    while True:
        mid = ((lo + fail) // 2) // granularity * granularity
        if mid <= lo:
            return lo
        if fits(lambda: make_step_at(mid), device):
            lo = mid
        else:
            fail = mid


def loop_rates(step_times: list[float], batch: int, warmup: int) -> float:
    times = step_times[warmup:] or step_times
    return batch / statistics.median(times)


def published_loop(published: PublishedStep, dataset: PublishedData, batch: int, workers: int,
                   steps: int, warmup: int, device) -> float:
    """Images/s of the published step fed by a DataLoader, per step (data wait included)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))
    times = []
    while len(times) < steps + warmup:
        start = time.perf_counter()
        for images, captions, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device).float()
            published.step_fn(images, labels, list(captions))()
            synchronize(device)
            now = time.perf_counter()
            times.append(now - start)
            start = now
            if len(times) >= steps + warmup:
                break
    return loop_rates(times, batch, warmup)


def loop_windows(steps: int, warmup: int) -> int:
    """Log windows of `steps` steps dropped as warm-up: enough to cover `warmup` steps, at least one."""
    return max(1, math.ceil(warmup / steps))


def dgsnet_loop(data: str, work: str, args, device, batch: int, steps: int, warmup: int,
                compile_encoder: bool, patch_selection: str = "auto", run: int = 0) -> float:
    """Images/s of the real train_dgs loop from its own log records (log.jsonl), patches selected
    where --patch-selection says (auto: on a GPU the device, on the CPU the workers).

    --log-every is `steps`: the loss is read from the device once per window, as in a real run
    (a read per step, --log-every 1, would synchronise every step and hide what a per-step sync
    costs). The first loop_windows() windows are warm-up; the rate is the median of the others'
    (one window of `steps` steps unless more were asked for)."""
    from dgsnet.train.config import TrainConfig
    from dgsnet.train.trainer import train_dgs, train_teacher

    common = dict(data=data, model=args.model, pretrained=None, batch_size=batch, workers=args.workers,
                  device=device.type, log_every=steps, ckpt_every=10 ** 6)
    skip = loop_windows(steps, warmup)
    teacher = os.path.join(work, "teacher")
    if not os.path.isdir(teacher):
        train_teacher(TrainConfig(out=teacher, max_steps=1, teacher_epochs=1, **common))
    out = os.path.join(work, f"dgs-{patch_selection}-{run}")  # a fresh run folder per round
    total = (skip + 1) * steps
    epochs = math.ceil(total * batch / max(1, len(os.listdir(os.path.join(data, "0_real"))) * 2))
    train_dgs(TrainConfig(out=out, teacher=teacher, surgery="feature", max_steps=total,
                          epochs=max(1, epochs), compile=compile_encoder, patch_selection=patch_selection,
                          **common))
    with open(os.path.join(out, "log.jsonl")) as fh:
        records = [json.loads(line) for line in fh]
    rates = [r["images_per_s"] for r in records if r.get("event") == "train" and r.get("stage") == 2]
    rates = rates[skip:] or rates
    return statistics.median(rates)


def data_path_costs(published_data: PublishedData, dgsnet_data, rounds: int, device) -> dict:
    """Milliseconds per image of each data path, one thread, taking turns."""
    n = len(published_data)
    fns = {"published": lambda: [published_data[i] for i in range(n)],
           "dgsnet": lambda: [dgsnet_data[i] for i in range(n)]}
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(time_call(fn, device, warmup=0, repeats=1) / n)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def max_batch_makers(clip, spec, lora, model, device, amp) -> dict:
    """name -> (batch -> a step at that batch) for every step competitor of part 1 (uncompiled)."""
    dim = model.dim

    def dgs(mode):
        return lambda b: dgs_step(model, torch.optim.Adam(model.stage_parameters(2)),
                                  *_inputs(b, device, dim), mode, amp=amp)

    makers = {"published": lambda b: PublishedStep(clip, spec, lora.rank, lora.alpha, lora.dropout,
                                                   device).step_fn(*_inputs(b, device, dim)[:2], ["a photo"] * b),
              "floor": lambda b: floor_step(model, torch.optim.Adam(model.stage_parameters(2)),
                                            *_inputs(b, device, dim)[:2], amp=amp)}
    makers.update({mode: dgs(mode) for mode in MODES})
    return makers


def max_batch_rows(clip, spec, lora, model, start: int, device, amp, repeats: int,
                   granularity: int = 8) -> list[dict]:
    """The largest batch that fits (doubling from `start`, then bisection to a multiple of
    `granularity`) for every step competitor, each timed there with its peak memory."""
    rows = []
    for name, make in max_batch_makers(clip, spec, lora, model, device, amp).items():
        best = largest_batch(make, start, device, granularity=granularity)
        row = {"part": "max_batch", "competitor": name, "batch": best}
        if best:
            step = make(best)
            seconds = time_call(step, device, warmup=2, repeats=repeats)
            peak = peak_memory_bytes(step, device)
            row.update({"step_ms": seconds * 1e3, "images_per_s": best / seconds,
                        "peak_mb": PEAK_NA if peak is None else peak / 2 ** 20})
            del step
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"largest batch, {name}: {row}", flush=True)
    return rows


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0])
    add_threads_option(p)
    p.add_argument("--model", default="auto",
                   help="open_clip backbone, random-initialised (default: dgs-small on the CPU, "
                        "ViT-L-14 on a GPU)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: CPU 16, GPU 32)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps of each loop after warm-up (default 12; --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="loop steps dropped as warm-up (default 3)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time dgsnet's steps with the image encoder compiled (torch.compile)")
    p.add_argument("--max-batch", action="store_true",
                   help="GPU: also find the largest batch that fits (published, floor, none, feature, layer, "
                        "both) and time there")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of both loops (default: CPU 1, GPU 8)")
    p.add_argument("--images", type=int, default=None,
                   help="JPEG photos in the data folder (default: enough for one epoch of the loops)")
    p.add_argument("--size", type=int, default=384, help="side of the JPEG photos (>= 224)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds in which part 1's steps take turns (default 5; --quick 1)")
    p.add_argument("--loop-rounds", type=int, default=None,
                   help="rounds in which the published and dgsnet loops take turns (default 3; --quick 1)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    set_threads(args.threads, device)
    gpu = device.type == "cuda"
    if args.model == "auto":
        args.model = "ViT-L-14" if gpu else "dgs-small"
    if args.size < 224:
        p.error(f"--size {args.size}: the published selection needs photos of at least 224 px")
    if args.max_batch and not gpu:
        p.error("--max-batch searches GPU memory; on the CPU leave it out (or pass --device cuda)")
    batch = args.batch or (32 if gpu else 16)
    if args.quick:
        batch = args.batch or 4
    steps = args.steps or (3 if args.quick else 12)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.workers = args.workers if args.workers is not None else (8 if gpu else 1)
    repeats = args.repeats or (2 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 5)
    loop_rounds = args.loop_rounds or (1 if args.quick else 3)
    if rounds < 1 or loop_rounds < 1:
        p.error("--rounds and --loop-rounds must be at least 1")
    amp = torch.bfloat16 if gpu else None
    dev = device_name(device)

    from dgsnet.models import BackboneSpec, LoRAConfig
    from dgsnet.models.backbone import create_clip

    spec = BackboneSpec(args.model, None)
    clip = create_clip(spec)
    lora = LoRAConfig()
    torch.manual_seed(0)
    model = build_model(spec, clip, device)
    published = PublishedStep(clip, spec, lora.rank, lora.alpha, lora.dropout, device)

    work = tempfile.mkdtemp(prefix="bench_step-")
    data = os.path.join(work, "data")
    # Enough photos for every loop step in one epoch: no DataLoader restart inside the timings.
    loop_steps = max(steps + warmup, (loop_windows(steps, warmup) + 1) * steps)
    count = args.images or max(16 if args.quick else 64, (loop_steps + 1) * batch)
    paths, labels_list, captions_all = write_photo_folder(data, count, args.size)
    captions = captions_all[:batch]
    pub_data = PublishedData(paths, labels_list, captions_all)
    images = torch.stack([pub_data[i][0] for i in range(batch)]).to(device)
    labels = torch.tensor(labels_list[:batch], dtype=torch.float32, device=device)

    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the check compares fp32 math, not TF32 rounding
    try:
        error = check_agreement(model, published, images[:2], labels[:2], captions[:2])
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    print(f"published-style and dgsnet feature steps agree (largest relative LoRA-gradient error {error:.1e})",
          flush=True)
    # Fresh weights for timing (the check changed B).
    model = build_model(spec, clip, device)
    published = PublishedStep(clip, spec, lora.rank, lora.alpha, lora.dropout, device)
    text = model.encode_captions(captions)

    # -- part 1: the step on pre-made tensors
    def arms_at(b: int, compiled_model=None) -> dict:
        imgs, labs, caps, txt = images[:b], labels[:b], captions[:b], text[:b]
        opt = torch.optim.Adam(model.stage_parameters(2), lr=1e-4)
        arms = {"published": published.step_fn(imgs, labs, caps),
                "floor": floor_step(model, opt, imgs, labs, amp=amp)}
        arms.update({m: dgs_step(model, opt, imgs, labs, txt, m, amp=amp) for m in MODES})
        if compiled_model is not None:
            copt = torch.optim.Adam(compiled_model.stage_parameters(2), lr=1e-4)
            arms["floor+compile"] = floor_step(compiled_model, copt, imgs, labs, amp=amp)
            arms.update({f"{m}+compile": dgs_step(compiled_model, copt, imgs, labs, txt, m, amp=amp)
                         for m in MODES})
        return arms

    compiled = None
    if args.compile:
        compiled = build_model(spec, clip, device)
        compiled.visual.compile()
    arms = arms_at(batch, compiled)
    failed = {}
    for name in list(arms):  # warm-up (and compilation) outside the timings; drop arms that cannot run
        try:
            print(f"warming up {name}", flush=True)
            time_call(arms[name], device, warmup=1, repeats=1)
        except Exception as exc:  # noqa: BLE001 (a compiled arm that torch cannot run is reported)
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            print(f"{name} failed: {failed[name]}", flush=True)
            del arms[name]
    per_round: dict[str, list[float]] = {}
    times = interleaved_times(arms, device, repeats, rounds, per_round)
    peaks = {name: peak_memory_bytes(fn, device) for name, fn in arms.items()}
    rows = []
    for name in [*arms, *failed]:
        row = {"part": "step", "competitor": name, "batch": batch,
               "precision": "fp32" if name == "published" or amp is None else "bf16 autocast"}
        if name in failed:
            row["error"] = failed[name]
        else:
            row.update({"step_ms": times[name] * 1e3, "images_per_s": batch / times[name],
                        "x_published": times["published"] / times[name],
                        "x_floor": times[name] / times["floor"],
                        "peak_mb": PEAK_NA if peaks[name] is None else peaks[name] / 2 ** 20})
        rows.append(row)
    for r in rows:
        if "error" not in r:
            print(f"{r['competitor']}: {r['step_ms']:.1f} ms, {r['images_per_s']:.1f} images/s, "
                  f"{r['x_published']:.2f}x published, {r['x_floor']:.3f}x floor", flush=True)

    # -- part 2: data paths and loops
    from dgsnet.data import build_train_dataset
    from dgsnet.train.config import TrainConfig

    dgs_data = build_train_dataset(TrainConfig(data=data))
    costs = data_path_costs(PublishedData(paths[:8], labels_list[:8], captions_all[:8]),
                            torch.utils.data.Subset(dgs_data, range(8)), 2 if args.quick else 5, device)
    rows.append({"part": "data_path", "competitor": "published", "ms_per_image": costs["published"],
                 "x_published": 1.0})
    rows.append({"part": "data_path", "competitor": "dgsnet", "ms_per_image": costs["dgsnet"],
                 "x_published": costs["published"] / costs["dgsnet"]})
    print(f"data path per image (1 thread): published {costs['published']:.2f} ms, "
          f"dgsnet {costs['dgsnet']:.2f} ms", flush=True)

    loop_compile = args.compile and gpu and "feature+compile" in arms
    # The two loops take turns (--loop-rounds times), and their ratio is the median of the rounds'
    # ratios: a load change on a shared machine then hits both alike.
    pub_rates, dgs_rates = [], []
    for run in range(loop_rounds):
        pub_rates.append(published_loop(published, pub_data, batch, args.workers, steps, warmup, device))
        dgs_rates.append(dgsnet_loop(data, work, args, device, batch, steps, warmup, loop_compile, run=run))
    pub_rate, dgs_rate = statistics.median(pub_rates), statistics.median(dgs_rates)
    loop_ratios = [d / p for d, p in zip(dgs_rates, pub_rates)]
    # the other patch-selection site than auto's (auto: the device on a GPU, the workers on the CPU)
    other = "cpu" if gpu else "device"
    other_rate = dgsnet_loop(data, work, args, device, batch, steps, warmup, loop_compile, other)
    feature = "feature+compile" if loop_compile else "feature"
    # The loops run minutes after part 1: the model-only step is timed again right after them, and
    # the ratio takes the mean of both, so a load change in between is not read as loop overhead.
    again = time_call(arms[feature], device, warmup=1, repeats=repeats)
    model_only = batch / ((times[feature] + again) / 2)
    rows.append({"part": "loop", "competitor": "published loop", "batch": batch, "workers": args.workers,
                 "images_per_s": pub_rate, "x_published": 1.0})
    rows.append({"part": "loop", "competitor": "dgsnet loop", "batch": batch, "workers": args.workers,
                 "images_per_s": dgs_rate, "x_published": dgs_rate / pub_rate,
                 "x_model_only": dgs_rate / model_only, "model_only": feature, "compile": loop_compile,
                 "model_only_images_per_s": model_only, "model_only_step_ms_after_loops": again * 1e3,
                 "patch_selection": "device" if gpu else "cpu"})
    rows.append({"part": "loop", "competitor": f"dgsnet loop, selection on {'the workers' if gpu else 'the device'}",
                 "batch": batch, "workers": args.workers, "images_per_s": other_rate,
                 "x_published": other_rate / pub_rate, "x_model_only": other_rate / model_only,
                 "patch_selection": other})
    # feature vs floor: step-by-step pairs (see paired_ratio); the rounds' ratios are listed too
    floor_ratios = [f / g for f, g in zip(per_round["feature"], per_round["floor"])]
    pairs = paired_ratio(arms["floor"], arms["feature"], device, 4 if args.quick else 40)
    ratios = {"loop_vs_published_loop": statistics.median(loop_ratios),
              "loop_vs_published_loop_rounds": loop_ratios,
              "loop_vs_model_only": dgs_rate / model_only,
              "feature_vs_floor": pairs["median"],
              "feature_vs_floor_quartiles": [pairs["q1"], pairs["q3"]],
              "feature_vs_floor_pairs": pairs["pairs"],
              "feature_vs_floor_rounds": floor_ratios,
              "feature_vs_floor_target": 1.05,
              "feature_vs_published_step": times["published"] / times["feature"],
              "data_path_vs_published": costs["published"] / costs["dgsnet"]}
    targets = target_checks(ratios)
    ratios.update({f"{t['ratio']}_pass": t["pass"] for t in targets})
    if "feature+compile" in times:
        ratios["feature_compile_vs_floor_compile"] = (times["feature+compile"] / times["floor+compile"]
                                                      if "floor+compile" in times else None)
    print(f"loops: published {pub_rate:.1f} images/s, dgsnet {dgs_rate:.1f} images/s "
          f"({other_rate:.1f} with --patch-selection {other})", flush=True)

    if args.max_batch:  # last, with part 1's extra copies freed: the search has the GPU to itself
        del arms, compiled, published
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        rows += max_batch_rows(clip, spec, lora, model, batch, device, amp, repeats)

    step_table = markdown_table([r for r in rows if r["part"] == "step"],
                                ["competitor", "precision", "step_ms", "images_per_s", "x_published",
                                 "x_floor", "peak_mb", "error"])
    other_table = markdown_table([r for r in rows if r["part"] != "step"],
                                 ["part", "competitor", "batch", "ms_per_image", "images_per_s",
                                  "x_published", "x_model_only", "step_ms", "peak_mb"])
    ratio_table = markdown_table([{"ratio": k, "value": ", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else v}
                                  for k, v in ratios.items()])
    target_table = markdown_table(targets, ["target", "ratio", "value", "goal", "pass"])
    print(f"\n{args.model}, batch {batch}, {dev}\n\n{step_table}\n\n{other_table}\n\n{ratio_table}"
          f"\n\ntargets\n\n{target_table}")

    out_dir = results_dir(args, device)
    path = write_results(out_dir, "bench_step", rows,
                         {"device": dev, "model": args.model, "batch": batch, "steps": steps,
                          "warmup": warmup, "workers": args.workers, "quick": args.quick,
                          "threads": torch.get_num_threads(), "images": count, "image_size": args.size,
                          "amp": str(amp), "compile": args.compile, "ratios": ratios, "targets": targets,
                          "loop_log_every": steps, "loop_warmup_windows": loop_windows(steps, warmup),
                          "peak_mb": PEAK_NOTE,
                          "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                          "lora": lora.to_dict()})
    from dgsnet.fileio import atomic_write

    atomic_write(os.path.join(out_dir, "bench_step.md"),
                 f"stage-2 training step, {args.model} (random init), batch {batch}, {dev}\n\n"
                 f"{step_table}\n\n{other_table}\n\nratios\n\n{ratio_table}\n\ntargets\n\n{target_table}\n\n"
                 f"peak_mb: {PEAK_NOTE}. dgsnet loop: --log-every {steps} (one device read per window), "
                 f"{loop_windows(steps, warmup)} warm-up window(s) dropped.\n")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {path}")


#: What peak_mb is: allocator statistics exist on CUDA only (bench/common.py peak_memory_bytes).
PEAK_NA = "n/a (CPU)"
PEAK_NOTE = ("GPU only: torch.cuda.max_memory_allocated during one step above what was allocated before it; "
             f"\"{PEAK_NA}\" on the CPU, which has no allocator statistics (a process-wide RSS would mix "
             "the competitors of one process)")

#: The issue's targets ("A training loop as fast as its model"): (name, ratio key, goal, comparison, bound).
TARGETS = (("loop >= 2.5x the published loop", "loop_vs_published_loop", ">= 2.5", "ge", 2.5),
           ("loop within 1.2x of the model-only step", "loop_vs_model_only", ">= 1/1.2 (0.833)", "ge", 1 / 1.2),
           ("feature step <= 1.05x the floor", "feature_vs_floor", "<= 1.05", "le", 1.05))


def target_checks(ratios: dict) -> list[dict]:
    """One row per issue target: its ratio's value and whether it passes (None if not measured)."""
    rows = []
    for name, key, goal, how, bound in TARGETS:
        value = ratios.get(key)
        ok = None if value is None else bool(value >= bound if how == "ge" else value <= bound)
        rows.append({"target": name, "ratio": key, "value": value, "goal": goal, "pass": ok})
    return rows


def _inputs(batch: int, device, dim: int):
    """Random pre-made inputs of a batch size (the memory search needs them at every size)."""
    gen = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, 224, 224, generator=gen).to(device)
    labels = torch.randint(0, 2, (batch,), generator=gen).float().to(device)
    text = torch.randn(batch, dim, generator=gen).to(device)
    return images, labels, text


if __name__ == "__main__":
    main()
