"""The two DGS-Net training stages.

Stage 1 (`train_teacher`): fit teacher_head on frozen CLIP image features.
Stage 2 (`train_dgs`): LoRA fine-tuning through dgsnet.surgery.dgs_objective,
with the stage-1 teacher head frozen and caption features from a cache.
Both resume from their run directory's last checkpoint and end exactly where
an uninterrupted run ends (same weights, same data order).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from dgsnet.progress import reporter as progress_reporter
from dgsnet.data.dataset import FolderDataset, Unselected, collate, collate_unselected, worker_init
from dgsnet.data.select_device import PendingTiles, decode_jpegs_on, select_patches_queued
from dgsnet.device import resolve_device
from dgsnet.models import CaptionFeatureCache, DGSNetModel
from dgsnet.models import checkpoint as ckpt
from dgsnet.models.backbone import check_source
from dgsnet.surgery import LayerSurgery, dgs_objective
from dgsnet.train import resume as resume_state
from dgsnet.train.config import TrainConfig, result_changes
from dgsnet.train.inherit import check_teacher
from dgsnet.train.distributed import (DistContext, TrainableBranch, gather_full, gather_optimizer_state,
                                      is_sharded, no_sync, objective_scaling, shard_encoder, shard_like,
                                      shard_optimizer_state, wrap)
from dgsnet.train.curves import write_curves
from dgsnet.train.logger import RunLogger, check_report_to, memory_mb
from dgsnet.train.validation import Validation, build_val_dataset
from dgsnet.train.sampler import EpochBatchSampler


class NonFiniteLossError(RuntimeError):
    pass


class _TermWindow:
    """The loss and its terms for every micro-batch since the last log line, kept on the device.

    Reading a CUDA scalar (float(), bool(), .item()) waits for every queued kernel, so a read per
    step leaves the GPU idle while the CPU prepares the next one. Each micro-batch adds one stacked
    tensor [loss, *terms]; `drain` brings them to the host in one copy and finds the first
    non-finite loss. The CPU, where a read is free, runs the same path so that tests cover what a
    GPU runs: a non-finite loss stops the run at the latest at its log line, and the trainer drains
    before every checkpoint and validation pass, so neither ever sees weights from a bad step.
    """

    MAX_PENDING = 1024  # a sync per this many micro-batches bounds the device tensors held

    def __init__(self):
        self.keys: tuple[str, ...] | None = None
        self.pending: list[tuple[int, list[str], torch.Tensor]] = []  # (step, first paths, values)
        self.rows: list[list[float]] = []  # drained and finite: [loss, *terms] as Python floats
        self.first_step = self.last_step = None  # optimiser steps the window's micro-batches belong to
        self.bad: dict | None = None  # the first non-finite micro-batch, once drained
        self.images = 0
        self.start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor], paths, images: int) -> None:
        if self.keys is None:
            self.keys = tuple(terms)
        values = torch.stack([loss.detach().double(), *(terms[k].double() for k in self.keys)])  # exact
        self.pending.append((step, list(paths[:3]), values))
        if self.first_step is None:
            self.first_step = step
        self.last_step = step
        self.images += images

    def drain(self) -> dict | None:
        """Moves the pending values to the host; the first non-finite micro-batch seen, else None."""
        if self.pending and self.bad is None:
            values = torch.stack([v for _, _, v in self.pending]).tolist()  # the one device-to-host copy
            for (step, paths, _), row in zip(self.pending, values):
                if not math.isfinite(row[0]):
                    self.bad = {"step": step, "loss": row[0], "terms": dict(zip(self.keys, row[1:])),
                                "paths": paths}
                    break
                self.rows.append(row)
        self.pending = []
        return self.bad

    def sums(self) -> dict[str, float]:
        """Per-term sums in micro-batch order (Python floats: what summing float(term) per step gives)."""
        sums = {k: 0.0 for k in self.keys or ()}
        for row in self.rows:
            for k, v in zip(self.keys, row[1:]):
                sums[k] += v
        return sums


class _EpochIndexed(Dataset):
    """`dataset` indexed by (epoch, index): DataLoader workers keep their own copy of the dataset, so
    the epoch (which seeds augmentation) travels with each index instead of relying on set_epoch in
    the main process before the workers start."""

    def __init__(self, dataset: Dataset):
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        return self.dataset[index]


class _StageBatches(Sampler):
    """One batch sampler for the whole stage (so the loader and its workers persist across epochs):
    `start(epoch, first_batch)` before each epoch's pass makes it that epoch's EpochBatchSampler."""

    def __init__(self, make: Callable[[int, int], EpochBatchSampler]):
        self.make, self.epoch, self.current = make, 0, make(0, 0)

    def start(self, epoch: int, first_batch: int) -> None:
        self.epoch, self.current = epoch, self.make(epoch, first_batch)

    def __len__(self) -> int:
        return len(self.current)

    def __iter__(self):
        epoch = self.epoch
        for batch in self.current:
            yield [(epoch, i) for i in batch]


def _caption_features(cache: CaptionFeatureCache, captions, device: torch.device) -> torch.Tensor:
    """A batch's caption features on `device`. A copy from ordinary (pageable) memory waits for the
    GPU's queue to drain; one from pinned memory is queued behind it. (A device-resident table of
    every caption would skip the copy, but datasets with a caption per image make it gigabytes.)"""
    feats = cache.features(captions)  # float32 on the CPU; encodes captions not seen before
    if device.type == "cuda":
        return feats.pin_memory().to(device, non_blocking=True)
    return feats.to(device)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[cfg.amp]


def patch_selection_site(cfg: TrainConfig, device: torch.device, dataset: Dataset) -> str:
    """Where a run selects patches: "cpu" (in the DataLoader workers) or "device" (the batch on the
    training device). auto: the device on a GPU, where one batched FFT over every patch replaces a
    CPU core's work per image (bench/bench_data.py); the workers on the CPU, where numpy's selection
    is faster than torch's and the workers overlap it with the step."""
    site = cfg.patch_selection
    if site == "auto":  # --jpeg-decoder device decodes on the device: the selection follows it there
        site = "device" if device.type == "cuda" or cfg.jpeg_decoder == "device" else "cpu"
    if site == "device" and not isinstance(dataset, FolderDataset):
        if cfg.patch_selection == "device":
            raise ValueError(f"--patch-selection device needs dgsnet's folder dataset; this run's dataset is "
                             f"a {type(dataset).__name__} (use --patch-selection cpu)")
        site = "cpu"
    return site


