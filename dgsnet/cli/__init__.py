"""The `dgsnet` command line: one subcommand per job, one module per command group.

    check.py     dgsnet check
    train.py     dgsnet train-teacher, dgsnet train
    evaluate.py  dgsnet eval
    deploy.py    dgsnet export, dgsnet predict
    serve.py     dgsnet serve (the server lives in dgsnet_export.serve)
    demo.py      dgsnet demo
    convert.py   dgsnet convert-official
    common.py    flags several commands share
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgsnet", description="DGS-Net detectors of AI-generated images: "
                                     "train, evaluate, export and score.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    from dgsnet.version import __version__

    parser.add_argument("--version", action="version", version=f"dgsnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from dgsnet.cli.check import add_check_parser
    from dgsnet.cli.deploy import add_commands as add_export_commands
    from dgsnet.cli.evaluate import add_eval_parser
    from dgsnet.cli.train import add_train_parsers
    from dgsnet.cli.convert import add_convert_parser
    from dgsnet.cli.demo import add_demo_parser

    add_check_parser(sub)
    add_train_parsers(sub)
    add_eval_parser(sub)

    add_demo_parser(sub)
    add_convert_parser(sub)
    add_export_commands(sub)
    from dgsnet.cli.serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def _outputs_note(args) -> str:
    where = f" in --out {args.out}" if getattr(args, "out", None) else ""
    return f"outputs{where} are written whole or not at all: finished files are complete, the others as they were"


def _demo_note(args) -> str:
    return (f"finished stages in {args.out} are kept; run the same command again to go on (an interrupted "
            "training stage continues from its last checkpoint)")


def _train_note(args) -> str:
    from dgsnet.cli.train import train_note

    return train_note(args)


_INTERRUPT_NOTES = {"train-teacher": _train_note, "train": _train_note, "demo": _demo_note,
                    "eval": _outputs_note, "export": _outputs_note, "predict": _outputs_note,
                    "convert-official": _outputs_note,
                    "serve": lambda args: "stopped; the requests in flight were answered first"}

# What each command imports beyond the core install (dgsnet.extras names the extra to install).
_TORCH = ("torch", "open_clip", "safetensors")
_ONNX = ("onnx", "onnxscript", "onnxruntime")  # export checks the graph in onnxruntime


def _eval_needs(args) -> tuple:
    from dgsnet.cli.evaluate import is_onnx

    engine = ("onnxruntime",) if is_onnx(args.ckpt) else _TORCH  # an .onnx is scored without torch
    return engine + (() if args.no_plot else ("matplotlib",))


_NEEDS = {"check": _TORCH, "train-teacher": _TORCH, "train": _TORCH, "eval": _eval_needs, "predict": _TORCH,
          "convert-official": _TORCH, "export": _TORCH + _ONNX, "demo": _TORCH + _ONNX + ("skimage", "scipy"),
          "serve": ("starlette", "uvicorn", "python_multipart", "onnxruntime")}  # torch-free


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. Expected failures (bad input, wrong checkpoint, NaN loss, an output that
    cannot be written) end with one line on stderr and exit status 2; Ctrl-C / SIGTERM with one line
    saying what was kept, and 130 / 143 (see dgsnet_export.runtime.cli.run_command)."""
    from dgsnet_export.runtime.cli import Command, file_state, output_note, run_command

    command = Command("dgsnet", expected=(ValueError, RuntimeError))

    def work() -> int:
        from dgsnet.train.flags import join_list_values

        # `--lora-blocks -2,-1`: argparse alone reads '-2,-1' as an option
        args = build_parser().parse_args(join_list_values(sys.argv[1:] if argv is None else list(argv)))
        command.prog, command.debug = f"dgsnet {args.command}", args.debug
        from dgsnet.extras import missing_extra

        needs = _NEEDS.get(args.command, ())
        absent = missing_extra(command.prog, needs(args) if callable(needs) else needs)
        if absent:  # before any work: one line naming the pip extra
            print(absent, file=sys.stderr)
            return 2
        note = _INTERRUPT_NOTES.get(args.command)
        if note is not None:
            command.on_interrupt = lambda: note(args)
        if args.command == "predict" and args.out:  # one output file: say whether it was replaced
            before = file_state(args.out)
            command.on_interrupt = lambda: output_note(args.out, before)
        from dgsnet import progress

        show = not getattr(args, "no_progress", False)
        if show:
            progress.period_seconds()  # a bad $DGSNET_PROGRESS_SECONDS fails before any work
        # Process-wide: training, eval and the demo report from inside the library.
        previous = progress.set_enabled(show)
        try:
            return args.func(args)
        finally:  # named by a write error that carries no file name (a full disk)
            progress.set_enabled(previous)
            out = getattr(args, "run_dir", None) or getattr(args, "out", None)
            command.output = f"--out {out}" if out else None

    return run_command(command, work)


if __name__ == "__main__":
    sys.exit(main())
