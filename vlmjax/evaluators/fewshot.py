"""`type='fewshot'`: linear probes on frozen image features from k labelled examples per class, fit in closed form
(ridge regression to +-1 one-hot targets, as big_vision's `fewshot_lsr`): how linearly separable the classes are in
the representation, with no training loop.

For each k in `shots`, the first k examples of every class in `train_data` (in the order the split is read, so the
draw is the same in every run on the same number of processes) fit the probe, and the evaluator's own `data` split
is classified with it. Features are standardised with the shot set's mean and standard deviation, and a constant
feature stands in for the bias (large, so the ridge barely shrinks it). `l2_reg` is fixed, never chosen on the
evaluated split.

Features: the task's `image_features` predict fn (the classifier's pooled pre-logits; the towers' L2-normalised
image embedding, the space zero-shot reads). Labels: `label_key` (default 'label'), which the evaluator's
preprocessing must keep. Keys: `shots` (default (1, 5, 10)), `l2_reg` (default 1024), `label_key`, `train_data`
(overrides of the shots' data: default the evaluator's own data with split 'train' and the first 5000 examples).
Metrics `{k}shot_accuracy` per k, and `classes` (how many classes the probes separate).
"""
import copy
import dataclasses
from typing import Any, Tuple

import numpy as np

from vlmjax.evaluators.base import Evaluator, Metrics

KEYS = ("shots", "l2_reg", "label_key", "train_data")
DATA_KEYS = ("name", "split", "data_dir", "preprocess", "batch_size", "max_examples")
BIAS_FEATURE = 100.0  # the bias's weight is penalised l2_reg / BIAS_FEATURE**2 (~0.1 at the default l2_reg)


def first_shots(labels: np.ndarray, k: int) -> np.ndarray:
    """int[N] labels -> indices of the first k rows of every class present, in row order; ValueError naming the
    classes with fewer than k rows."""
    classes, counts = np.unique(labels, return_counts=True)
    short = classes[counts < k]
    if len(short):
        raise ValueError(f"fewshot: classes {short.tolist()} have fewer than {k} examples among the {len(labels)} "
                         f"rows of train_data (raise train_data.max_examples, or drop {k} from shots)")
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in classes]))


def fit_probe(x: np.ndarray, labels: np.ndarray, classes: np.ndarray, l2_reg: float):
    """float[N, D] shot features, int[N] labels -> (mean float[D], std float[D], weights float[D + 1, C]).

    Ridge regression to targets +1 (own class) / -1 (others), in float64; solved in the smaller of the primal
    (D + 1 unknowns per class) and the dual (N), which give the same weights."""
    x = x.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    a = standardise(x, mean, std)
    y = np.where(labels[:, None] == classes[None, :], 1.0, -1.0)
    n, d = a.shape
    if n >= d:
        w = np.linalg.solve(a.T @ a + l2_reg * np.eye(d), a.T @ y)
    else:
        w = a.T @ np.linalg.solve(a @ a.T + l2_reg * np.eye(n), y)
    return mean, std, w


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float[N, D] -> float64[N, D + 1]: standardised features and the constant bias feature."""
    a = (x.astype(np.float64) - mean) / std
    return np.concatenate([a, np.full((len(a), 1), BIAS_FEATURE)], axis=1)


def probe_accuracy(train: dict, test: dict, k: int, l2_reg: float) -> float:
    """{'z': float[N, D], 'label': int[N]} shot pool and evaluated split -> accuracy of the k-shot probe (rows whose
    class has no shots count as wrong)."""
    idx = first_shots(train["label"], k)
    classes = np.unique(train["label"][idx])
    mean, std, w = fit_probe(train["z"][idx], train["label"][idx], classes, l2_reg)
    pred = classes[np.argmax(standardise(test["z"], mean, std) @ w, axis=1)]
    return float(np.mean(pred == test["label"]))


@dataclasses.dataclass
class FewShotEvaluator(Evaluator):
    """Two passes of `predict`: the shot pool (`train_data`), then the evaluated split (`data`)."""

    train_data: Any = None
    shots: Tuple[int, ...] = (1, 5, 10)
    l2_reg: float = 1024.0

    def run(self, variables, runtime) -> Metrics:
        pool = runtime.predict_all(self.predict, variables, self.train_data)
        test = runtime.predict_all(self.predict, variables, self.data)
        out = {f"{k}shot_accuracy": probe_accuracy(pool, test, k, self.l2_reg) for k in self.shots}
        out["classes"] = float(len(np.unique(pool["label"])))
        return out


def build(task, cfg, where: str) -> Evaluator:
    fns = task.predict_fns()
    if "image_features" not in fns:
        raise ValueError(f"{where}.type='fewshot': this task has no image features to probe")
    features = fns["image_features"]
    label_key = cfg.get("label_key", "label")
    shots = tuple(int(k) for k in cfg.get("shots", (1, 5, 10)))
    l2_reg = float(cfg.get("l2_reg", 1024.0))
    if not shots or min(shots) < 1:
        raise ValueError(f"{where}.shots={shots}: expected one or more counts >= 1")
    if l2_reg <= 0:
        raise ValueError(f"{where}.l2_reg={l2_reg}: must be > 0")
    train_data = copy.deepcopy(cfg.data)
    with train_data.unlocked():
        train_data.split, train_data.max_examples = "train", 5000
        for key, value in (cfg.get("train_data") or {}).items():
            if key not in DATA_KEYS:
                raise ValueError(f"{where}.train_data.{key}: not a data key (expected one of {', '.join(DATA_KEYS)})")
            train_data[key] = value

    def predict(variables, batch):
        if label_key not in batch:
            raise KeyError(f"{where}: the preprocessed batch has no {label_key!r} (it has {sorted(batch)}); keep it "
                           f"in {where}.data.preprocess, or set {where}.label_key")
        return {"z": features(variables, batch["image"]), "label": batch[label_key]}

    return FewShotEvaluator(data=cfg.data, predict=predict, train_data=train_data, shots=shots, l2_reg=l2_reg)