def _entropy_dtype(device: torch.device) -> torch.dtype:
    """float64 everywhere: its ranking needs the host only for images with a doubtful key near a
    boundary, read one batch late (Trainer._staged). float32 (numpy's fast pass) would re-rank the
    images with ties near a boundary, which the host learns of by a read: a second wait per such
    batch, and padded images (mirrored patches) often have them."""
    return torch.float64


def build_dataset(cfg: TrainConfig, train: bool = True) -> Dataset:
    if not cfg.data:
        raise ValueError("no dataset: pass --data ROOT (a folder with 0_real/ and 1_fake/, "
                         "or <class>/0_real and <class>/1_fake)")
    from dgsnet.data import build_train_dataset

    return build_train_dataset(cfg, train=train)


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


class StageTrainer:
    """One training stage over a dataset: the loop, checkpoints, resume and logs."""

    def __init__(self, cfg: TrainConfig, stage: int, model: DGSNetModel, dataset: Dataset,
                 ctx: DistContext | None = None):
        self.cfg, self.stage, self.model, self.dataset = cfg, stage, model, dataset
        self.ctx = ctx or DistContext()
        self.rank, self.world = self.ctx.rank, self.ctx.world
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.ctx.enabled:
            self.device = torch.device("cuda", self.ctx.local_rank)
        self.amp = amp_dtype(cfg, self.device)
        self.run_dir = cfg.out
        self.log = RunLogger(self.run_dir, enabled=self.ctx.is_main, report_to=cfg.report_to,
                             wandb_project=cfg.wandb_project, config=cfg.to_dict())
        self.validation = None  # a Validation when the run has --val-data (see _run_stage)
        self.selection = patch_selection_site(cfg, self.device, dataset)
        if cfg.jpeg_decoder == "device" and self.selection != "device":  # a dataset that cannot defer
            raise ValueError("--jpeg-decoder device needs the patch selection on the device, which this "
                             f"run's {type(dataset).__name__} cannot leave to it: use --jpeg-decoder cpu")
        if self.selection == "device":  # the workers decode and augment; the loop selects (_model_inputs)
            self.dataset = dataset.with_deferred_selection(device_jpeg=cfg.jpeg_decoder == "device")
        model.to(self.device)
        model.set_stage(stage)
        self.sharded = stage == 2 and cfg.fsdp
        if self.sharded:
            _check_fsdp(cfg, self.ctx)
            shard_encoder(model.visual, self.ctx, self.device)  # before the optimizer sees the parameters
            local = sum(p.to_local().numel() if is_sharded(p) else p.numel() for p in model.visual.parameters())
            total = sum(p.numel() for p in model.visual.parameters())
            self.log.info(f"FSDP: image encoder sharded over {self.world} processes; this rank holds "
                          f"{local:,} of {total:,} encoder parameters")
        self.params = model.stage_parameters(stage)
        lr = cfg.teacher_lr if stage == 1 else cfg.lr
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=tuple(cfg.betas),
                                          weight_decay=cfg.weight_decay)
        self.epochs = cfg.teacher_epochs if stage == 1 else cfg.epochs
        if not cfg.drop_last and self.world > 1:
            raise ValueError("--no-drop-last keeps a partial last batch, which processes cannot split "
                             "evenly; run it as one process, or keep --drop-last under torchrun")
        self.batches_per_epoch = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, 0,
                                                   rank=self.rank, world=self.world,
                                                   drop_last=cfg.drop_last).batches_per_epoch()
        steps = self.epochs * math.ceil(self.batches_per_epoch / cfg.accum)
        self.total_steps = min(steps, cfg.max_steps) if cfg.max_steps else steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, self.total_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.caption_cache = None
        self.layer = None
        if stage == 2 and cfg.surgery in ("layer", "both"):
            self.layer = LayerSurgery(model.lora_parameters(), cfg.layer_refresh, cfg.layer_eps, cfg.backend)
        self.encoder = model.visual
        if cfg.compile and not self.sharded:
            self.encoder.compile()
        self.ddp = None
        if self.ctx.enabled and not self.sharded:
            branch = (TrainableBranch(model.teacher_head, []) if stage == 1 else
                      TrainableBranch(self.encoder, [model.student_head, model.text_head]))
            self.ddp = wrap(branch, self.ctx, self.device)
        # Dropout differs per rank (the model itself was built identically on every rank).
        torch.manual_seed(cfg.seed * 7919 + 1 + self.rank)
        # k micro-batches of b rows make one batch of k*b as W processes do (docs/method.md, 2.9)
        self.lam, self.eps = objective_scaling(cfg.lam, cfg.eps, self.world * cfg.accum)

    # -- resume -----------------------------------------------------------------------------
    def resume(self, allow_changes: bool = False) -> bool:
        """Continues from the run's resume state. Settings that change the result must match the
        run's unless `allow_changes`, and then the changes are logged and take effect."""
        path = resume_state.find_resume(self.run_dir)
        if path is None:
            return False
        meta, tensors, opt_state, state, extra = resume_state.read_resume(path)
        if state["stage"] != self.stage:
            raise ValueError(f"{path} holds a stage-{state['stage']} run, not stage {self.stage}; "
                             "resume it with the matching command or pick another --out")
        changes = result_changes(meta.get("config", {}), self.cfg.to_dict())
        if changes and not allow_changes:
            said = ", ".join(f"{k}: run {a!r}, now {b!r}" for k, (a, b) in changes.items())
            raise ValueError(f"--resume of {self.run_dir} with settings that change the result ({said}); "
                             "resume with the run's own settings (its config.yaml), or pass "
                             "--allow-config-change to continue with the new ones (the change is logged)")
        ckpt.check_backbone(meta, self.model, path)
        if self.sharded:  # checkpoints hold full tensors: lay each out like its sharded parameter
            named = {self.model._full_name(k): v for k, v in self.model.named_parameters()}
            tensors = {k: shard_like(v, named.get(self.model._full_name(k), v)) for k, v in tensors.items()}
            opt_state = shard_optimizer_state(opt_state, self.params)
        self.model.load_trained_state_dict(tensors, source=path)
        self.optimizer.load_state_dict(opt_state)
        if state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if changes:
            self._apply_optimizer_settings()
            self.log.info(f"--allow-config-change: continuing {self.run_dir} with changed settings: "
                          + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
            self.log.record("config_change", step=state["position"]["step"],
                            changes={k: {"run": a, "now": b} for k, (a, b) in changes.items()})
        resume_state.restore_rng(state["rng"], self.rank)
        if self.validation is not None:
            self.validation.resume(state.get("validation"), self.log)
        if self.layer is not None and extra:
            self.layer.directions = [extra[f"layer_u.{i}"].to(self.device) for i in range(len(extra))]
        pos = state["position"]
        self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch"]
        self.log.info(f"resumed stage {self.stage} from {path}: step {self.step}, epoch {self.epoch}, "
                      f"batch {self.batch_in_epoch}")
        return True

    def _apply_optimizer_settings(self) -> None:
        """A loaded optimizer state carries the old lr/betas/weight decay: put the current ones in."""
        lr = self.cfg.teacher_lr if self.stage == 1 else self.cfg.lr
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(lr=lr * factor, initial_lr=lr, betas=tuple(self.cfg.betas),
                         weight_decay=self.cfg.weight_decay)

    def full_trained_state(self) -> dict[str, torch.Tensor] | None:
        """The model's checkpoint tensors, gathered when sharded (a collective: every rank calls it)."""
        return gather_full(self.model.trained_state_dict()) if self.sharded else None

    def _save_resume(self) -> None:
        model_state = self.full_trained_state()
        optimizer_state = gather_optimizer_state(self.optimizer) if self.sharded else None
        rng = resume_state.rng_state()
        if self.ctx.enabled:  # every rank's RNG goes into the one checkpoint rank 0 writes
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, rng)
            rng = {f"{k}.rank{r}": v for r, states in enumerate(gathered) for k, v in states.items()}
        if self.rank != 0:
            self.ctx.barrier()
            return
        extra = {}
        if self.layer is not None and self.layer.directions is not None:
            extra = {f"layer_u.{i}": u for i, u in enumerate(self.layer.directions)}
        resume_state.write_resume(self.run_dir, self.model, self.optimizer, self.scheduler, self.stage,
                          self.cfg.to_dict(), {"step": self.step, "epoch": self.epoch,
                                               "batch": self.batch_in_epoch}, rng=rng, extra=extra,
                          model_state=model_state, optimizer_state=optimizer_state,
                          validation=self.validation.best.state() if self.validation is not None else None)
        self.ctx.barrier()

    # -- the loop ---------------------------------------------------------------------------
    def _loader(self) -> tuple[DataLoader, _StageBatches]:
        """The stage's one DataLoader; its workers keep 2 batches each (torch's default) in flight while
        the model computes. They are not persistent across epochs: with persistent workers a Ctrl-C
        often landed mid hand-over of a batch's shared memory, and a worker printed a traceback under
        the one-line message (tests/test_interrupts.py caught it in about 1 run in 5)."""
        cfg = self.cfg

        def make(epoch: int, first_batch: int) -> EpochBatchSampler:
            return EpochBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, epoch, start_batch=first_batch,
                                     rank=self.rank, world=self.world, drop_last=cfg.drop_last)

        batches = _StageBatches(make)
        # The loader's own generator keeps it off the global RNG (LoRA dropout's), which a
        # resumed run restores: a fresh loader must not shift it.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        workers = cfg.workers
        # One thread per worker (torch and numpy's BLAS: dgsnet.data.dataset.worker_init); the main
        # process keeps its intra-op threads for the model.
        extra = dict(persistent_workers=False, prefetch_factor=2, worker_init_fn=worker_init) if workers > 0 else {}
        loader = DataLoader(_EpochIndexed(self.dataset), batch_sampler=batches, num_workers=workers,
                            collate_fn=collate_unselected if self.selection == "device" else
                            getattr(self.dataset, "collate", collate),
                            pin_memory=self.device.type == "cuda", generator=gen, **extra)
        return loader, batches

    def _staged(self, loader):
        """The loader's batches, each as (batch, (model inputs, kept)) (None, None for a None batch).
        With --patch-selection device, batch k+1's selection is queued before batch k is handed out
        and batch k's doubt flags are read then: the host waits only for kernels queued before the
        previous step's, so the device's queue never drains (one batch's tiles are held ahead)."""
        if self.selection != "device":
            for batch in loader:
                yield batch, None if batch is None else self._model_inputs(batch[0], batch[3])
            return
        ahead = None
        for batch in loader:
            staged = batch, None if batch is None else self._model_inputs(batch[0], batch[3])
            if ahead is not None:
                yield self._resolved(*ahead)
            ahead = staged
        if ahead is not None:
            yield self._resolved(*ahead)

    @staticmethod
    def _resolved(batch, inputs):
        if inputs is not None and isinstance(inputs[0], PendingTiles):
            inputs = inputs[0].resolve(), inputs[1]
        return batch, inputs

    def _model_inputs(self, images, paths) -> tuple[torch.Tensor | PendingTiles, list[bool] | None]:
        """(a batch's images on the device, normalised; which of the batch's items they are, None for
        all). With --patch-selection device, the tiles of the batch's pixels selected there (the same
        bits as the workers' numpy selection), queued: a PendingTiles to resolve() before use; with
        --jpeg-decoder device, JPEGs decoded there first."""
        if not isinstance(images, Unselected):
            return images.to(self.device, non_blocking=True), None
        kept = None
        if isinstance(images.pixels, torch.Tensor):
            pixels = images.pixels.to(self.device, non_blocking=True)
        else:
            pixels = [p.to(self.device, non_blocking=True) if p.dim() == 3 else None for p in images.pixels]
            encoded = [i for i, p in enumerate(images.pixels) if p.dim() == 1]
            if encoded:
                decoded = decode_jpegs_on([images.pixels[i] for i in encoded], self.device,
                                          images.orientations[encoded].tolist())
                for i, rgb in zip(encoded, decoded):
                    pixels[i] = rgb if rgb is not None else self._decode_refused(paths[i])
                kept = [p is not None for p in pixels]
                if all(kept):
                    kept = None
                else:  # refused by both decoders: skipped (the batch's other images go on)
                    pixels = [p for p in pixels if p is not None]
                    if not pixels:
                        return torch.empty(0, device=self.device), kept
        orders, flips = images.permutations, images.flips
        if kept is not None:
            mask = torch.tensor(kept)
            orders, flips = orders[mask], flips[mask]
        # permutations and flips go as host tensors: checked there, then copied from pinned memory
        tiles = select_patches_queued(pixels, orders, flips=flips, entropy_dtype=_entropy_dtype(self.device),
                                      normalize=self.dataset.norm)
        return tiles, kept

    def _decode_refused(self, path: str) -> torch.Tensor | None:
        """A JPEG the device decoder refused, decoded on the CPU as the workers would (None, logged and
        counted as skipped, when that fails too; the error itself under --strict-data)."""
        from dgsnet.image.decode import ImageLoadError, load_rgb

        try:
            rgb = load_rgb(path, self.dataset.max_pixels, self.dataset.decode)
        except ImageLoadError as exc:
            if self.cfg.strict_data:
                raise
            self.dataset.skipped.append(path)
            logging.getLogger("dgsnet.data").warning("skipped unreadable image: %s", exc)
            return None
        return torch.from_numpy(rgb).to(self.device)

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def loss(self, images, labels, captions) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple]:
        """(loss, its terms for logs (device tensors: read only at log time), (encoder output,
        harmful direction, None without layer surgery) for layer surgery)."""
        if self.stage == 1:
            with self._autocast():
                feats = self.model.teacher_features(images)
            logits = (self.ddp or self.model.teacher_head)(feats.float()).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            return loss, {"teacher": loss.detach()}, ()
        text = _caption_features(self.caption_cache, captions, self.device)
        with self._autocast():
            student = (self.ddp or self.encoder)(images)
            teacher = self.model.teacher_features(images)
        out = dgs_objective(student, teacher.to(student.dtype), text.to(student.dtype), labels,
                            self.model.student_head, self.model.teacher_head, self.model.text_head,
                            lam=self.lam, eps=self.eps, mode=self.cfg.surgery,
                            variant=self.cfg.variant, backend=self.cfg.backend, check_labels=False)
        terms = {k: getattr(out, k).detach() for k in ("total", "img", "text", "align", "teacher")}
        terms["align"] = terms["align"] / self.world  # the global-batch definition (see distributed.py)
        # harmful only for layer surgery: reading it in the feature modes would form the B x D
        # rows the objective skipped (DGSLoss.harmful)
        return out.total, terms, (student, out.harmful if self.layer is not None else None)

    def _optimizer_step(self, micro: int) -> None:
        if micro != self.cfg.accum:  # a short accumulation at the end of an epoch
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.cfg.accum / micro)
        if self.sharded:  # FSDP reduced the encoder's gradients; the replicated heads need theirs
            self.ctx.mean_([p.grad for p in self.params if p.grad is not None and not is_sharded(p)])
        if self.layer is not None:
            if self.ctx.enabled:  # layer steps ran under no_sync: average gradients, then u
                self.ctx.mean_([p.grad for p in self.params if p.grad is not None])
            self.layer.finish_directions(reduce=self.ctx.mean_)
            self.scaler.unscale_(self.optimizer)  # project true gradients, not loss-scaled ones
            self.layer.project_()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _check_finite(self, bad: dict | None = None, elsewhere: bool = False) -> None:
        """Drains the window (one device-to-host copy) and stops at its first non-finite loss. Under
        several processes every rank learns whether any had one, so all stop together."""
        window = self._window
        if bad is None and not elsewhere:
            bad = window.drain()
            if self.ctx.enabled:
                elsewhere = self.ctx.sum_floats({"bad": float(bad is not None)}, self.device)["bad"] > 0
        if bad is None and not elsewhere:
            return
        span = f"steps {window.first_step}-{window.last_step}, checked every --log-every {self.cfg.log_every} steps"
        last = resume_state.find_resume(self.run_dir)
        if bad is None:
            what = f"not finite on another process (in {span})"
        else:
            what = (f"{bad['loss']} at step {bad['step']} (the first non-finite of {span}; terms {bad['terms']}; "
                    f"batch starts with {bad['paths']})")
        raise NonFiniteLossError(
            f"stage {self.stage}: the loss is {what}. Lower --lr, try --amp off, or check these images. "
            f"Last good checkpoint: {last or 'none yet'} (resume with --resume).")

    def fit(self) -> None:
        cfg = self.cfg
        stage_name = "teacher probe" if self.stage == 1 else f"DGS ({cfg.surgery})"
        if self.stage == 2:
            self._prepare_captions()
        counts = self.model.parameter_report()
        self.log.info(f"stage {self.stage} ({stage_name}): {len(self.dataset)} images, {self.epochs} "
                      f"epoch(s), {self.total_steps} steps, trainable {sum(p.numel() for p in self.params):,} "
                      f"of {counts['total']:,} parameters, device {self.device}, amp {self.amp}")
        self.log.record("start", stage=self.stage, total_steps=self.total_steps, params=counts,
                        config=cfg.to_dict())
        bar = progress_reporter(self.total_steps, f"stage {self.stage}", unit="steps", initial=self.step,
                                enabled=self.rank == 0)
        self._window = _TermWindow()
        done = self.step >= self.total_steps
        loader, batches = self._loader() if not done else (None, None)
        try:
            while not done and self.epoch < self.epochs:
                micro = 0
                self.model.train()
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)
                batches.start(self.epoch, self.batch_in_epoch)
                for batch, inputs in self._staged(loader):
                    self.batch_in_epoch += 1
                    if batch is None:
                        continue
                    _, labels, captions, paths = batch
                    images, kept = inputs
                    if kept is not None:  # images neither JPEG decoder could read: dropped, as the workers do
                        labels = labels[torch.tensor(kept)]
                        captions = [c for c, k in zip(captions, kept) if k]
                        paths = [p for p, k in zip(paths, kept) if k]
                        if not paths:
                            continue
                    labels = labels.to(self.device, non_blocking=True)
                    # One all-reduce per optimiser step: earlier micro-batches skip DDP's sync; layer
                    # surgery always does (it reduces gradients and u itself).
                    last = micro + 1 == cfg.accum or self.batch_in_epoch == self.batches_per_epoch
                    if self.sharded:  # FSDP's twin of no_sync: reduce-scatter only on the last micro-batch
                        self.encoder.set_requires_gradient_sync(last)
                    with no_sync(self.ddp, self.layer is not None or not last):
                        loss, terms, feats_and_harmful = self.loss(images, labels, captions)
                        # no host read here: the window checks the loss at the next log line
                        self._window.add(self.step, loss, terms, paths, images.shape[0] * self.world)
                        scaled = self.scaler.scale(loss / cfg.accum)
                        if self.layer is not None:
                            student, harmful = feats_and_harmful
                            heads = [*self.model.student_head.parameters(), *self.model.text_head.parameters()]
                            self.layer.backward(student, scaled, heads, harmful,
                                                self.layer.wants_directions(self.step))
                        else:
                            scaled.backward()
                    micro += 1
                    # a long --log-every: bound the tensors held (one process stops at once; under
                    # several, a rank may skip an unreadable batch, so they meet at the log line)
                    if len(self._window.pending) >= _TermWindow.MAX_PENDING:
                        if self._window.drain() is not None and not self.ctx.enabled:
                            self._check_finite()
                    if micro < cfg.accum:
                        continue
                    self._optimizer_step(micro)
                    micro = 0
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        self._log_window(bar)
                    if self._validate(epoch_end=False):
                        done = True  # --early-stop: the run ends here and finishes normally
                        break
                    if self.step % cfg.ckpt_every == 0 and self.step < self.total_steps:
                        self._check_finite()  # a checkpoint never holds weights from a bad step
                        self._save_resume()
                    if self.step >= self.total_steps:
                        done = True
                        break
                if not done:
                    if micro:
                        self._optimizer_step(micro)
                        bar.update(1)
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    done = self.step >= self.total_steps
                    if not done and self._validate(epoch_end=True):
                        done = True
                    if not done:
                        self._check_finite()
                        self._save_resume()
            self._check_finite()  # steps since the last log line (none unless a run ends between them)
        finally:
            del loader, batches  # the workers end here, also when the run stops on an error
        bar.close()
        if self.step == 0:
            raise RuntimeError(f"stage {self.stage} ran no training step: every batch of {len(self.dataset)} "
                               "images was unreadable (see the skipped-image warnings); fix or remove those "
                               "files. Nothing was written as finished.")
        if self.validation is not None:
            self.validation.finish(self)
        if self.caption_cache is not None and self.rank == 0:
            self.caption_cache.save()

    def _validate(self, epoch_end: bool) -> bool:
        """A validation pass when --val-every (or the epoch's end) calls for one; True: stop early."""
        if self.validation is None or not self.validation.due(self.step, epoch_end):
            return False
        self._check_finite()  # validate (and maybe keep as best/) only weights from finite steps
        return self.validation.run(self)

    def _log_window(self, bar) -> None:
        """One log record: the means of the window's terms, read from the device here and only here."""
        window = self._window
        bad = window.drain()
        sums = window.sums()
        seconds = time.perf_counter() - window.start
        # global means across processes; "_bad" lets every rank stop when any saw a bad loss
        sums = self.ctx.sum_floats({**sums, "_n": float(len(window.rows)), "_bad": float(bad is not None)},
                                   self.device)
        if bad is not None or sums.pop("_bad") > 0:
            self._check_finite(bad, elsewhere=True)
        micro_batches = sums.pop("_n")
        means = {k: v / micro_batches for k, v in sums.items()}
        record = {"stage": self.stage, "step": self.step, "epoch": self.epoch,
                  "lr": self.scheduler.get_last_lr()[0], **{f"loss_{k}": v for k, v in means.items()},
                  "images_per_s": window.images / max(seconds, 1e-9), "memory_mb": memory_mb(self.device)}
        self.log.record("train", **record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in means.items() if k in ("total", "teacher", "img")})
        self._window = _TermWindow()

    def _prepare_captions(self) -> None:
        model = self.model
        path = self.cfg.caption_cache or os.path.join(self.run_dir, "caption_cache.safetensors")
        key = f"{model.spec.model}|{model.spec.pretrained}|{model.text_fingerprint}"
        self.caption_cache = CaptionFeatureCache(model.encode_captions, key=key, path=path)
        captions = getattr(self.dataset, "captions", None)
        if captions is None:
            return
        # Encode every distinct caption once, up front: on rank 0, shared with the others by file.
        distinct = sorted(set(captions))
        if self.ctx.is_main:
            self.log.info(f"caption features: {len(distinct)} distinct captions "
                          f"({len(self.caption_cache)} cached)")
            self.caption_cache.add(distinct)
            if self.ctx.enabled:
                self.caption_cache.save()
        self.ctx.barrier()
        if not self.ctx.is_main:
            self.caption_cache = CaptionFeatureCache(model.encode_captions, key=key, path=path)


