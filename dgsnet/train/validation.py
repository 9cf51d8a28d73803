"""Validation during training: score --val-data, keep the best model in <out>/best/, stop early.

The validation set is read like --data but without augmentation (the inference preprocessing).
Scoring runs in eval mode on a forked RNG, so validating never changes the training trajectory;
only --early-stop, which ends the run, does.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dgsnet.data.dataset import collate, worker_init
from dgsnet.metrics import subset_metrics
from dgsnet.models import checkpoint as ckpt

BEST_DIR = "best"


def build_val_dataset(cfg):
    """The --val-data set (None without one); a missing folder or a wrong layout fails here,
    before any model is built."""
    if not cfg.val_data:
        return None
    from dgsnet.data import LayoutError, build_train_dataset

    if not os.path.isdir(cfg.val_data):
        raise LayoutError(f"--val-data {cfg.val_data} is not a folder; pass a validation set with "
                          "0_real/ and 1_fake/ (or <class>/0_real and <class>/1_fake)")
    # Captions are not scored: the training captions file and its template limit do not apply.
    val_cfg = dataclasses.replace(cfg, data=cfg.val_data, captions=None, caption_max_template=1.0)
    try:
        dataset = build_train_dataset(val_cfg, train=False)
    except LayoutError as exc:
        raise LayoutError(f"--val-data: {exc}") from None
    labels = set(dataset.labels)
    if labels != {0, 1}:
        missing = "0_real" if 0 not in labels else "1_fake"
        raise LayoutError(f"--val-data {cfg.val_data}: no images in any {missing}/ folder; validation "
                          "needs real and generated images for AP and AUC")
    return dataset


@dataclasses.dataclass
class BestTracker:
    """The best validation so far and how many validations since it improved (resume state)."""
    metric: str = "ap"
    value: float | None = None
    step: int | None = None
    since: int = 0  # validations without improvement
    last_step: int | None = None  # step of the latest validation
    val_data: str | None = None  # the set the values come from

    def update(self, metrics: dict, step: int) -> bool:
        """Records a validation; True when it is the best so far (NaN never is)."""
        value = metrics[self.metric]
        self.last_step = step
        better = math.isfinite(value) and (
            self.value is None or (value < self.value if self.metric == "loss" else value > self.value))
        if better:
            self.value, self.step, self.since = float(value), step, 0
        else:
            self.since += 1
        return better

    def state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict | None, metric: str, val_data: str | None) -> BestTracker:
        """A tracker resumed from `state`; one for another metric or validation set starts over."""
        if not state or state.get("metric") != metric or state.get("val_data") != val_data:
            return cls(metric=metric, val_data=val_data)
        return cls(**{f.name: state.get(f.name, f.default) for f in dataclasses.fields(cls)})


class Validation:
    """Runs the validation passes of one stage for a StageTrainer."""

    def __init__(self, cfg, dataset):
        self.cfg, self.dataset = cfg, dataset
        self.every = cfg.val_every or 0
        self.best = BestTracker(metric=cfg.selection_metric, val_data=cfg.val_data)
        self.stopped = False

    def due(self, step: int, epoch_end: bool) -> bool:
        if self.every:
            return not epoch_end and step % self.every == 0
        return epoch_end

    def resume(self, state: dict | None, log) -> None:
        saved = state or {}
        self.best = BestTracker.from_state(state, self.best.metric, self.cfg.val_data)
        if saved and (saved.get("metric"), saved.get("val_data")) != (self.best.metric, self.cfg.val_data):
            log.info(f"--best-metric or --val-data changed since the last checkpoint ({saved.get('metric')} on "
                     f"{saved.get('val_data')}): best/ tracking starts over")

    @torch.no_grad()
    def score(self, trainer) -> dict:
        """{acc, ap, auc, loss, n} of the model now, the same numbers on every rank."""
        model, device = trainer.model, trainer.device
        loader = DataLoader(self.dataset, batch_size=self.cfg.batch_size, shuffle=False,
                            num_workers=self.cfg.workers, collate_fn=getattr(self.dataset, "collate", collate),
                            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                            worker_init_fn=worker_init if self.cfg.workers > 0 else None)
        was_training = model.training
        model.eval()
        logits, labels = [], []
        forked = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=forked):  # dropout and loaders never see validation
                for batch in loader:
                    if batch is None:
                        continue
                    images, y = batch[0].to(device, non_blocking=True), batch[1]
                    with trainer._autocast():
                        if trainer.stage == 1:
                            out = model.teacher_head(model.teacher_features(images).float())
                        else:
                            out = model.student_head(trainer.encoder(images).float())
                    logits.append(out.float().reshape(-1).cpu())
                    labels.append(torch.as_tensor(y).reshape(-1).float())
        finally:
            model.train(was_training)
        if not logits:
            raise RuntimeError(f"--val-data {self.cfg.val_data}: no image could be read; fix or remove "
                               "the files named in the warnings")
        logits, labels = torch.cat(logits), torch.cat(labels)
        row = subset_metrics(torch.sigmoid(logits).numpy(), labels.numpy().astype(np.int64))
        metrics = {"acc": row["acc"], "ap": row["ap"], "auc": row["auc"],
                   "loss": float(F.binary_cross_entropy_with_logits(logits, labels)), "n": row["n"]}
        # Rank 0's numbers decide for every rank: best/ and early stopping must agree.
        mine = metrics if trainer.ctx.is_main else {k: 0.0 for k in metrics}
        shared = trainer.ctx.sum_floats(mine, device)
        return {**shared, "n": int(shared["n"])}

    def run(self, trainer) -> bool:
        """One validation at the trainer's step: log it, refresh best/; True when it is time to stop."""
        metrics = self.score(trainer)
        improved = self.best.update(metrics, trainer.step)
        trainer.log.record("val", stage=trainer.stage, step=trainer.step, epoch=trainer.epoch,
                           **{f"val_{k}": v for k, v in metrics.items()}, best=improved)
        trainer.log.info(f"validation at step {trainer.step}: acc {metrics['acc']:.4f}  ap {metrics['ap']:.4f}  "
                         f"auc {metrics['auc']:.4f}  loss {metrics['loss']:.4f}  ({metrics['n']} images)"
                         + (f"; best {self.best.metric} so far, written to {self.best_dir(trainer)}"
                            if improved else f"; best {self.best.metric} {self.best.value:.4f} at step "
                            f"{self.best.step}" if self.best.value is not None else ""))
        if improved:
            self._write_best(trainer, metrics)
        patience = self.cfg.early_stop
        if patience and self.best.since >= patience:
            self.stopped = True
            trainer.log.info(f"early stop at step {trainer.step}: {self.best.metric} has not improved for "
                             f"{self.best.since} validations (--early-stop {patience}); best "
                             f"{self.best.value} at step {self.best.step}")
            trainer.log.record("early_stop", stage=trainer.stage, step=trainer.step, metric=self.best.metric,
                               best_value=self.best.value, best_step=self.best.step, patience=patience)
        return self.stopped

    def finish(self, trainer) -> None:
        """The final weights are validated too, unless the last validation was at this step."""
        if not self.stopped and self.best.last_step != trainer.step:
            self.run(trainer)

    def best_dir(self, trainer) -> str:
        return os.path.join(trainer.run_dir, BEST_DIR)

    def _write_best(self, trainer, metrics: dict) -> None:
        state = trainer.full_trained_state()  # a collective when sharded: every rank calls it
        if trainer.ctx.is_main:
            final = self.best_dir(trainer)
            staged = final + ".tmp"
            shutil.rmtree(staged, ignore_errors=True)
            best = {"metric": self.best.metric, "value": self.best.value, "step": trainer.step,
                    "epoch": trainer.epoch, "validation": metrics, "val_data": self.cfg.val_data}
            try:
                ckpt.write_model(staged, trainer.model, trainer.stage, self.cfg.to_dict(), trainer.step,
                                 state=state, extra={"best": best})
                self.cfg.save(os.path.join(staged, "config.yaml"))
            except BaseException:  # cut short: best/ keeps the previous best whole
                shutil.rmtree(staged, ignore_errors=True)
                raise
            ckpt.replace_folder(staged, final)
        trainer.ctx.barrier()
