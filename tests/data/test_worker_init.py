"""DataLoader workers leave stop signals to the main process and keep quiet about peers that hung up.

Ctrl-C reaches every process of the job; a worker that printed a multiprocessing traceback under the
command's one-line message (its tensor hand-over thread finding the stopped main process gone) made
tests/test_interrupts.py fail now and then (an EOFError from multiprocessing.resource_sharer, which
reports through sys.excepthook). worker_init is run in a child interpreter of its own,
since it changes process-wide state.
"""
import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from dgsnet.data.dataset import worker_init

    worker_init(0)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        os.kill(os.getpid(), getattr(signal, name))
    time.sleep(0.05)  # a handled signal would have ended the process by now
    print("alive after the stop signals", flush=True)

    def fail(exc):
        raise exc

    def report(exc):  # as multiprocessing.resource_sharer's thread reports its errors
        try:
            raise exc
        except BaseException:
            sys.excepthook(*sys.exc_info())

    for exc in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"), {other}):
        for target in (fail, report):
            thread = threading.Thread(target=target, args=(exc,))
            thread.start()
            thread.join()
    print("done", flush=True)
""")


@pytest.mark.parametrize("other, printed", [("ValueError('a real bug')", True), ("EOFError()", False)])
def test_workers_ignore_stop_signals_and_hung_up_peers_but_not_other_errors(other, printed):
    proc = subprocess.run([sys.executable, "-c", CHILD.format(other=other)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["alive after the stop signals", "done"]
    assert "BrokenPipeError" not in proc.stderr and "ConnectionResetError" not in proc.stderr, proc.stderr
    assert proc.stderr.count("ValueError: a real bug") == (2 if printed else 0), proc.stderr
    assert ("Traceback" in proc.stderr) is printed, proc.stderr


def test_the_main_process_keeps_its_handlers():
    # worker_init runs in the workers only: importing the module changes nothing in the caller
    # (compared with the handler before the import: a shell's background job starts with SIGINT ignored)
    proc = subprocess.run([sys.executable, "-c", "import signal, sys, threading; "
                           "before = signal.getsignal(signal.SIGINT); import dgsnet.data.dataset; "
                           "print(signal.getsignal(signal.SIGINT) is before, "
                           "threading.excepthook is threading.__excepthook__, sys.excepthook is sys.__excepthook__)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "True", "True"], proc.stderr