def _check_fsdp(cfg: TrainConfig, ctx: DistContext) -> None:
    if not ctx.enabled:
        raise ValueError("--fsdp shards the encoder across processes: launch with torchrun "
                         "--nproc-per-node N (N >= 2), or drop --fsdp")
    if cfg.surgery in ("layer", "both"):
        raise ValueError(f"--fsdp supports --surgery none or feature, not {cfg.surgery}: per-layer "
                         "surgery needs whole-tensor dot products; use DDP (drop --fsdp)")


def _finished(cfg: TrainConfig) -> bool:
    return os.path.isfile(os.path.join(cfg.out, ckpt.META_FILE))


def _load_finished(cfg: TrainConfig, stage: int) -> DGSNetModel:
    meta = ckpt.read_metadata(cfg.out)
    if meta["stage"] != stage:
        raise ValueError(f"{cfg.out} holds a finished stage-{meta['stage']} run, not stage {stage}")
    model = DGSNetModel(cfg.backbone(), cfg.lora())
    ckpt.check_backbone(meta, model, cfg.out)
    model.load_trained_state_dict(ckpt.read_model_tensors(cfg.out), source=cfg.out)
    print(f"{cfg.out} is already finished (stage {stage}, step {meta['step']}); nothing to resume",
          flush=True)
    return model


