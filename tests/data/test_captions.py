"""Caption files: discovery, published absolute keys, longest-suffix matching, ties and the template limit."""
import json
import logging
import time
from pathlib import Path

import pytest

from dgsnet.data import build_eval_subsets, build_train_dataset
from dgsnet.data.captions import CaptionIndex, CaptionsError, assign_captions, template_caption
from dgsnet.data.layouts import Sample
from dgsnet.train.config import TrainConfig

from .trees import labelled_folder, progan_tree, write_captions

REMOTE = "/home/HDD/yjz/dataset/X/train"  # the authors' machine, as in the published caption files


def relative_paths(root: Path, paths) -> list[str]:
    return sorted(Path(p).resolve().relative_to(root.resolve()).as_posix() for p in paths)


def caption_of(rel: str) -> str:
    return f"caption of {rel}"


def published_file(path: Path, rels, remote: str = REMOTE) -> Path:
    """A caption file in the published format: keys are absolute paths on another machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{remote}/{rel}": caption_of(rel) for rel in rels}))
    return path


def captions_by_rel(dataset, root: Path) -> dict[str, str]:
    return {Path(p).relative_to(root.resolve()).as_posix(): c for p, c in zip(dataset.paths, dataset.captions)}


@pytest.mark.parametrize("layout", ["progan", "plain"])
def test_published_absolute_keys_match_a_local_tree_elsewhere(tmp_path, layout, caplog):
    root = tmp_path / "local" / "copy" / "train"
    paths = progan_tree(root) if layout == "progan" else labelled_folder(root, 2, 3)
    rels = relative_paths(root, paths)
    if layout == "progan":
        assert "car/0_real/r0.png" in rels and "cat/1_fake/nested/f0.png" in rels
    else:
        assert "0_real/r0.png" in rels and "1_fake/nested/f0.png" in rels
    file = published_file(tmp_path / "elsewhere.json", rels)
    with caplog.at_level(logging.INFO, logger="dgsnet.data"):
        dataset = build_train_dataset(TrainConfig(data=str(root), captions=str(file)))
    assert captions_by_rel(dataset, root) == {rel: caption_of(rel) for rel in rels}
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "template caption" in m]
    assert any(f"all {len(rels)} images" in m and f"{len(rels)} by longest common path suffix" in m
               for m in messages)


def test_published_keys_no_longer_fall_back_to_the_template(tmp_path):
    """Before suffix matching every published key missed and all images trained on the template."""
    root = tmp_path / "train"
    rels = relative_paths(root, progan_tree(root))
    file = published_file(tmp_path / "published.json", rels)
    dataset = build_train_dataset(TrainConfig(data=str(root), captions=str(file), caption_max_template=1.0))
    templates = {template_caption(g) for g in ("", "car", "cat")}
    assert not templates & set(dataset.captions)


def test_published_location_is_discovered(tmp_path, caplog):
    root = tmp_path / "AIGIBench" / "train"
    rels = relative_paths(root, progan_tree(root, classes=("car", "horse")))
    file = published_file(tmp_path / "AIGIBench_text" / "train.json", rels)
    published_file(tmp_path / "AIGIBench_text" / "test.json", ["car/0_real/r0.png"])  # another split: not read
    with caplog.at_level(logging.INFO, logger="dgsnet.data"):
        dataset = build_train_dataset(TrainConfig(data=str(root)))
    assert captions_by_rel(dataset, root) == {rel: caption_of(rel) for rel in rels}
    assert any(str(file) in r.getMessage() for r in caplog.records)  # says which file it used


def test_root_captions_json_is_preferred_over_the_published_location(tmp_path):
    root = tmp_path / "AIGIBench" / "train"
    rels = relative_paths(root, labelled_folder(root, 1, 1))
    published_file(tmp_path / "AIGIBench_text" / "train.json", rels)
    write_captions(root, {rel: "from captions.json" for rel in rels})
    dataset = build_train_dataset(TrainConfig(data=str(root)))
    assert set(dataset.captions) == {"from captions.json"}


def test_tied_keys_for_one_image_are_refused(tmp_path):
    root = tmp_path / "train"
    labelled_folder(root, 1, 1)  # 0_real/r0.png, 1_fake/nested/f0.png
    file = published_file(tmp_path / "c.json", ["car/0_real/r0.png", "cat/0_real/r0.png", "car/1_fake/nested/f0.png"])
    with pytest.raises(CaptionsError) as info:
        build_train_dataset(TrainConfig(data=str(root), captions=str(file)))
    message = str(info.value)
    assert str((root / "0_real" / "r0.png").resolve()) in message  # the image
    assert f"{REMOTE}/car/0_real/r0.png" in message and f"{REMOTE}/cat/0_real/r0.png" in message  # the keys
    assert "c.json" in message and "fix:" in message and "--captions" in message


def test_one_key_closest_to_several_images_is_refused(tmp_path):
    root = tmp_path / "train"
    progan_tree(root, classes=("car", "cat"))  # car/0_real/r0.png and cat/0_real/r0.png
    rels = ["0_real/r0.png", "1_fake/f1.png", "1_fake/nested/f0.png"]  # keys without the class folder
    file = published_file(tmp_path / "c.json", rels)
    with pytest.raises(CaptionsError) as info:
        build_train_dataset(TrainConfig(data=str(root), captions=str(file)))
    message = str(info.value)
    assert "closest key of 2 images" in message and "fix:" in message
    assert str(root.resolve() / "car") in message and str(root.resolve() / "cat") in message


def test_a_key_goes_to_the_closest_image_only(tmp_path):
    root = tmp_path / "train"
    rels = relative_paths(root, progan_tree(root, classes=("car", "cat")))
    car = [rel for rel in rels if rel.startswith("car/")]
    file = published_file(tmp_path / "car_only.json", car)  # cat images share file names with car keys
    dataset = build_train_dataset(TrainConfig(data=str(root), captions=str(file), caption_max_template=0.5))
    by_rel = captions_by_rel(dataset, root)
    assert all(by_rel[rel] == caption_of(rel) for rel in car)
    assert all(by_rel[rel] == "a photo of a cat" for rel in rels if rel.startswith("cat/"))


def test_keys_matched_exactly_are_not_offered_to_look_alikes(tmp_path, caplog):
    root = tmp_path / "train"
    rels = relative_paths(root, progan_tree(root, classes=("car", "cat", "dog")))
    covered = [rel for rel in rels if not rel.startswith("dog/")]
    write_captions(root, {rel: caption_of(rel) for rel in covered})  # relative keys, no dog/ entries
    with caplog.at_level(logging.WARNING, logger="dgsnet.data"):
        dataset = build_train_dataset(TrainConfig(data=str(root), caption_max_template=0.5))
    by_rel = captions_by_rel(dataset, root)
    assert all(by_rel[rel] == caption_of(rel) for rel in covered)
    assert all(by_rel[rel] == "a photo of a dog" for rel in rels if rel.startswith("dog/"))  # no tie, no guess
    assert any("3 of 9 images" in r.getMessage() for r in caplog.records)


def test_eval_does_not_read_a_discovered_file(tmp_path, caplog):
    root = tmp_path / "AIGIBench" / "test"
    labelled_folder(root, 1, 1)
    broken = tmp_path / "AIGIBench_text" / "test.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with caplog.at_level(logging.INFO, logger="dgsnet.data"):
        (_, dataset), = build_eval_subsets(root)
    assert dataset.captions == ["a photo", "a photo"]
    assert not [r for r in caplog.records if "caption" in r.getMessage() or "test.json" in r.getMessage()]
    with pytest.raises(CaptionsError, match="not valid JSON"):  # training needs it to be right
        build_train_dataset(TrainConfig(data=str(root)))


def test_eval_ignores_a_captions_file_it_is_given(tmp_path, caplog):
    root = tmp_path / "test"
    labelled_folder(root, 1, 1)
    file = published_file(tmp_path / "c.json", ["car/0_real/r0.png", "cat/0_real/r0.png"])
    with caplog.at_level(logging.INFO, logger="dgsnet.data"):
        (_, dataset), = build_eval_subsets(root, captions=str(file))
    assert dataset.captions == ["a photo", "a photo"]
    assert not [r for r in caplog.records if "caption" in r.getMessage()]


@pytest.mark.parametrize("captioned, limit, fails", [
    (10, 0.1, False), (9, 0.1, False), (8, 0.1, True),  # default limit: at it passes, above it fails
    (8, 0.2, False), (7, 0.2, True), (0, 1.0, False),
])
def test_template_fraction_limit(tmp_path, captioned, limit, fails):
    root = tmp_path / "train"
    rels = relative_paths(root, labelled_folder(root, 5, 5))
    file = published_file(tmp_path / "c.json", rels[:captioned])
    cfg = TrainConfig(data=str(root), captions=str(file), caption_max_template=limit)
    if not fails:
        dataset = build_train_dataset(cfg)
        assert sum(c == "a photo" for c in dataset.captions) == 10 - captioned
        return
    with pytest.raises(CaptionsError) as info:
        build_train_dataset(cfg)
    message = str(info.value)
    assert f"{10 - captioned} of 10 images" in message and str(file) in message
    assert "--caption-max-template" in message and "--captions" in message
    unmatched = [str((root / rel).resolve()) for rel in rels[captioned:]]
    assert sum(path in message for path in unmatched) == min(3, len(unmatched))  # three examples


def test_default_limit_is_a_tenth_and_no_file_only_warns(tmp_path, caplog):
    assert TrainConfig().caption_max_template == 0.1
    root = tmp_path / "train"
    labelled_folder(root, 2, 2)
    with caplog.at_level(logging.WARNING, logger="dgsnet.data"):
        dataset = build_train_dataset(TrainConfig(data=str(root)))
    assert set(dataset.captions) == {"a photo"}
    assert any("no captions file" in r.getMessage() and "all 4 images" in r.getMessage() for r in caplog.records)


def test_exact_keys_win_over_suffix_matches(tmp_path):
    root = tmp_path / "somewhere" / "train"
    progan_tree(root, classes=("car", "cat"))
    local_abs = (root / "cat" / "0_real" / "r0.png").resolve().as_posix()
    file = tmp_path / "c.json"
    file.write_text(json.dumps({
        "car/0_real/r0.png": "relative",  # exact relative key
        "/other/somewhere/train/car/0_real/r0.png": "longer suffix",  # shares 5 components, not exact
        local_abs: "absolute",  # exact absolute key
        "/other/somewhere/train/cat/0_real/r0.png": "longer suffix too",
        "car\\1_fake\\f1.png": "backslashes",  # Windows separators, relative
        "D:\\data\\train\\cat\\1_fake\\f1.png": "windows absolute",  # from a Windows machine
    }))
    dataset = build_train_dataset(TrainConfig(data=str(root), captions=str(file), caption_max_template=1.0))
    by_rel = captions_by_rel(dataset, root)
    assert by_rel["car/0_real/r0.png"] == "relative"
    assert by_rel["cat/0_real/r0.png"] == "absolute"
    assert by_rel["car/1_fake/f1.png"] == "backslashes"
    assert by_rel["cat/1_fake/f1.png"] == "windows absolute"


def test_suffix_lookup_is_not_quadratic_in_keys_sharing_a_file_name():
    """20k keys all named 00012.png (and 20k images): a pairwise scan would take minutes."""
    n = 20_000
    table = {f"/remote/train/c{i // 2}/{i % 2}_x/00012.png": f"t{i}" for i in range(n)}
    samples = [Sample(f"/local/train/c{i // 2}/{i % 2}_x/00012.png", 0, "") for i in range(n)]
    start = time.perf_counter()
    assigned = assign_captions(samples, "/local/train", CaptionIndex(table))
    assert time.perf_counter() - start < 20
    assert assigned.suffix == n and assigned.captions[:3] == ["t0", "t1", "t2"] and assigned.captions[-1] == f"t{n - 1}"
