"""Folder walks cannot loop or escape: dgsnet.image.decode.walk_tree and the three places that use it
(dataset layouts, the trainer's dataset builder, the predict commands' inputs)."""
import logging
import os
from pathlib import Path

import pytest

from dgsnet.data import LayoutError, build_train_dataset, find_samples
from dgsnet.image.decode import walk_files
from dgsnet.train.config import TrainConfig
from dgsnet_export import collect_inputs

from .trees import labelled_folder, write_image


def rel(paths, root):
    return [Path(p).relative_to(root).as_posix() for p in paths]


def images(root: Path, names) -> list[Path]:
    return [write_image(root / name, seed) for seed, name in enumerate(names)]


def test_loop_to_a_parent_yields_each_image_once_and_is_reported(tmp_path, caplog):
    root = tmp_path / "photos"
    images(root, ["a/1.png", "a/2.png", "a/sub/3.png", "b/4.png"])
    os.symlink("..", root / "a" / "sub" / "up")  # -> a, which holds it
    expected = ["a/1.png", "a/2.png", "a/sub/3.png", "b/4.png"]
    assert rel(walk_files(root), root) == expected  # os.walk(followlinks=True) gave 1.png 40 times

    from dgsnet.image.decode import walk_tree

    os.symlink("../..", root / "b" / "home")  # -> tmp_path, above the root
    os.symlink(root, root / "a" / "again")  # absolute, -> the root itself
    met = []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dgsnet.image.decode"):
        walk = walk_tree(root, on_skip=met.append)
    assert rel(walk.files, root) == expected
    assert walk.real_paths == [os.path.realpath(root / p) for p in expected]
    assert met == walk.skipped and walk.counts() == {"loop": 3}
    assert sorted(rel((s.path for s in met), root)) == ["a/again", "a/sub/up", "b/home"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "left out 3 path(s)" in warnings[0] and str(root / "a" / "again") in warnings[0]


def test_one_warning_names_the_first_few_and_the_count(tmp_path, caplog):
    from dgsnet.image.decode import walk_tree

    images(tmp_path, ["x.png"])
    for i in range(5):
        os.symlink(".", tmp_path / f"loop{i}")
    with caplog.at_level(logging.WARNING, logger="dgsnet.image.decode"):
        assert rel(walk_tree(tmp_path).files, tmp_path) == ["x.png"]
        walk_tree(tmp_path, warn=False)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "left out 5 path(s) (5 symlink loop(s))" in message and "and 2 more" in message
    assert all(f"loop{i} (loop" in message for i in range(3)) and "loop3" not in message


def test_link_leading_outside_is_not_followed_unless_asked(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    images(root, ["mine.png"])
    images(outside, ["theirs.png", "deep/other.png"])
    os.symlink(outside, root / "linked")
    os.symlink(outside / "theirs.png", root / "file_link.png")
    assert rel(walk_files(root), root) == ["mine.png"]

    from dgsnet.image.decode import walk_tree

    walk = walk_tree(root, warn=False)
    assert walk.counts() == {"outside": 2}
    assert sorted(s.path for s in walk.skipped) == [str(root / "file_link.png"), str(root / "linked")]
    assert walk.skipped[0].detail.endswith(str(outside / "theirs.png"))

    followed = list(walk_files(root, follow_outside=True))
    # theirs.png is reached as file_link.png and as linked/theirs.png: kept once, under the shorter path
    assert rel(followed, root) == ["file_link.png", "mine.png", "linked/deep/other.png"]
    assert walk_tree(root, follow_outside=True).skipped == []


def test_link_inside_the_root_to_a_sibling_yields_those_images_once(tmp_path):
    images(tmp_path, ["z_real/1.png", "z_real/2.png", "deep/er/3.png", "top.png"])
    os.symlink("z_real", tmp_path / "a_alias")  # same depth as z_real: the path through no link wins
    os.symlink("deep/er", tmp_path / "short")  # shallower than deep/er: the shorter path wins
    os.symlink("top.png", tmp_path / "b_top.png")  # a file link to a file already there
    assert rel(walk_files(tmp_path), tmp_path) == ["top.png", "short/3.png", "z_real/1.png", "z_real/2.png"]


def test_a_link_to_itself_and_an_unreadable_folder_are_reported(tmp_path, monkeypatch):
    images(tmp_path, ["ok.png", "locked/hidden_from_us.png"])
    os.symlink("self.png", tmp_path / "self.png")  # ELOOP: os.walk listed it as a file
    locked = str(tmp_path / "locked")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert rel(walk_files(tmp_path), tmp_path) == ["ok.png"]

    from dgsnet.image.decode import walk_tree

    walk = walk_tree(tmp_path, warn=False)
    assert walk.counts() == {"loop": 1, "unreadable": 1}
    assert {s.path: s.reason for s in walk.skipped} == {str(tmp_path / "self.png"): "loop", locked: "unreadable"}


def test_a_symlink_given_as_the_root_is_resolved_and_walked(tmp_path):
    real = tmp_path / "store" / "photos"
    images(real, ["a.png", "sub/b.png"])
    os.symlink(real, real / "sub" / "back")  # absolute link to the real root: a loop seen from the link too
    os.symlink(real / "sub" / "b.png", real / "c.png")  # inside the real root: taken, once (the shorter path)
    link = tmp_path / "photos_link"
    os.symlink(real, link)
    assert rel(walk_files(link), link) == ["a.png", "c.png"]
    found = collect_inputs([link])
    assert rel(found.paths, link) == ["a.png", "c.png"]
    assert [s.reason for s in found.not_walked] == ["loop"]


def loop_dataset(root: Path) -> None:
    labelled_folder(root, 3, 3)  # 0_real/r0..r2, 1_fake/f1, f2, nested/f0
    os.symlink("..", root / "0_real" / "loop")  # 0_real/loop/1_fake/... would be fakes labelled real
    os.symlink("..", root / "1_fake" / "nested" / "loop")  # -> 1_fake


def test_dataset_with_loops_has_exactly_its_images_with_their_labels(tmp_path, caplog):
    loop_dataset(tmp_path)
    truth = {"0_real/r0.png": 0, "0_real/r1.png": 0, "0_real/r2.png": 0,
             "1_fake/f1.png": 1, "1_fake/f2.png": 1, "1_fake/nested/f0.png": 1}
    samples = find_samples(tmp_path)
    assert dict(zip(rel((s.path for s in samples), tmp_path.resolve()), (s.label for s in samples))) == truth
    assert len(samples) == 6

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dgsnet.data"):
        dataset = build_train_dataset(TrainConfig(data=str(tmp_path)))
    assert len(dataset) == 6 and dataset.counts() == (3, 3)
    assert dict(zip(rel(dataset.paths, tmp_path.resolve()), dataset.labels)) == truth
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 1 and "2 symlink loop(s)" in warnings[0]


def test_progan_class_folder_aliases_and_loops(tmp_path):
    labelled_folder(tmp_path / "car", 1, 2, seed=0)
    labelled_folder(tmp_path / "cat", 1, 2, seed=10)
    os.symlink("car", tmp_path / "auto")  # an alias class folder: its images are already there
    os.symlink(".", tmp_path / "cat" / "self")  # a class-level loop
    samples = find_samples(tmp_path)
    assert len(samples) == 6 and {s.group for s in samples} == {"car", "cat"}


def test_an_image_under_both_label_folders_is_an_error(tmp_path):
    labelled_folder(tmp_path / "a", 1, 2)
    (tmp_path / "b").mkdir()
    os.symlink("../a/1_fake", tmp_path / "b" / "0_real")  # b's "real" images are a's fakes
    with pytest.raises(LayoutError, match="both under a real folder"):
        find_samples(tmp_path)


def test_find_samples_follow_outside_is_an_explicit_opt_in(tmp_path):
    data, extra = tmp_path / "data", tmp_path / "extra_real"
    labelled_folder(data, 1, 1)
    images(extra, ["e0.png", "e1.png"])
    os.symlink(extra, data / "0_real" / "more")
    assert len(find_samples(data)) == 2
    samples = find_samples(data, follow_outside=True)
    assert sorted((Path(s.path).name, s.label) for s in samples) == [("e0.png", 0), ("e1.png", 0), ("f0.png", 1),
                                                                      ("r0.png", 0)]
    os.symlink("../1_fake", data / "0_real" / "fakes")  # followed only on request, and then refused
    assert len(find_samples(data)) == 2
    with pytest.raises(LayoutError, match="both under a real folder"):
        find_samples(data, follow_outside=True)


def test_collect_inputs_on_a_folder_with_a_loop_returns_each_image_once(tmp_path, caplog):
    images(tmp_path, ["1.png", "sub/2.jpg"])
    (tmp_path / "sub" / "notes.txt").write_text("x")
    os.symlink("..", tmp_path / "sub" / "loop")
    with caplog.at_level(logging.WARNING):
        found = collect_inputs([tmp_path, tmp_path / "sub" / "loop" / "1.png"])  # named again through the loop
    assert rel(found.paths, tmp_path) == ["1.png", "sub/2.jpg"]
    assert rel(found.skipped, tmp_path) == ["sub/notes.txt"]
    assert [s.reason for s in found.not_walked] == ["loop"]
    assert sum("left out 1 path(s)" in r.getMessage() for r in caplog.records) == 1
    flat = collect_inputs([tmp_path], recursive=False)
    assert rel(flat.paths, tmp_path) == ["1.png"]


def test_collect_inputs_does_not_leave_the_folder_but_takes_named_files(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "out"
    images(root, ["a.png"])
    (theirs,) = images(outside, ["b.png"])
    os.symlink(outside, root / "out_dir")
    os.symlink(theirs, root / "b_link.png")
    assert rel(collect_inputs([root]).paths, root) == ["a.png"]
    assert {s.reason for s in collect_inputs([root]).not_walked} == {"outside"}
    assert collect_inputs([root / "b_link.png"]).paths == [root / "b_link.png"]  # named explicitly: taken
    assert rel(collect_inputs([root], follow_outside=True).paths, root) == ["a.png", "b_link.png"]
