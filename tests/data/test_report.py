"""Report writers: markdown, CSV, JSON and PNG files carry the numbers they were given."""
import csv
import json
import math

from PIL import Image

from dgsnet.metrics import subset_metrics
from dgsnet.report import markdown_table, robustness_table, write_eval_report


def rows():
    return [{"subset": "gan", **subset_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])},
            {"subset": "diff", **subset_metrics([0.9, 0.2], [1, 1])}]


def test_markdown_table_in_percent_with_nan():
    text = markdown_table(rows())
    lines = text.splitlines()
    assert lines[0].startswith("| subset | n | real | fake | acc % | AP % |")
    assert lines[2] == "| gan | 4 | 2 | 2 | 75.00 | 83.33 | 100.00 | 50.00 | 75.00 | 50.00 |"
    # fakes only: AP is undefined (it used to read 100.00), as AUC and EER are
    assert lines[3] == "| diff | 2 | 0 | 2 | 50.00 | n/a | n/a | 50.00 | n/a | n/a |"


def test_eval_report_files(tmp_path):
    results = {"clean": rows(), "jpeg75": [{"subset": "gan", **subset_metrics([0.6, 0.4, 0.35, 0.8], [0, 0, 1, 1])}]}
    text, paths = write_eval_report(str(tmp_path), results)
    assert "| mean | 6 | 2 | 4 | 62.50 | 83.33 |" in text  # acc (75 + 50) / 2; AP of gan alone: diff has one class
    assert "n/a: diff holds one class only" in text
    assert "| gan | 75.00 | 50.00 |" in robustness_table(results) and "| diff | 50.00 | n/a |" in text
    with open(paths["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert [(r["condition"], r["subset"]) for r in table] == [("clean", "gan"), ("clean", "diff"),
                                                              ("clean", "mean"), ("jpeg75", "gan")]
    assert math.isclose(float(table[0]["ap"]), 5 / 6) and table[1]["auc"] == ""
    record = json.loads(open(paths["json"]).read())
    assert record["conditions"] == ["clean", "jpeg75"] and record["results"]["clean"][1]["auc"] is None
    assert record["robustness"]["rows"][0] == {"subset": "gan", "clean": 0.75, "jpeg75": 0.5}
    assert math.isclose(record["results"]["clean"][2]["acc"], 0.625)
    assert math.isclose(record["results"]["clean"][2]["ap"], 5 / 6) and record["one_class"]["clean"] == ["diff"]
    assert record["results"]["clean"][1]["ap"] is None and record["threshold"] == 0.5
    assert float(table[0]["eer"]) == 0.5 and float(table[0]["eer_threshold"]) == 0.35 and table[1]["eer"] == ""
    for key in ("png", "robustness_png"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.size[0] > 300
