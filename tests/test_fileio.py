"""Files a user keeps are written atomically with the umask's permissions, not mkstemp's 0600."""
import os
import stat

from dgsnet.fileio import atomic_write


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_get_the_umasks_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "a.json"), "{}")
        os.umask(0o077)
        atomic_write(str(tmp_path / "b.json"), "{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "b.json") == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "run.sh"
    path.write_text("old")
    os.chmod(path, 0o755)
    atomic_write(str(path), "new")
    assert path.read_text() == "new" and _mode(path) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["run.sh"]  # no temporary file left


def test_a_script_is_executable_by_whoever_may_read_it(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "build.sh"), "#!/bin/sh\n", executable=True)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "build.sh") == 0o755
