import numpy as np
import pytest
import torch

from tailshift.data.arrays import DataError
from tailshift.data.groups import class_groups
from tailshift.metrics import group_accuracy, per_class_accuracy, summarize


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


# --- the public group_accuracy -----------------------------------------------------------------
def test_group_accuracy_by_training_count():
    counts = [500, 101, 100, 20, 19, 5]  # many: 0, 1; medium: 2, 3; few: 4, 5
    labels = np.array([0, 0, 1, 2, 2, 3, 4, 4, 5])
    pred = np.array([0, 1, 1, 2, 0, 0, 4, 0, 0])
    scores = group_accuracy(pred, labels, counts)
    assert scores["all"] == pytest.approx(100 * 4 / 9)
    assert scores["many"] == pytest.approx(75.0)  # class 0: 1/2, class 1: 1/1
    assert scores["med"] == pytest.approx(25.0) and scores["few"] == pytest.approx(25.0)
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 6).float() * 3 - 1
    assert group_accuracy(logits, torch.from_numpy(labels), torch.tensor(counts)) == scores


def test_group_accuracy_by_index_is_what_a_run_reports():
    counts = np.arange(10, 0, -1) * 30
    labels, pred = np.arange(10).repeat(3), np.arange(10).repeat(3)
    pred[[0, 10, 29]] = 5
    groups = class_groups(counts, "index")
    expected = summarize(pred, labels, 10, groups)
    scores = group_accuracy(pred, labels, counts, rule="index")
    assert scores == {key: expected[key] for key in ("all", "many", "med", "few")}
    assert group_accuracy(pred, labels, counts, rule="index", bounds=(5, 5))["med"] is None  # an empty group


@pytest.mark.parametrize("args,fragment", [
    (([0, 1], [0, 3], [5, 5]), "labels must be a 1-d sequence of class indices in [0, 2)"),
    (([0.0, 1.0], [0, 1], [5, 5]), "predictions must be a 1-d sequence of class indices in [0, 2)"),
    (([0, 1, 1], [0, 1], [5, 5]), "predictions and labels must be as many and at least one, got 3 and 2"),
    (([0], [0], [[5, 5]]), "class_counts must be a non-empty 1-d sequence of finite counts >= 0"),
    (([0], [0], [5, float("nan")]), "class_counts must be a non-empty 1-d sequence of finite counts >= 0"),
])
def test_group_accuracy_refuses_bad_input_in_one_line(args, fragment):
    with pytest.raises(ValueError) as refused:
        group_accuracy(*args)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)


def test_group_accuracy_refuses_an_unknown_rule():
    with pytest.raises(DataError, match="unknown group rule 'size'; known: index, count"):
        group_accuracy([0], [0], [5, 5], rule="size")
