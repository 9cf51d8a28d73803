"""dgsnet serve's flags: numbers out of range are argparse errors naming the flag and the rule."""
import argparse

import pytest

from dgsnet_export.serve import cli


def _parser():
    parser = argparse.ArgumentParser(prog="dgsnet serve")
    cli.add_arguments(parser)
    return parser


def test_numeric_flags_take_their_range():
    args = _parser().parse_args(["m.onnx", "--max-wait-ms", "0", "--max-request-mb", "0.5", "--max-pixels", "7"])
    assert (args.max_wait_ms, args.max_request_mb, args.max_pixels) == (0.0, 0.5, 7.0)
    assert _parser().parse_args(["m.onnx", "--max-wait-ms", "10000"]).max_wait_ms == 10_000.0


@pytest.mark.parametrize("flag,value,rule", [
    ("--max-wait-ms", "-1", "between 0 and 10000"), ("--max-wait-ms", "10001", "between 0 and 10000"),
    ("--max-wait-ms", "nan", "between 0 and 10000"), ("--max-request-mb", "0", "a number > 0"),
    ("--max-request-mb", "inf", "a number > 0"), ("--max-pixels", "-3", "a number > 0"),
    ("--max-decoded-mp", "abc", "a number > 0")])
def test_out_of_range_numbers_are_refused_naming_the_flag(capsys, flag, value, rule):
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args(["m.onnx", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and rule in err and repr(value) in err