def _check_run_dir_path(cfg: TrainConfig) -> None:
    """--out must be a folder this run can create, apart from the data it reads."""
    from dgsnet.outputs import check_creatable

    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise FileExistsError(f"--out {cfg.out} is a file; a run writes a folder: choose a folder name")
    check_creatable(os.path.join(cfg.out, ckpt.META_FILE))
    if cfg.data:
        for out, data in ((os.path.abspath(cfg.out), os.path.abspath(cfg.data)),
                          (os.path.realpath(cfg.out), os.path.realpath(cfg.data))):
            if os.path.commonpath([out, data]) == data:
                raise ValueError(f"--out {cfg.out} is inside the training data {cfg.data} (--data); "
                                 "choose a run folder outside it")


def _prepare_run_dir(cfg: TrainConfig, resume: bool) -> None:
    _check_run_dir_path(cfg)
    if _finished(cfg) and not resume:
        raise FileExistsError(f"{cfg.out} already holds a finished run ({ckpt.META_FILE}); "
                              "choose another --out (nothing was overwritten)")
    if not resume and resume_state.find_resume(cfg.out):
        raise FileExistsError(f"{cfg.out} holds an unfinished run; continue it with --resume "
                              "or choose another --out")


def _run_stage(cfg: TrainConfig, stage: int, dataset: Dataset | None, resume: bool,
               ctx: DistContext | None, allow_changes: bool = False) -> DGSNetModel:
    """Builds the model, trains one stage (resuming if asked) and writes <out>/model.* on rank 0."""
    ctx = ctx or DistContext()
    if resume and _finished(cfg):
        return _load_finished(cfg, stage)
    if ctx.is_main:
        _prepare_run_dir(cfg, resume)
        check_report_to(cfg.report_to)  # a missing tracker package fails before any work
    # Missing weights and bad data fail before the model loads, and before the run folder exists.
    check_source(cfg.backbone())
    dataset = dataset if dataset is not None else build_dataset(cfg)
    val_dataset = build_val_dataset(cfg)
    torch.manual_seed(cfg.seed)
    model = DGSNetModel(cfg.backbone(), cfg.lora())
    if stage == 2:
        load_teacher_head(model, cfg.teacher)
    created = ctx.is_main and not os.path.exists(cfg.out)
    if ctx.is_main:
        os.makedirs(cfg.out, exist_ok=True)
    ctx.barrier()
    trainer = None
    try:
        trainer = StageTrainer(cfg, stage, model, dataset, ctx)
        trainer.validation = Validation(cfg, val_dataset) if val_dataset is not None else None
        if resume and not trainer.resume(allow_changes):
            trainer.log.info(f"--resume: no checkpoint in {cfg.out}; starting from the beginning")
        if ctx.is_main:  # after the resume checks: config.yaml says what this run computes with
            cfg.save(os.path.join(cfg.out, "config.yaml"))
        trainer.fit()
    except Exception:
        if created and (trainer is None or trainer.step == 0):  # failed before its first step: no trace
            if trainer is not None:
                trainer.log.close()
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    state = trainer.full_trained_state()  # a collective when sharded: before the rank-0 branch
    if ctx.is_main:
        ckpt.write_model(cfg.out, model, stage, cfg.to_dict(), trainer.step, state=state)
        resume_state.remove_resume(cfg.out)
        what = "teacher head" if stage == 1 else "detector"
        trainer.log.info(f"stage {stage} done: {what} written to {cfg.out}")
        write_curves(cfg.out, title=f"{os.path.basename(os.path.normpath(cfg.out))}: stage {stage}")
    ctx.barrier()
    trainer.log.close()
    return model


