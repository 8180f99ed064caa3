"""`type='zeroshot_multilabel'`: zero-shot multi-label classification, scored by mean average precision.

Every image is scored against every class embedding (built from class names and templates exactly as
`type='zeroshot'` builds them: same keys, same prompts); a class's average precision ranks all images by their
score for it, with the images that contain the class (`multilabel_key`, int[C] 0/1, default 'multi_labels') as
positives. Metric `mAP`: the mean over the classes present in at least one image. Unlike top-1 accuracy on a
"main object" label, every object of the scene counts and no rule that a class name cannot express is involved.
"""
import numpy as np

from vlmjax.evaluators import retrieval_metrics as rm
from vlmjax.evaluators.zeroshot import KEYS as ZEROSHOT_KEYS
from vlmjax.evaluators.zeroshot import ZeroShotEvaluator, class_names_of, zeroshot_prompts

KEYS = ZEROSHOT_KEYS + ("multilabel_key",)


def average_precision(scores, positives) -> np.ndarray:
    """Non-interpolated AP of each column, as scikit-learn's `average_precision_score` defines it: scores
    float[N, C], positives {0,1}[N, C] -> float[C] (NaN for a class with no positive). For a class, the mean over
    its positives p of precision at threshold score(p): (positives scoring >= it) / (images scoring >= it)."""
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives).astype(bool)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        s, pos = scores[:, c], positives[:, c]
        if not pos.any():
            continue
        everyone, hits = np.sort(s), np.sort(s[pos])
        at_or_above = len(s) - np.searchsorted(everyone, s[pos], side="left")
        hits_at_or_above = len(hits) - np.searchsorted(hits, s[pos], side="left")
        out[c] = np.mean(hits_at_or_above / at_or_above)
    return out


class MultiLabelEvaluator(ZeroShotEvaluator):
    """A zero-shot evaluator whose label is the multi-hot `multilabel_key` (int[C]), reduced to mAP."""

    def run(self, variables, runtime):
        classes, out = self.embed(variables, runtime)
        if out["label"].shape[1:] != (len(self.prompts),):
            raise ValueError(f"zeroshot_multilabel: the labels are {out['label'].shape[1:]} per image but there are "
                             f"{len(self.prompts)} classes")
        ap = average_precision(rm.class_scores(out["zimg"], classes), out["label"])
        return {"mAP": float(np.nanmean(ap))}


def build(task, cfg, where: str) -> ZeroShotEvaluator:
    names = class_names_of(cfg, cfg.get("label_key", "label"))
    prompts, aggregate = zeroshot_prompts(cfg, names, where)
    return MultiLabelEvaluator(cfg.data, task, names, prompts, cfg.get("multilabel_key", "multi_labels"), aggregate)
