"""--strict-data with DataLoader worker processes: an unreadable image stops the run with one line
naming the file, raised in the main process, not torch's "Caught ... in DataLoader worker" traceback."""
import os

import pytest
import torch
from torch.utils.data import DataLoader

from dgsnet.cli import main
from dgsnet.data import FolderDataset, ImageLoadError, Sample
from dgsnet.data.dataset import LoadFailure
from dgsnet.evaluate import score_dataset
from dgsnet.data.dataset import collate

from .trees import labelled_folder


@pytest.fixture
def tree(tmp_path):
    """root/{0_real,1_fake} of real PNGs, and a corrupt one among the fakes."""
    root = tmp_path / "data"
    paths = labelled_folder(root, n_real=3, n_fake=3)
    corrupt = root / "1_fake" / "broken.png"
    corrupt.write_bytes(paths[-1].read_bytes()[:90])  # a PNG cut inside its pixel data
    return root, [str(p) for p in paths], str(corrupt)


def dataset(paths, corrupt, strict):
    files = sorted(paths + [corrupt])
    return FolderDataset([Sample(p, int("1_fake" in p), "") for p in files], ["a picture"] * len(files),
                         strict=strict)


def first_error(loader) -> ImageLoadError:
    """The ImageLoadError iterating `loader` raises, its traceback dropped: that frees the loader's
    iterator now, so its worker processes are shut down here and not by a later garbage collection."""
    try:
        for _ in loader:
            pass
    except ImageLoadError as exc:
        exc.__traceback__ = None
        return exc
    pytest.fail("no ImageLoadError")


def test_strict_with_two_workers_raises_one_line_in_the_main_process(tree):
    _, paths, corrupt = tree
    loader = DataLoader(dataset(paths, corrupt, strict=True), batch_size=2, num_workers=2, collate_fn=collate)
    error = first_error(loader)
    assert type(error) is ImageLoadError and error.path == corrupt  # the original error, not a RuntimeError
    assert "broken.png" in str(error) and "cannot decode pixels" in str(error)
    assert "Traceback" not in str(error) and "DataLoader worker" not in str(error) and "\n" not in str(error)


def test_without_strict_the_workers_still_skip_the_file(tree):
    _, paths, corrupt = tree
    loader = DataLoader(dataset(paths, corrupt, strict=False), batch_size=2, num_workers=2, collate_fn=collate)
    seen = [p for batch in loader if batch is not None for p in batch[3]]
    assert sorted(seen) == sorted(paths)  # every readable file, the corrupt one left out


def test_in_the_main_process_strict_raises_directly(tree):
    _, paths, corrupt = tree
    data = dataset(paths, corrupt, strict=True)
    with pytest.raises(ImageLoadError, match="broken.png"):
        list(DataLoader(data, batch_size=2, num_workers=0, collate_fn=collate))
    # a marker met outside a worker (e.g. collate called by hand) is raised, not returned
    with pytest.raises(ImageLoadError, match="broken.png"):
        collate([data[0], LoadFailure(ImageLoadError(corrupt, "cannot decode pixels"))])


def test_evaluation_with_workers_stops_on_the_file_too(tree):
    _, paths, corrupt = tree

    class Constant(torch.nn.Module):  # scoring is not what is tested: any detector will do
        def forward(self, images):
            return torch.zeros(images.shape[0])

    try:
        score_dataset(Constant(), dataset(paths, corrupt, strict=True), torch.device("cpu"), batch_size=2,
                      workers=2)
    except ImageLoadError as exc:
        exc.__traceback__ = None  # shut the workers down now (see first_error)
        assert exc.path == corrupt and "Traceback" not in str(exc)
    else:
        pytest.fail("no ImageLoadError")


def test_train_teacher_cli_with_strict_data_and_two_workers_names_the_file(tree, tmp_path, capsys):
    root, _, corrupt = tree
    out = tmp_path / "run"
    code = main(["train-teacher", "--data", str(root), "--out", str(out), "--model", "dgs-tiny",
                 "--pretrained", "none", "--batch-size", "2", "--workers", "2", "--strict-data",
                 "--device", "cpu", "--teacher-epochs", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("dgsnet train-teacher: error: ") and corrupt in lines[0]
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert not os.path.exists(out / "model.safetensors")
