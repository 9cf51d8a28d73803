"""`dgsnet-predict detector.onnx images/ [more files or folders]`: score images with an exported detector.

Writes one record per input, {"path", "logit", "probability", "label"} or
{"path", "error"} for a file that cannot be read, to stdout or --out, as JSON
lines or CSV (--format; by default the one --out's suffix names), and a
summary to stderr. Exit status: 0 all inputs scored, 1 some could not be
read or scored NaN/inf (their lines say why), 2 the model or the arguments
are unusable (one line naming the file and the fix; --debug shows the
traceback), 130 stopped by Ctrl-C (143 by SIGTERM, 129 by SIGHUP). --out is
written atomically (a failed or interrupted run leaves an old file as it
was) and may not be the model, an input, or a file inside an input folder.
"""
from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable


def _megapixels(text: str) -> str:
    from dgsnet.image.decode import PixelBudgetError, parse_pixel_budget

    try:
        parse_pixel_budget(text, "--pixel-budget")
    except PixelBudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """--pixel-budget: shared by dgsnet-predict, dgsnet predict and dgsnet eval."""
    parser.add_argument("--pixel-budget", type=_megapixels, default=None, metavar="MP",
                        help="megapixels all decoding workers may hold at once (or 'off'); an image waits "
                             "until it fits, one larger than the budget is an error record (default: "
                             "$DGSNET_PIXEL_BUDGET, else 25%% of this machine's memory at 12 bytes/pixel)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def add_batch_size_argument(parser: argparse.ArgumentParser, default: int, help: str) -> None:
    """--batch-size, the one spelling every command uses; --batch, its old spelling on the predict
    commands and `dgsnet check`, still works but is not shown."""
    parser.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                        help=f"{help} (default {default})")
    parser.add_argument("--batch", dest="batch_size", type=positive_int, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """--no-progress: shared by every command that reports progress (dgsnet.progress)."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (by default a bar on a terminal; in a log or pipe one plain "
                             "line every $DGSNET_PROGRESS_SECONDS (default 30) seconds and one at the end)")


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """--format of the prediction records (dgsnet-predict, dgsnet predict)."""
    parser.add_argument("--format", choices=["jsonl", "csv"], default=None,
                        help="jsonl (one JSON object a line) or csv (a header, then one row an image; an "
                             "unreadable file's row has its text in the error column); default: by the --out "
                             "suffix (.csv is csv), else jsonl")


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --patch-order, --patch-seed, --decode: shared by dgsnet-predict, dgsnet predict and
    dgsnet eval; `layout_options(args)` resolves them."""
    parser.add_argument("--preset", choices=["published"], default=None,
                        help="published: the published test loader (--patch-order shuffle --decode pil)")
    parser.add_argument("--patch-order", default=None, choices=["raster", "shuffle"],
                        help="layout of the 49 selected patches: raster (default, deployment) or shuffle "
                             "(the published evaluation's shuffled layout, seeded per file name)")
    parser.add_argument("--patch-seed", type=int, default=None,
                        help="seed of --patch-order shuffle (default 100, the published test seed)")
    parser.add_argument("--decode", default=None, choices=["dgsnet", "pil"],
                        help="dgsnet (EXIF rotation, alpha on white; default) or pil (the published "
                             "loader: PIL convert('RGB'), no EXIF rotation)")


def layout_options(args: argparse.Namespace) -> dict:
    """{patch_order, patch_seed, decode} from the flags: defaults < --preset < explicit flags."""
    from dgsnet.image.preprocess import inference_options

    return inference_options(args.preset, patch_order=args.patch_order, patch_seed=args.patch_seed,
                             decode=args.decode)


# ---------------------------------------------------------------- clean exits (shared with dgsnet.cli)

#: Signals that stop a command the way Ctrl-C does; the exit status is 128 + the signal number,
#: as a shell reports a process the signal killed (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

# errno -> the fix, for OS errors that reach the top of a command ({option}: the output flag).
_ERRNO_FIXES = {
    errno.ENOSPC: "the disk is full: free space there, or choose another {option} on a disk with room",
    errno.EDQUOT: "the disk quota is used up: free space, or choose another {option}",
    errno.EFBIG: "the file would exceed the largest file allowed (`ulimit -f`, or the file system's "
                 "limit): raise the limit, or choose another {option} on another file system",
    errno.EROFS: "choose another {option}, on a file system that is not read-only",
    errno.EACCES: "fix the permissions (chmod/chown), or choose a path this user may use",
    errno.EPERM: "fix the permissions (chmod/chown), or choose a path this user may use",
    errno.ENOTDIR: "a part of that path is a file, not a folder: fix the path, or choose another {option}",
    errno.EISDIR: "name a file, not a folder",
    errno.ENOENT: "check the path",
    errno.EEXIST: "a file is in the way: move it, or choose another {option}",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "raise the limit of open files (`ulimit -n`), or use fewer workers",
    errno.ENFILE: "close some programs, or use fewer workers",
    errno.EIO: "the disk or network share failed: check it, then run again",
    errno.ELOOP: "fix the symbolic links in that path",
}
# Errors only a write can give: without a file name in the error, they are about the command's output.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def describe_os_error(exc: OSError, *, output: str | None = None, option: str = "--out") -> str:
    """One line for an OS error: the path, what the OS said and the fix for its errno.

    `output` ("--out preds.jsonl") names the path when the error carries none (a failed write()
    does not) and it is a write error. A temporary file in the error is named by its folder: it is
    gone, and the folder is what the user chose."""
    where = None
    if exc.filename is not None:
        name = os.fsdecode(exc.filename)
        if os.path.basename(name).startswith(".tmp-"):
            name = f"a temporary file in {os.path.dirname(name) or '.'}"
        where = name if exc.filename2 is None else f"{name} -> {os.fsdecode(exc.filename2)}"
    elif output and exc.errno in _WRITE_ERRNOS:
        where = output
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in errno.errorcode:
        text += f" ({errno.errorcode[exc.errno]})"
    if where:
        text = f"{where}: {text}"
    fix = _ERRNO_FIXES.get(exc.errno)
    return f"{text}; {fix.format(option=option)}" if fix else text


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by a stop signal, so SIGTERM (SLURM, `kill`) and SIGHUP unwind like
    Ctrl-C: every `finally` runs, temporary files are removed, an old output stays as it was."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """`with StopSignals(prog) as stop:` the first SIGINT/SIGTERM/SIGHUP raises `Stopped`; a second one
    while the first unwinds ends the process at once (128 + its number) with one line on stderr.

    Outputs are renamed into place only when complete, so even the forced stop leaves nothing half
    written under an output's name (at most a hidden .tmp-* file next to it). A signal the caller
    set to be ignored (nohup, a background job) stays ignored, and a handler of the caller's own
    stays in place. Handlers are put back on exit, except after a real signal: the forcing handler
    then covers the interpreter's shutdown too (joining threads, DataLoader workers).

    After a stop signal, errors that threads and finalizers report on their own (a DataLoader
    worker the same SIGTERM killed, multiprocessing's helper threads) are consequences of the stop:
    they are not printed unless `loud()` (--debug).
    """

    def __init__(self, prog: str, loud: Callable[[], bool] = lambda: False):
        self.prog, self.loud = prog, loud
        self.signum: int | None = None  # the first stop signal received
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (and receives signals)
        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:  # no SIGHUP on Windows
                continue
            current = signal.getsignal(signum)
            if current is not (signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL):
                continue
            self._previous[signum] = current
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os.write(2, f"{self.prog}: {signal_name(signum)} again: stopped at once (outputs are whole or "
                        "absent; a hidden .tmp-* file may remain next to one)\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        if not self.loud():
            sys.unraisablehook = threading.excepthook = _quiet_hook
        raise Stopped(signum)

    def __exit__(self, *exc_info) -> bool:
        if self.signum is None:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
        return False


def _quiet_hook(*_args) -> None:
    """sys.unraisablehook / threading.excepthook once a command is stopping: say nothing."""


@dataclass
class Command:
    """What `run_command` needs to report a failure of one command; filled in as it learns it.

    prog: the name messages start with; debug: re-raise (show the traceback) instead;
    output: the path it writes ("--out x"), named by OS errors that carry no file name;
    on_interrupt: says what an interrupted run left behind (outputs, checkpoints) and how to go on.
    """
    prog: str
    debug: bool = False
    output: str | None = None
    on_interrupt: Callable[[], str] | None = None
    expected: tuple = field(default_factory=tuple)  # exception types that are the user's to fix
    label: str = "error: "  # between prog and the message


def _upgrade_output_error(exc: BaseException, output: str | None) -> str | None:
    """An OutputError raised while writing (`... from None`) keeps the OS error as its context: give
    the errno's own fix for it."""
    from dgsnet.outputs import OutputError

    cause = exc.__context__
    if isinstance(exc, OutputError) and isinstance(cause, OSError) and cause.errno in _ERRNO_FIXES:
        return describe_os_error(cause, output=output)
    return None


def _quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): point stdout at /dev/null so the interpreter's final
    flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def run_command(command: Command, work: Callable[[], int]) -> int:
    """Runs `work()` (-> exit status) so that no expected failure ends in a traceback.

    Ctrl-C / SIGTERM / SIGHUP: one line (what was left behind, how to go on) and 128 + the signal
    number; any error raised while unwinding from a stop signal counts as the stop. An OSError,
    or one of `command.expected`: one line naming the file and the fix, exit status 2 (`debug`
    re-raises). A closed stdout pipe: quietly 141, like a process SIGPIPE ends.
    """
    with StopSignals(command.prog, loud=lambda: command.debug) as stop:
        try:
            return work()
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - sorted below; anything unexpected is re-raised
            status, message = _failure(command, stop, exc)
        # Printed once the failed frames are freed: a progress bar they held prints its last state
        # as it closes, and the message must be the last line.
        gc.collect()
        if message:
            from dgsnet.fileio import printable  # a path that is not UTF-8 must not fail the message

            print(printable(f"{command.prog}: {message}"), file=sys.stderr, flush=True)
        return status


def _failure(command: Command, stop: StopSignals, exc: BaseException) -> tuple[int, str]:
    """(exit status, message) for what ended a command; re-raises what is not the user's to fix."""
    if isinstance(exc, KeyboardInterrupt) or stop.signum is not None:
        signum = stop.signum or getattr(exc, "signum", signal.SIGINT)
        if command.debug:
            traceback.print_exc()
        note = ""
        if command.on_interrupt is not None:
            try:
                note = command.on_interrupt()
            except Exception as why:  # noqa: BLE001 - the note must not hide the stop
                note = f"(could not inspect the outputs: {why})"
        return 128 + signum, f"interrupted by {signal_name(signum)}" + (f"; {note}" if note else "")
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        _quiet_stdout()
        return 128 + 13, ""  # as SIGPIPE ends a process: quietly
    if not isinstance(exc, (OSError, *command.expected)) or command.debug:
        raise exc
    if isinstance(exc, OSError) and exc.errno is not None:
        message = describe_os_error(exc, output=command.output)
    else:  # raised by dgsnet with its own message (FileNotFoundError("--ckpt x: ..."))
        message = _upgrade_output_error(exc, command.output) or str(exc)
    return 2, command.label + message


# ---------------------------------------------------------------- inputs


def _not_walked_line(skipped, limit: int = 3) -> str:
    from dgsnet.image.decode import describe_skipped

    return describe_skipped(skipped, limit, where=" in the input folders",
                            outside_fix="to score what a link leads to, name its target as an input")


def collect_and_report(inputs, prog: str):
    """`collect_inputs(inputs)`, and one line on stderr naming what the folder walks left out (symlink
    loops, links leading outside an input folder, unreadable folders). The library's own warning is
    held back for the call: it names a Python argument, not a command-line fix."""
    from dgsnet.scoring import collect_inputs, log

    level = log.level
    log.setLevel(logging.ERROR)
    try:
        found = collect_inputs(inputs)
    finally:
        log.setLevel(level)
    if found.not_walked:
        from dgsnet.fileio import printable

        print(printable(f"{prog}: {_not_walked_line(found.not_walked)}"), file=sys.stderr)
    return found


# ---------------------------------------------------------------- dgsnet-predict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgsnet-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the exported detector (.onnx), from `dgsnet export`")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", help="write the records here instead of stdout")
    add_format_argument(parser)
    add_batch_size_argument(parser, 16, "images per onnxruntime call")
    parser.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"],
                        help="execution provider; auto = TensorRT, else CUDA, else CPU")
    parser.add_argument("--threshold", type=float, help="an image whose probability is above this gets the "
                        "positive label (default: the one stored in the model, usually 0.5)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--workers", type=int, help="threads decoding and preprocessing images (default: up to 4)")
    parser.add_argument("--no-trt-fp16", action="store_true", help="keep TensorRT in float32")
    parser.add_argument("--trt-cache", help="folder to cache TensorRT engines in (rebuilds are slow)")
    add_progress_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    from dgsnet.version import __version__

    parser.add_argument("--version", action="version", version=f"dgsnet-predict (dgsnet {__version__})")
    add_layout_arguments(parser)
    add_memory_arguments(parser)
    return parser


