import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from model.metrics import binary_metrics, find_best_f1_and_threshold


def brute_force_best_f1(scores, labels):
    return max(
        f1_score(labels, (scores >= t).astype(int), zero_division=0) for t in np.unique(scores)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20).map(lambda x: x / 20), st.integers(0, 1)),
        min_size=2,
        max_size=40,
    )
)
def test_best_f1_matches_sklearn_oracle(rows):
    scores = np.array([s for s, _ in rows])
    labels = np.array([y for _, y in rows])
    assume(labels.sum() > 0)
    threshold, f1 = find_best_f1_and_threshold(scores, labels)
    assert f1 == pytest.approx(brute_force_best_f1(scores, labels))
    # The threshold really achieves that F1.
    assert f1_score(labels, (scores >= threshold).astype(int)) == pytest.approx(f1)


def test_binary_metrics_fields():
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    labels = np.array([1, 0, 1, 0])
    m = binary_metrics(scores, labels, 0.5)
    assert m["accuracy"] == 0.5
    assert m["precision"] == 0.5
    assert m["recall"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["n"] == 4
