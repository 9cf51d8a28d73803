"""The `dgsnet` command line: one subcommand per job."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_check(args) -> int:
    from dgsnet.selfcheck import run_check

    report = run_check(model=args.model, batch=args.batch, backend=args.backend, seed=args.seed)
    for key, value in report.items():
        print(f"{key:>40}: {json.dumps(value) if isinstance(value, dict) else value}")
    ok = report["all gradients finite"] and report["max |<G_tilde, h>| / ||G_tilde||"] < 1e-3
    print("check: OK" if ok else "check: FAILED", file=sys.stderr)
    return 0 if ok else 1


def _cmd_train(args, stage: int) -> int:
    from dgsnet.train import train_dgs, train_teacher
    from dgsnet.train.config import config_from_args

    from dgsnet.train.distributed import from_env

    cfg = config_from_args(args)
    args.run_dir = cfg.out  # --out or the config file's: where an interrupt's note looks
    ctx = from_env()  # torchrun sets WORLD_SIZE/RANK; a plain run is one process
    # A checkpoint write cut short removes its own staging folder (dgsnet.train.checkpoint.write_resume).
    (train_teacher if stage == 1 else train_dgs)(cfg, resume=args.resume, ctx=ctx,
                                                 allow_changes=args.allow_config_change)
    if ctx.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _cmd_eval(args) -> int:
    from dgsnet_export.cli import layout_options

    from dgsnet.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.ckpt, args.data, out_dir=args.out, head=args.head,
                                 perturbations=args.perturb, captions=args.captions,
                                 batch_size=args.batch_size, workers=args.workers, device=args.device,
                                 strict=args.strict, plot=not args.no_plot, pretrained=args.pretrained,
                                 pixel_budget=args.pixel_budget, jpeg_draft=args.jpeg_draft,
                                 **layout_options(args))
    print(result.markdown)
    from dgsnet.io import printable  # a folder name that is not UTF-8 is shown with \xNN escapes

    print("\n".join(f"{kind}: {printable(str(path))}" for kind, path in result.files.items()), file=sys.stderr)
    return 0


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="per-generator accuracy, AP, real/fake accuracy and AUC of a checkpoint",
                       description="Evaluates a run directory on every test subset (one generator each) "
                                   "of --data; markdown on stdout, CSV/JSON/PNG files in --out.")
    p.add_argument("--ckpt", required=True, help="finished run directory (model.safetensors + model.json)")
    p.add_argument("--data", required=True,
                   help="test root: <root>/<subset>/{0_real,1_fake}, or one {0_real,1_fake} folder")
    p.add_argument("--out", default=None, help="report folder (default <ckpt>/eval/<data folder name>)")
    p.add_argument("--perturb", nargs="*", default=None,
                   help='robustness conditions, e.g. --perturb jpeg:95,75,50 blur:1,2 resize:0.5')
    p.add_argument("--captions", default=None, help="captions JSON (not needed to score images)")
    p.add_argument("--head", default="auto", choices=["auto", "student", "teacher"],
                   help="auto: student for a stage-2 run, the teacher probe for a stage-1 run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--pretrained", default=None,
                   help="confirm the backbone weights file the run names when it lies outside the run "
                        "directory (a checkpoint's paths are not followed on their own)")
    p.add_argument("--no-plot", action="store_true", help="no PNG charts")
    from dgsnet_export.cli import add_layout_arguments, add_memory_arguments

    add_layout_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--jpeg-draft", action="store_true",
                   help="decode a JPEG over the 100 MP bomb limit at 1/2..1/8 scale (it is resampled, so its "
                        "score is not the full-size one) instead of skipping it")
    p.set_defaults(func=_cmd_eval)


def _add_train_parser(sub, name: str, stage: int, help_text: str) -> None:
    from dgsnet.train.config import add_config_arguments

    p = sub.add_parser(name, help=help_text, description=help_text)
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (with the run's own settings)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even though settings that change the result (lr, batch "
                        "size, data, backbone, LoRA, surgery, ...) differ from the run's; the change is logged")
    p.set_defaults(func=lambda a: _cmd_train(a, stage))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgsnet", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="one DGS-Net step end to end on a tiny random open_clip model")
    check.add_argument("--model", default="dgs-tiny")
    check.add_argument("--batch", type=int, default=8)
    check.add_argument("--backend", default="auto")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=_cmd_check)
    _add_train_parser(sub, "train-teacher", 1,
                      "stage 1: train the teacher probe (teacher_head) on frozen CLIP features")
    _add_train_parser(sub, "train", 2,
                      "stage 2: DGS-Net LoRA fine-tuning with gradient surgery (needs --teacher)")
    _add_eval_parser(sub)
    from dgsnet.convert_official import add_convert_parser
    from dgsnet.demo.run import add_demo_parser
    from dgsnet.export_cli import add_commands as add_export_commands

    add_demo_parser(sub)
    add_convert_parser(sub)
    add_export_commands(sub)
    return parser


def _train_note(args) -> str:
    """Where an interrupted training run stands: its last checkpoint and how to continue."""
    run_dir = getattr(args, "run_dir", None)
    if run_dir is None:  # stopped before the config was read
        return "nothing was written"
    from dgsnet.io import read_json
    from dgsnet.train import checkpoint as ckpt

    if os.path.isfile(os.path.join(run_dir, ckpt.META_FILE)):
        return f"the run is finished: {os.path.join(run_dir, ckpt.META_FILE)} is written"
    again = "run the same command again" if args.resume else "run the same command with --resume"
    last = ckpt.find_resume(run_dir)
    if last is None:
        return (f"no checkpoint in {run_dir} yet (one is written every --ckpt-every steps and at each "
                "epoch's end): run the same command again to start over")
    step = read_json(os.path.join(last, "state.json"), "a resume state")["position"]["step"]
    return f"the last checkpoint is {last} (step {step}); {again} to continue from it"


def _outputs_note(args) -> str:
    where = f" in --out {args.out}" if getattr(args, "out", None) else ""
    return f"outputs{where} are written whole or not at all: finished files are complete, the others as they were"


def _demo_note(args) -> str:
    return (f"finished stages in {args.out} are kept; run the same command again to go on (an interrupted "
            "training stage continues from its last checkpoint)")


_INTERRUPT_NOTES = {"train-teacher": _train_note, "train": _train_note, "demo": _demo_note,
                    "eval": _outputs_note, "export": _outputs_note, "predict": _outputs_note,
                    "convert-official": _outputs_note}


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. Expected failures (bad input, wrong checkpoint, NaN loss, an output that
    cannot be written) end with one line on stderr and exit status 2; Ctrl-C / SIGTERM with one line
    saying what was kept, and 130 / 143 (see dgsnet_export.cli.run_command)."""
    from dgsnet_export.cli import Command, file_state, output_note, run_command

    command = Command("dgsnet", expected=(ValueError, RuntimeError))

    def work() -> int:
        args = build_parser().parse_args(argv)
        command.prog, command.debug = f"dgsnet {args.command}", args.debug
        note = _INTERRUPT_NOTES.get(args.command)
        if note is not None:
            command.on_interrupt = lambda: note(args)
        if args.command == "predict" and args.out:  # one output file: say whether it was replaced
            before = file_state(args.out)
            command.on_interrupt = lambda: output_note(args.out, before)
        try:
            return args.func(args)
        finally:  # named by a write error that carries no file name (a full disk)
            out = getattr(args, "run_dir", None) or getattr(args, "out", None)
            command.output = f"--out {out}" if out else None

    return run_command(command, work)


if __name__ == "__main__":
    sys.exit(main())