def file_state(path: str | None):
    """(inode, size, mtime) of a file, None when there is none: tells whether it was replaced."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return st and (st.st_ino, st.st_size, st.st_mtime_ns)


def output_note(out: str | None, before) -> str:
    """What an interrupted run left at --out: replaced only by a complete file (atomic_sink)."""
    if not out:
        return "the lines on stdout are whole records of the images scored so far"
    after = file_state(out)
    if after == before:
        return f"--out {out} was not written ({'the earlier file is unchanged' if before else 'no file'})"
    return f"--out {out} was written in full before the stop"


def main(argv: list[str] | None = None) -> int:
    command = Command("dgsnet-predict", label="")
    return run_command(command, lambda: _predict(argv, command))


def _predict(argv: list[str] | None, command: Command) -> int:
    args = build_parser().parse_args(argv)
    command.debug = args.debug
    from dgsnet.extras import missing_extra

    absent = missing_extra("dgsnet-predict", ["onnxruntime"])
    if absent:  # the core install parses flags; scoring needs the [runtime] (or [gpu]) extra
        print(absent, file=sys.stderr)
        return 2
    if args.out:
        command.output = f"--out {args.out}"
        before = file_state(args.out)
        command.on_interrupt = lambda: output_note(args.out, before)
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        print(f"dgsnet-predict: --threshold {args.threshold}: must be a probability in (0, 1)", file=sys.stderr)
        return 2

    from .metadata import MetadataError
    from dgsnet.outputs import OutputError, check_output
    from dgsnet.progress import ProgressSettingError, period_seconds
    from .records import FormatError, resolve_format, score_and_report
    from .detector import ModelLoadError, OnnxDetector

    try:  # settings first: a mistake costs no model load
        fmt = resolve_format(args.format, args.out)
        if not args.no_progress:
            period_seconds()
    except (FormatError, ProgressSettingError) as exc:
        print(f"dgsnet-predict: {exc}", file=sys.stderr)
        return 2

    protected = [(args.model, "the model")]
    if os.path.exists(args.model + ".data"):  # weights of a model over 2 GB
        protected.append((args.model + ".data", "the model's weights"))
    try:  # before the model is loaded: --out must not be the model, an input, or inside an input folder
        check_output(args.out, [*protected, *args.inputs], "--out")
    except OutputError as exc:
        print(f"dgsnet-predict: {exc}", file=sys.stderr)
        return 2
    try:
        detector = OnnxDetector(args.model, provider=args.provider, threads=args.threads,
                                max_batch=args.batch_size, trt_fp16=not args.no_trt_fp16,
                                trt_cache_dir=args.trt_cache, **layout_options(args))
    except (ModelLoadError, MetadataError) as exc:
        if args.debug:
            raise
        print(f"dgsnet-predict: {exc}", file=sys.stderr)
        return 2
    for note in detector.notes:
        print(f"dgsnet-predict: {note}", file=sys.stderr)

    found = collect_and_report(args.inputs, "dgsnet-predict")
    if not found.paths:
        print(f"dgsnet-predict: no image files in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    info = detector.info
    threshold = info.threshold if args.threshold is None else args.threshold
    engine = f"{detector.provider} ({detector.path.name}: {info.backbone}, {info.precision})"
    try:
        tally = score_and_report(found, detector.logits, detector.preprocess, labels=info.labels,
                                 threshold=threshold, batch_size=args.batch_size, workers=args.workers,
                                 out=args.out, progress=not args.no_progress, prog="dgsnet-predict",
                                 engine=engine, pixel_budget=args.pixel_budget, fmt=fmt)
    except OutputError as exc:
        if args.debug:
            raise
        print(f"dgsnet-predict: {_upgrade_output_error(exc, command.output) or exc}", file=sys.stderr)
        return 2
    return 1 if tally.errors else 0


if __name__ == "__main__":
    sys.exit(main())
