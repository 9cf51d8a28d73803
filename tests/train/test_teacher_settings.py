"""`dgsnet train --teacher RUN` runs on the teacher's backbone: settings it does not give come from the
teacher run, settings it gives must agree with it, and a bad --teacher fails before any model."""
import time

import pytest

from dgsnet.cli import build_parser, main
from dgsnet.train import TrainConfig, train_dgs
from dgsnet.train.config import config_from_args
from dgsnet.train.flags import join_list_values


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A finished stage-1 dgs-tiny run with non-default settings: init_seed 3, norm clip."""
    from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig
    from dgsnet.models import checkpoint as ckpt

    folder = tmp_path_factory.mktemp("teacher")
    model = DGSNetModel(BackboneSpec("dgs-tiny", None, init_seed=3), LoRAConfig())
    ckpt.write_model(str(folder), model, stage=1, config={"norm": "clip"}, step=2)
    return str(folder)


def _cfg(*argv):
    args = build_parser().parse_args(join_list_values(["train", "--data", "x", *argv]))
    return config_from_args(args, stage=2)


def test_stage2_takes_the_backbone_of_its_teacher(teacher, capsys):
    cfg = _cfg("--teacher", teacher)
    got = (cfg.model, cfg.pretrained, cfg.activation, cfg.init_seed, cfg.norm)
    assert got == ("dgs-tiny", None, "auto", 3, "clip")  # not ViT-L-14 with OpenAI weights
    assert f"from --teacher {teacher}: model='dgs-tiny'" in capsys.readouterr().out


def test_settings_given_and_equal_to_the_teachers_are_fine(teacher, tmp_path):
    from dgsnet.train.inherit import check_teacher

    cfg = _cfg("--teacher", teacher, "--model", "dgs-tiny", "--pretrained", "none", "--init-seed", "3",
               "--norm", "clip", "--activation", "gelu")  # dgs-tiny's blocks run gelu, as "auto" resolved
    assert check_teacher(cfg)["stage"] == 1


def test_the_teachers_backbone_wins_over_a_preset(teacher):
    cfg = _cfg("--teacher", teacher, "--preset", "published")
    assert (cfg.model, cfg.pretrained, cfg.norm) == ("dgs-tiny", None, "clip")
    assert cfg.amp == "off" and cfg.decode == "pil"  # the preset's other knobs stay


@pytest.mark.parametrize("argv,says", [
    (["--model", "dgs-small"], "model: checkpoint 'dgs-tiny' vs this run 'dgs-small'"),
    (["--norm", "imagenet"], "norm: checkpoint 'clip' vs this run 'imagenet'"),
    (["--init-seed", "4"], "init_seed: checkpoint 3 vs this run 4"),
    (["--activation", "quick_gelu"], "activation: checkpoint 'auto' (runs gelu) vs this run 'quick_gelu'"),
])
def test_a_setting_that_contradicts_the_teacher_names_both_values(teacher, argv, says, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path), "--out", str(out), "--teacher", teacher, *argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err
    assert f"Leave {argv[0]} unset" in err
    assert not out.exists()


def test_the_library_refuses_a_mismatch_before_building_anything(teacher, tmp_path):
    # TrainConfig's defaults (ViT-L-14, OpenAI weights) after a dgs-tiny teacher: it used to download
    # ViT-L-14 first; now the mismatch is found from the teacher's model.json alone.
    out = tmp_path / "run"
    start = time.perf_counter()
    with pytest.raises(ValueError, match="model: checkpoint 'dgs-tiny' vs this run 'ViT-L-14'"):
        train_dgs(TrainConfig(data=str(tmp_path), out=str(out), teacher=teacher))
    assert time.perf_counter() - start < 10 and not out.exists()


@pytest.fixture
def not_teachers(tmp_path, make_tiny_run):
    unfinished = tmp_path / "unfinished"
    (unfinished / "resume").mkdir(parents=True)
    return {"missing": (str(tmp_path / "nope"), "no such folder"),
            "not a run": (str(tmp_path), "model.json not found"),
            "unfinished": (str(unfinished), "has not finished"),
            "stage 2": (str(make_tiny_run(tmp_path / "stage2")), "stage-2 checkpoint")}


@pytest.mark.parametrize("kind", ["missing", "not a run", "unfinished", "stage 2"])
def test_a_bad_teacher_fails_before_any_model_and_writes_nothing(kind, not_teachers, tmp_path, capsys):
    folder, says = not_teachers[kind]
    out = tmp_path / "run"
    start = time.perf_counter()
    code = main(["train", "--data", str(tmp_path), "--out", str(out), "--teacher", folder])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "--teacher" in err and "Traceback" not in err, err
    assert time.perf_counter() - start < 10 and not out.exists()
    assert "random-initialised" not in err  # no backbone was built

