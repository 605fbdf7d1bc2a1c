"""Linear probe: the weight-decay sweep, the refit, and the reported metrics."""

import numpy as np
import pytest

from clip_ping.evaluation.linear_probe import linear_probe, split_train_val


def blobs(n_per_class, centres, noise, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + noise * rng.standard_normal((n_per_class, len(c))) for c in centres])
    y = np.repeat(np.arange(len(centres)), n_per_class)
    return x, y


def test_separable_classes_are_learned_and_the_sweep_is_recorded():
    centres = np.eye(4) * 3
    train_x, train_y = blobs(50, centres, 0.5, seed=0)
    test_x, test_y = blobs(20, centres, 0.5, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-4, 1e-2))
    assert result["lp_acc1"] > 0.95
    assert result["lp_mean_per_class_recall"] > 0.95
    assert result["weight_decay"] in (1e-4, 1e-2)
    assert result["val_acc1"] > 0.95


def test_a_huge_weight_decay_loses_the_sweep_and_ties_go_to_the_larger():
    centres = np.eye(3) * 2
    # Imbalanced training set (100 / 20 / 20), balanced test set.
    x0, _ = blobs(100, centres[:1], 0.6, seed=0)
    x12, y12 = blobs(20, centres[1:], 0.6, seed=1)
    train_x, train_y = np.concatenate([x0, x12]), np.concatenate([[0] * 100, y12 + 1])
    test_x, test_y = blobs(30, centres, 0.6, seed=2)
    # wd = 1e3 shrinks the weights to ~0 and leaves the (unpenalised) intercept: every image
    # is called the majority class.
    only_huge = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e3,))
    assert only_huge["lp_acc1"] == pytest.approx(1 / 3)
    result = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-3, 1e3))
    assert result["weight_decay"] == 1e-3 and result["lp_acc1"] > 0.9
    # Two small decays give the same validation accuracy here: the larger is chosen.
    tied = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-4, 1e-3))
    assert tied["val_acc1"] == result["val_acc1"] and tied["weight_decay"] == 1e-3


def test_mean_per_class_recall_differs_from_accuracy_on_imbalanced_test_sets():
    train_x, train_y = blobs(40, np.eye(2) * 3, 0.3, seed=0)
    # test: 9 easy samples of class 0, 1 sample of class 1 sitting on class 0's centre
    test_x = np.concatenate([np.tile([3.0, 0.0], (9, 1)), [[3.0, 0.0]]])
    test_y = np.array([0] * 9 + [1])
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result["lp_acc1"] == pytest.approx(0.9)
    assert result["lp_mean_per_class_recall"] == pytest.approx(0.5)


def test_split_is_stratified_and_fixed():
    labels = np.repeat(np.arange(5), 20)
    fit, val = split_train_val(labels, 0.2, seed=0)
    assert len(val) == 20 and np.bincount(labels[val]).tolist() == [4] * 5
    again = split_train_val(labels, 0.2, seed=0)
    assert np.array_equal(fit, again[0]) and np.array_equal(val, again[1])
    with pytest.raises(ValueError, match="weight_decays"):
        linear_probe(np.eye(4), [0, 1, 0, 1], np.eye(4), [0, 1, 0, 1], weight_decays=(0.0,))
