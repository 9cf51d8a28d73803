"""One rule for "generated" everywhere: a probability strictly above the threshold. Predictions
(both CLIs, the Python API) and eval's accuracies must label an image at the threshold alike."""
import numpy as np
from PIL import Image

from dgsnet.metrics import accuracies
from dgsnet.scoring import iter_predictions


def test_a_probability_at_the_threshold_is_real_in_predictions_and_in_eval(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    # logit 0 is probability 0.5 exactly: on the threshold
    records = list(iter_predictions([path], lambda batch: np.zeros(len(batch)), lambda img, **_: img[:1, :1],
                                    threshold=0.5, workers=1))
    assert records[0]["probability"] == 0.5 and records[0]["label"] == "real"
    _, _, fake_acc = accuracies([records[0]["probability"]], [1], threshold=0.5)
    assert fake_acc == 0.0  # eval counts it as called real too
    above = list(iter_predictions([path], lambda batch: np.full(len(batch), 1e-6), lambda img, **_: img[:1, :1],
                                  threshold=0.5, workers=1))
    assert above[0]["label"] == "generated"
