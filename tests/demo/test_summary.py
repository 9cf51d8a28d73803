"""The demo's summary over seeds: mean and spread per family, the unseen mean, the table and a
reading that follows the numbers (dgsnet.demo.summary)."""
import math
import statistics

import pytest

from dgsnet.demo import summary as S

FAMILIES = ["a", "b", "c", "d"]  # "a" is the training family


def _rows(values):
    return [{"subset": f, "acc": v / 100, "ap": v / 100} for f, v in zip(FAMILIES, values)]


def _per_seed(table):
    """table: method -> per-seed list of per-family percentages."""
    seeds = range(len(next(iter(table.values()))))
    return {seed: {m: _rows(per_seed[seed]) for m, per_seed in table.items()} for seed in seeds}


def test_means_spreads_and_the_unseen_mean_come_from_each_seed():
    table = {"prior": [[60, 55, 50, 45], [62, 57, 49, 47], [61, 56, 51, 46]],
             "plain": [[70, 50, 48, 44], [72, 51, 47, 42], [71, 52, 49, 43]]}
    s = S.summarise(_per_seed(table), "a")
    assert s["families"] == FAMILIES and s["unseen"] == ["b", "c", "d"] and s["seeds"] == [0, 1, 2]
    cell = s["cells"]["plain"]["b"]
    assert cell["values"] == pytest.approx([50, 51, 52])
    assert cell["mean"] == pytest.approx(51) and cell["sd"] == pytest.approx(1.0)
    unseen = [statistics.fmean(v[1:]) for v in table["prior"]]
    assert s["cells"]["prior"][S.UNSEEN]["values"] == pytest.approx(unseen)
    assert s["cells"]["prior"][S.UNSEEN]["sd"] == pytest.approx(statistics.stdev(unseen))
    rows = S.long_rows(s)
    assert len(rows) == 2 * (len(FAMILIES) + 1)
    assert {r["family"] for r in rows} == {*FAMILIES, S.UNSEEN}
    row = next(r for r in rows if r["method"] == "plain" and r["family"] == "a")
    assert (row["mean"], row["seed 0"], row["seed 2"]) == (71, 70, 71)


def test_the_table_has_one_row_per_family_and_the_unseen_mean_with_mean_and_spread():
    table = {"prior": [[60, 55, 50, 45], [62, 57, 49, 47]], "plain": [[70, 50, 48, 44], [72, 51, 47, 42]]}
    lines = S.markdown(S.summarise(_per_seed(table), "a")).splitlines()
    assert lines[0] == "| family | prior | plain |" and len(lines) == 2 + len(FAMILIES) + 1
    assert lines[2].startswith("| a (trained on) | 61.0 ± 1.4 | 71.0 ± 1.4 |")
    assert lines[-1].startswith(f"| **{S.UNSEEN}** |")


def _reading(prior, plain, dgs, random=None):
    table = {"prior": prior, "plain": plain, "dgs": dgs, **({"random": random} if random else {})}
    s = S.summarise(_per_seed(table), "a")
    return s, S.reading(s, "prior", "plain", "dgs", "random" if random else None)


PRIOR = [[60, 60, 60, 60], [61, 61, 61, 61], [59, 59, 59, 59]]
PLAIN = [[80, 50, 50, 50], [81, 51, 51, 51], [79, 49, 49, 49]]


def test_a_clear_win_of_dgs_net_is_read_as_one():
    dgs = [[75, 57, 57, 57], [76, 58, 58, 58], [74, 56, 56, 56]]
    s, text = _reading(PRIOR, PLAIN, dgs)
    assert "dgs is 7.0 points above plain on the unseen families, more than the seed spread (1.0)" in text
    assert "ahead on 3 of 3 seeds" in text and "kept more of the unseen-family accuracy" in text
    assert "from 60.0 to 80.0 and the unseen mean from 60.0 to 50.0" in text
    assert "gains 20.0 points where it trained and loses 10.0 points elsewhere (beyond the seed spread)" in text


def test_a_loss_of_dgs_net_is_reported_not_hidden():
    dgs = [[75, 45, 45, 45], [76, 46, 46, 46], [74, 44, 44, 44]]
    _, text = _reading(PRIOR, PLAIN, dgs)
    assert "dgs is 5.0 points below plain" in text and "does not show the method's claim" in text
    assert "kept more" not in text


def test_a_difference_inside_the_seed_spread_is_called_noise():
    dgs = [[75, 55, 55, 55], [76, 46, 46, 46], [74, 50, 50, 50]]  # mean 50.3, sd 4.5
    s, text = _reading(PRIOR, PLAIN, dgs)
    compare = S.compare(s, "dgs", "plain")
    assert not compare["beyond_spread"] and compare["spread"] == pytest.approx(4.509, abs=1e-3)
    assert "within the seed spread (4.5)" in text and "within seed-to-seed noise" in text


def test_the_prior_is_compared_with_the_random_encoder_when_there_is_one():
    random = [[90, 50, 50, 50], [91, 50, 50, 50], [89, 50, 50, 50]]
    _, text = _reading(PRIOR, PLAIN, PLAIN, random)
    assert "the pretrained prior's probe is 10.0 points above random" in text
    assert "dgs and plain score the same on the unseen families" in text


def test_the_plot_is_a_png(tmp_path):
    s = S.summarise(_per_seed({"prior": PRIOR, "plain": PLAIN}), "a")
    path = S.plot(s, str(tmp_path / "x.png"), "t")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert math.isfinite(s["cells"]["plain"][S.UNSEEN]["sd"])
