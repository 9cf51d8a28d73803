"""Every command prints its help: a help string argparse cannot format (a literal %) is a traceback."""
import pytest

from dgsnet.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    from dgsnet.cli import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: dgsnet {command}")
    # a description, not only the usage and flags
    assert len(text.split("\n\n")) >= 3, text[:300]


def test_every_command_is_listed_with_a_summary(capsys):
    from dgsnet.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in COMMANDS:
        line = next((l for l in text.splitlines() if l.strip().startswith(command + " ")), None)
        assert line is not None and len(line.split()) > 1, f"{command} has no summary in `dgsnet --help`"