def train_teacher(cfg: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
                  ctx: DistContext | None = None, allow_changes: bool = False) -> DGSNetModel:
    """Stage 1: the teacher probe. Writes <out>/model.safetensors + model.json."""
    return _run_stage(cfg, 1, dataset, resume, ctx, allow_changes)


def load_teacher_head(model: DGSNetModel, teacher_dir: str) -> dict:
    meta = ckpt.read_metadata(teacher_dir)
    if meta["stage"] != 1:
        raise ValueError(f"{teacher_dir} is a stage-{meta['stage']} checkpoint; --teacher wants the "
                         "output directory of `dgsnet train-teacher`")
    ckpt.check_backbone(meta, model, teacher_dir)
    model.load_trained_state_dict(ckpt.read_model_tensors(teacher_dir), only=("teacher_head.",),
                                  source=teacher_dir)
    return meta


def train_dgs(cfg: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
              ctx: DistContext | None = None, allow_changes: bool = False) -> DGSNetModel:
    """Stage 2: DGS-Net fine-tuning. Writes <out>/model.safetensors + model.json."""
    if not cfg.teacher:
        raise ValueError("stage 2 needs the stage-1 teacher: pass --teacher RUN_DIR "
                         "(the --out of `dgsnet train-teacher`)")
    if cfg.compile and cfg.surgery in ("layer", "both"):
        # layer surgery batches its gradient calls (autograd.grad with is_grads_batched, i.e. vmap) through
        # the encoder, and vmap has no batching rule for the out= matmuls a compiled graph runs
        # (RuntimeError deep in the first step; bench/bench_step.py records it)
        raise ValueError(f"--compile does not work with --surgery {cfg.surgery} (its batched gradients "
                         "cannot run through a compiled encoder): drop --compile, or use --surgery feature")
    check_teacher(cfg)  # missing, unfinished or on another backbone: before any model is built
    return _run_stage(cfg, 2, dataset, resume, ctx, allow_changes)
