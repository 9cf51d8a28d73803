"""Config files are checked by type before anything runs: one line naming the file and the key."""
import pytest

from dgsnet.cli import main
from dgsnet.train import TrainConfig

GOOD = "model: dgs-tiny\npretrained: none\n"

# (yaml text, a fragment the one-line error must contain)
BAD = {
    "word_for_int": ("batch_size: abc\n", "batch_size: 'abc' is not an integer"),
    "float_for_int": ("batch_size: 8.5\n", "batch_size"),
    "scalar_betas": ("betas: 0.9\n", "betas: 0.9 is not a list"),
    "short_betas": ("betas: [0.9]\n", "betas must be two numbers"),
    "string_bool": ("strict_data: \"no\"\n", "strict_data: 'no' is not a boolean"),
    "bool_for_number": ("lr: true\n", "lr: True is not a number"),
    "nan_lr": ("lr: .nan\n", "lr must be a finite number"),
    "negative_lam": ("lam: -0.2\n", "lam must be"),
    "zero_epochs": ("epochs: 0\n", "epochs must be >= 1"),
    "unknown_key": ("learning_rate: 0.1\n", "unknown keys ['learning_rate']"),
    "list_document": ("- lr\n- 0.1\n", "a YAML mapping"),
    "syntax_error": ("lr: [0.1\n", "not valid YAML"),
    "python_tag": ("lr: !!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    "unknown_preset": ("preset: paper\n", "preset"),
    "bad_choice": ("surgery: everything\n", "surgery='everything'"),
    "string_targets": ("lora_targets: q\n", "lora_targets: 'q' is not a list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_file_fails_in_one_line_before_any_work(case, tmp_path, capsys):
    text, fragment = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text if text.startswith("- ") else GOOD + text)
    out = tmp_path / "run"
    code = main(["train-teacher", "--config", str(path), "--data", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert fragment in err and str(path) in err, err
    assert not out.exists()  # nothing was created


def test_non_utf8_config_is_named(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"lr: 0.1 # caf\xe9\n")
    assert main(["train-teacher", "--config", str(path), "--data", str(tmp_path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_yaml_1_1_exponent_numbers_are_floats(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD + "lr: 1e-4\nteacher_lr: 2E-3\nbetas: [0.9, 9.5e-1]\nstrict_data: no\n")
    cfg = TrainConfig.load(str(path))
    assert cfg.lr == 1e-4 and cfg.teacher_lr == 2e-3 and cfg.betas == [0.9, 0.95]
    assert cfg.strict_data is False  # YAML's bare no is a boolean


def test_list_flags_take_several_values(tmp_path):
    from dgsnet.cli import build_parser
    from dgsnet.train.config import config_from_args

    cfg = config_from_args(build_parser().parse_args(["train", "--betas", "0.9", "0.95",
                                                      "--lora-targets", "q", "v"]))
    assert cfg.betas == [0.9, 0.95] and cfg.lora_targets == ["q", "v"]
