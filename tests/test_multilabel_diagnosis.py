"""benchmarks/multilabel_diagnosis.py: its ranking-error breakdown against a count by hand, and its linear probe
against problems whose answer is known (separable labels: mAP 1; labels independent of the features: about the
positive rate)."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import multilabel_diagnosis as diag  # noqa: E402


def test_negatives_above_counts_images_without_the_object_that_outscore_it():
    # 2 shapes x 1 colour = 2 classes; image 0 holds class 0 (main) and class 1 (minor, small); images 1-3 hold one
    exs = [{"objects": {"color": [0, 0], "shape": [0, 1], "size": [1, 0]}, "label": 0, "num_objects": 2},
           {"objects": {"color": [0], "shape": [0], "size": [1]}, "label": 0, "num_objects": 1},
           {"objects": {"color": [0], "shape": [1], "size": [1]}, "label": 1, "num_objects": 1},
           {"objects": {"color": [0], "shape": [1], "size": [0]}, "label": 1, "num_objects": 1}]
    labels = np.array([[1, 1], [1, 0], [0, 1], [0, 1]])
    scores = np.array([[0.5, 0.2], [0.9, 0.1], [0.7, 0.8], [0.1, 0.6]])
    out = diag.negatives_above(scores, labels, exs, n_shapes=2)
    # class 0 positives: image 0 (0.5; negatives 2, 3 score 0.7, 0.1 -> 1/2), image 1 (0.9 -> 0/2);
    # class 1 positives: image 0 (0.2; negative 1 scores 0.1 -> 0/1), image 2 (0/1), image 3 (0/1)
    assert out["all"] == {"mean": pytest.approx(0.5 / 5), "n": 5}
    assert out["main"]["mean"] == pytest.approx(0.5 / 4) and out["minor"] == {"mean": 0.0, "n": 1}
    assert out["objects_2"] == {"mean": pytest.approx(0.25), "n": 2}
    assert out["size_small"]["n"] == 2 and out["size_large"]["n"] == 3


def test_probe_reads_separable_labels_and_not_random_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    w = rng.normal(size=(8, 3))
    separable = (x @ w > 0.5).astype(np.int32)
    assert diag.probe_map(x[:400], separable[:400], x[400:], separable[400:], steps=500) > 0.97
    noise = (rng.random((600, 3)) < 0.3).astype(np.int32)
    assert diag.probe_map(x[:400], noise[:400], x[400:], noise[400:], steps=500) < 0.45
