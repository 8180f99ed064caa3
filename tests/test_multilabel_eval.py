"""Zero-shot multi-label mAP (vlmjax/evaluators/multilabel.py) against a brute-force reading of the definition."""
import numpy as np

from vlmjax.evaluators.multilabel import average_precision


def _ap_brute(s, pos):
    """Precision at each positive's threshold, counted pair by pair."""
    precisions = []
    for i in range(len(s)):
        if pos[i]:
            above = [j for j in range(len(s)) if s[j] >= s[i]]
            precisions.append(sum(pos[j] for j in above) / len(above))
    return sum(precisions) / len(precisions)


def test_average_precision_matches_the_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(40, 5)), 1)  # rounded: ties happen
    positives = rng.random((40, 5)) < 0.3
    positives[:, 4] = False  # a class with no positive image
    ap = average_precision(scores, positives)
    for c in range(4):
        assert np.isclose(ap[c], _ap_brute(scores[:, c], positives[:, c]))
    assert np.isnan(ap[4])
    # a hand case: ranked [+, -, +, -] -> (1/1 + 2/3) / 2
    assert np.isclose(average_precision(np.array([[0.9], [0.8], [0.7], [0.1]]),
                                        np.array([[1], [0], [1], [0]]))[0], (1 + 2 / 3) / 2)
    # perfect ranking -> 1; a tie between a positive and a negative counts both at that threshold
    assert average_precision(np.array([[3.0], [2.0], [1.0]]), np.array([[1], [1], [0]]))[0] == 1.0
    assert np.isclose(average_precision(np.array([[1.0], [1.0]]), np.array([[1], [0]]))[0], 0.5)
