import numpy as np
import pytest

from tailshift.data.arrays import DataError
from tailshift.data.groups import class_groups
from tailshift.metrics import per_class_accuracy, summarize


def test_index_groups_of_the_release():
    g = class_groups(np.ones(10), "index")
    assert [g[k].tolist() for k in ("many", "med", "few")] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    g = class_groups(np.ones(100), "index")
    assert (len(g["many"]), len(g["med"]), len(g["few"])) == (36, 35, 29)


def test_count_groups_use_100_and_20():
    g = class_groups(np.array([500, 101, 100, 20, 19, 5]), "count")
    assert g["many"].tolist() == [0, 1] and g["med"].tolist() == [2, 3] and g["few"].tolist() == [4, 5]


def test_index_groups_need_bounds_for_unusual_class_counts():
    with pytest.raises(DataError, match="no default index bounds for 7 classes"):
        class_groups(np.ones(7), "index")
    assert class_groups(np.ones(7), "index", (2, 5))["few"].tolist() == [5, 6]


def test_summary_values():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(per_class_accuracy(pred, labels, 3), [1.0, 0.5, 0.0])
    s = summarize(pred, labels, 3, {"many": np.array([0]), "med": np.array([1]), "few": np.array([2])})
    assert s["all"] == pytest.approx(50.0) and s["many"] == 100 and s["med"] == 50 and s["few"] == 0
    assert s["max_pred_share"] == pytest.approx(5 / 6) and not s["collapsed"]
    assert summarize(np.zeros(6, int), labels, 3, {"many": np.array([0])})["collapsed"]


def test_empty_groups_and_untested_classes_are_none():
    labels = np.array([0, 0, 1])
    s = summarize(np.array([0, 1, 1]), labels, 3, {"many": np.array([], int), "med": np.array([0]), "few": np.array([2])})
    assert s["many"] is None and s["few"] is None and s["med"] == 50
    assert s["per_class"] == [50.0, 100.0, None]
