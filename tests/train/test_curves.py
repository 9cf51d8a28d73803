"""<out>/curves.png: drawn from the run's log at the end of every stage, written atomically."""
import json
import os

from PIL import Image

from dgsnet.train import TrainConfig, train_teacher
from dgsnet.train.curves import read_records, write_curves
from tests.train.toy_data import ToyDataset

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_finished_stage_writes_a_valid_curves_png(tmp_path):
    out = str(tmp_path / "run")
    train_teacher(TrainConfig(model="dgs-tiny", pretrained=None, batch_size=8, workers=0, teacher_lr=1e-2,
                              log_every=1, teacher_epochs=1, max_steps=3, out=out), ToyDataset(24))
    path = os.path.join(out, "curves.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG
    with Image.open(path) as image:
        image.verify()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # no temporary left behind
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_log(run_dir, rows, tail=""):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.jsonl"), "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_records_after_a_resume_keep_the_last_per_step_and_survive_a_cut_line(tmp_path):
    rows = [{"event": "start", "stage": 1},
            {"event": "train", "step": 1, "loss_teacher": 0.9, "lr": 0.1},
            {"event": "train", "step": 2, "loss_teacher": 0.8, "lr": 0.1},
            {"event": "train", "step": 2, "loss_teacher": 0.7, "lr": 0.1},  # step 2 again after --resume
            {"event": "val", "step": 2, "val_acc": 0.5, "val_ap": 0.6, "val_auc": 0.7, "val_loss": 0.69}]
    _write_log(tmp_path, rows, tail='{"event": "train", "st')  # a line cut by kill -9
    records = read_records(str(tmp_path))
    assert [r["loss_teacher"] for r in records["train"]] == [0.9, 0.7]
    assert [r["val_ap"] for r in records["val"]] == [0.6]
    path = write_curves(str(tmp_path))
    with Image.open(path) as image:
        assert image.format == "PNG"
        with_val = image.size
    _write_log(tmp_path / "plain", rows[:4])
    with Image.open(write_curves(str(tmp_path / "plain"))) as image:
        assert image.size[1] < with_val[1]  # validation metrics get their own panel


def test_no_step_records_no_file(tmp_path):
    _write_log(tmp_path, [{"event": "start", "stage": 1}])
    assert write_curves(str(tmp_path)) is None and not (tmp_path / "curves.png").exists()
