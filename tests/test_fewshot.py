"""The few-shot linear-probe evaluator: the ridge solution against numpy's least squares on the augmented system,
the shot draw, separable vs random labels, and a trained classifier's probes equal on one device and on eight."""
import jax
import numpy as np
import pytest

from test_core import tiny_config
from vlmjax.core.loop import train
from vlmjax.evaluators.fewshot import first_shots, fit_probe, probe_accuracy, standardise


def ridge_lstsq(a, y, l2_reg):
    """Ridge as ordinary least squares on [a; sqrt(l2) I] -> [y; 0]: an independent route to the same weights."""
    d = a.shape[1]
    return np.linalg.lstsq(np.vstack([a, np.sqrt(l2_reg) * np.eye(d)]), np.vstack([y, np.zeros((d, y.shape[1]))]),
                           rcond=None)[0]


@pytest.mark.parametrize("n", [40, 6])  # N >= D + 1 (primal) and N < D + 1 (dual)
def test_fit_probe_is_ridge_regression(n):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(n, 12)) * 3 + 1, rng.integers(0, 3, n)
    classes = np.arange(3)
    mean, std, w = fit_probe(x, labels, classes, l2_reg=5.0)
    np.testing.assert_allclose(mean, x.mean(0))
    a = standardise(x, mean, std)
    assert a.shape == (n, 13) and np.allclose(a[:, :12].mean(0), 0)
    y = np.where(labels[:, None] == classes, 1.0, -1.0)
    np.testing.assert_allclose(w, ridge_lstsq(a, y, 5.0), rtol=1e-6, atol=1e-9)


def test_first_shots_takes_the_first_k_of_each_class_and_names_short_classes():
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 1])
    assert first_shots(labels, 1).tolist() == [0, 1, 3]
    assert first_shots(labels, 2).tolist() == [0, 1, 2, 3, 4, 7]
    with pytest.raises(ValueError, match=r"classes \[1\] have fewer than 3 examples among the 8 rows"):
        first_shots(labels, 3)


def test_separable_classes_are_probed_right_and_uninformative_features_at_chance():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 4

    def split(n):
        labels = rng.integers(0, 5, n)
        return {"z": centres[labels] + rng.normal(size=(n, 16)), "label": labels}

    pool, test = split(500), split(1000)
    assert probe_accuracy(pool, test, 5, 1024.0) > 0.95
    noise = {k: {"z": rng.normal(size=d["z"].shape), "label": d["label"]} for k, d in (("pool", pool), ("test", test))}
    assert abs(probe_accuracy(noise["pool"], noise["test"], 10, 1024.0) - 0.2) < 0.06  # chance 0.2, std 0.013


def test_a_trained_classifier_is_probed_alike_on_one_device_and_eight(tmp_path):
    """Wired through the registry on the classifier's pre-logits: learnable fake data reads far above chance
    (0.25), the class count is right, and the metrics do not depend on the mesh."""
    over = {"evals.fewshot": dict(type="fewshot", shots=(1, 5), l2_reg=64.0, data=dict(split="test",
                                  preprocess=tiny_config().data.preprocess)), "total_steps": 10}
    eight = train(tiny_config(**over), str(tmp_path / "eight"))
    one = train(tiny_config(**over, **{"mesh.data": 1}), str(tmp_path / "one"), devices=jax.devices()[:1])
    assert eight["eval/fewshot/classes"] == 4
    assert eight["eval/fewshot/5shot_accuracy"] > 0.6
    for k in ("1shot_accuracy", "5shot_accuracy"):
        assert one[f"eval/fewshot/{k}"] == pytest.approx(eight[f"eval/fewshot/{k}"], abs=1 / 40)
