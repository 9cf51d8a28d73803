"""The run directory (dgsnet.convert.write): a taken --out is refused and left as it was."""
from tests.convert.published import convert


def test_existing_run_directory_is_refused(files, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    code, _, err = convert([files["paths"]["unmerged"], "--out", str(run)], capsys)
    assert code == 2 and "not an empty directory" in err and (run / "keep.txt").read_text() == "x"

