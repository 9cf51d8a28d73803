"""The two DGS-Net training stages.

Stage 1 (`train_teacher`): fit teacher_head on frozen CLIP image features.
Stage 2 (`train_dgs`): LoRA fine-tuning through dgsnet.surgery.dgs_objective,
with the stage-1 teacher head frozen and caption features from a cache.
Both resume from their run directory's last checkpoint and end exactly where
an uninterrupted run ends (same weights, same data order).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dgsnet.progress import reporter as progress_reporter
from dgsnet.data.dataset import collate
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


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[cfg.amp]


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
    def _loader(self) -> DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = EpochBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, self.epoch,
                                    start_batch=self.batch_in_epoch, rank=self.rank, world=self.world,
                                    drop_last=self.cfg.drop_last)
        # The loader's own generator keeps it off the global RNG (LoRA dropout's), which a
        # resumed run restores: a fresh loader must not shift it.
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.workers,
                          collate_fn=getattr(self.dataset, "collate", collate),
                          pin_memory=self.device.type == "cuda", generator=gen,
                          persistent_workers=False)

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def loss(self, images, labels, captions) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple]:
        """(loss, its terms for logs, (encoder output, harmful direction) for layer surgery)."""
        if self.stage == 1:
            with self._autocast():
                feats = self.model.teacher_features(images)
            logits = (self.ddp or self.model.teacher_head)(feats.float()).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            return loss, {"teacher": loss.detach()}, ()
        text = self.caption_cache.features(captions, self.device)
        with self._autocast():
            student = (self.ddp or self.encoder)(images)
            teacher = self.model.teacher_features(images)
        out = dgs_objective(student, teacher.to(student.dtype), text.to(student.dtype), labels,
                            self.model.student_head, self.model.teacher_head, self.model.text_head,
                            lam=self.lam, eps=self.eps, mode=self.cfg.surgery,
                            variant=self.cfg.variant, backend=self.cfg.backend, check_labels=False)
        terms = {k: getattr(out, k).detach() for k in ("total", "img", "text", "align", "teacher")}
        terms["align"] = terms["align"] / self.world  # the global-batch definition (see distributed.py)
        return out.total, terms, (student, out.harmful)

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

    def _check_finite(self, loss: torch.Tensor, terms: dict, paths: list[str]) -> None:
        if bool(torch.isfinite(loss)):
            return
        values = {k: float(v) for k, v in terms.items()}
        last = resume_state.find_resume(self.run_dir)
        raise NonFiniteLossError(
            f"stage {self.stage}: the loss is {float(loss.detach())} at step {self.step} (terms {values}; batch "
            f"starts with {paths[:3]}). Lower --lr, try --amp off, or check these images. "
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
        window, window_images, window_start = {}, 0, time.perf_counter()
        done = self.step >= self.total_steps
        while not done and self.epoch < self.epochs:
            micro = 0
            self.model.train()
            for batch in self._loader():
                self.batch_in_epoch += 1
                if batch is None:
                    continue
                images, labels, captions, paths = batch
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                # One all-reduce per optimiser step: earlier micro-batches skip DDP's sync; layer
                # surgery always does (it reduces gradients and u itself).
                last = micro + 1 == cfg.accum or self.batch_in_epoch == self.batches_per_epoch
                if self.sharded:  # FSDP's twin of no_sync: reduce-scatter only on the last micro-batch
                    self.encoder.set_requires_gradient_sync(last)
                with no_sync(self.ddp, self.layer is not None or not last):
                    loss, terms, feats_and_harmful = self.loss(images, labels, captions)
                    self._check_finite(loss, terms, paths)
                    scaled = self.scaler.scale(loss / cfg.accum)
                    if self.layer is not None:
                        student, harmful = feats_and_harmful
                        heads = [*self.model.student_head.parameters(), *self.model.text_head.parameters()]
                        self.layer.backward(student, scaled, heads, harmful,
                                            self.layer.wants_directions(self.step))
                    else:
                        scaled.backward()
                micro += 1
                for k, v in terms.items():
                    window[k] = window.get(k, 0.0) + float(v)
                window["_n"] = window.get("_n", 0) + 1
                window_images += images.shape[0] * self.world
                if micro < cfg.accum:
                    continue
                self._optimizer_step(micro)
                micro = 0
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    window, window_images, window_start = self._log_window(
                        window, window_images, window_start, bar)
                if self._validate(epoch_end=False):
                    done = True  # --early-stop: the run ends here and finishes normally
                    break
                if self.step % cfg.ckpt_every == 0 and self.step < self.total_steps:
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
                    self._save_resume()
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
        return self.validation.run(self)

    def _log_window(self, window, images, start, bar):
        seconds = time.perf_counter() - start
        window = self.ctx.sum_floats(window, self.device)  # global means across processes
        micro_batches = window.pop("_n")
        means = {k: v / micro_batches for k, v in window.items()}
        record = {"stage": self.stage, "step": self.step, "epoch": self.epoch,
                  "lr": self.scheduler.get_last_lr()[0], **{f"loss_{k}": v for k, v in means.items()},
                  "images_per_s": images / max(seconds, 1e-9), "memory_mb": memory_mb(self.device)}
        self.log.record("train", **record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in means.items() if k in ("total", "teacher", "img")})
        return {}, 0, time.perf_counter()

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
    check_teacher(cfg)  # missing, unfinished or on another backbone: before any model is built
    return _run_stage(cfg, 2, dataset, resume, ctx, allow_changes)
