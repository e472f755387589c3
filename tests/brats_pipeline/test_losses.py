"""Losses: values against hand-computed cases, both modes, errors at the boundary, and they train."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brats_pipeline.losses import LOSSES, build_loss

EXACT = {"smooth_nr": 0.0, "smooth_dr": 0.0}


# --------------------------------------------------------------------------- fixtures
def _sigmoid_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 0 (p = 0.5) on 1 x 2 x 4 x 4; channel 0 has 4 positives, channel 1 has 8 (of 16)."""
    logits = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, :2, :2] = 1
    target[0, 1, :2, :] = 1
    return logits, target


def _softmax_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 0 (p = 1/3) on 1 x 3 x 4 x 4; labels: 8 voxels of class 0, 4 of class 1, 4 of class 2."""
    logits = torch.zeros(1, 3, 4, 4)
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels[0, 0, 2, :] = 1
    labels[0, 0, 3, :] = 2
    return logits, labels


# With p = 0.5: soft Dice loss of a channel with T of N=16 positives is 1 - 2(T/2) / (N/2 + T).
DICE_SIGMOID = ((1 - 4 / (8 + 4)) + (1 - 8 / (8 + 8))) / 2  # 7/12
# With p = 1/3: class with T of 16 voxels: 1 - 2(T/3) / (16/3 + T).
DICE_SOFTMAX = np.mean([1 - 2 * (t / 3) / (16 / 3 + t) for t in (8, 4, 4)])


# ------------------------------------------------------------------ hand-computed values
@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("dice", EXACT, DICE_SIGMOID),
        ("ce", {}, math.log(2)),  # binary CE at p = 0.5
        ("ce", {"weight": [3.0, 1.0]}, (3 * 4 + 12 + 16) * math.log(2) / 32),  # channel 0's 4 positives weigh 3
        ("dice_bce", EXACT, DICE_SIGMOID + math.log(2)),
        ("dice_ce", EXACT, DICE_SIGMOID + math.log(2)),  # sigmoid mode: CE is per-channel binary CE
        ("dice_ce", {**EXACT, "lambda_ce": 0.5}, DICE_SIGMOID + 0.5 * math.log(2)),
        ("focal", {}, 0.25 * math.log(2)),  # (1 - p_t)^2 * -log p_t at p_t = 0.5
        ("dice_focal", {**EXACT, "lambda_focal": 0.5}, DICE_SIGMOID + 0.5 * 0.25 * math.log(2)),
        # Tversky index at p = 0.5: TP = T/2, FP = (16 - T)/2, FN = T/2 -> T / (1.4 T + 4.8)
        ("tversky", EXACT, 1 - (4 / (1.4 * 4 + 4.8) + 8 / (1.4 * 8 + 4.8)) / 2),
        # weights 1/T^2 = 1/16, 1/64: 1 - 2 (2/16 + 4/64) / (12/16 + 16/64)
        ("generalized_dice", EXACT, 1 - 2 * (2 / 16 + 4 / 64) / (12 / 16 + 16 / 64)),
        ("wce_dice", {**EXACT, "class_weights": [1.0, 1.0]}, DICE_SIGMOID + math.log(2)),
    ],
)
def test_sigmoid_mode_values(name, kw, expected):
    logits, target = _sigmoid_case()
    value = build_loss(name, mode="sigmoid", **kw)(logits, target)
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("dice", EXACT, DICE_SOFTMAX),
        ("ce", {}, math.log(3)),  # CE at p = 1/3, whatever the class
        ("ce", {"weight": [1.0, 2.0, 4.0]}, math.log(3)),  # a weighted mean of equal values
        ("dice_ce", EXACT, DICE_SOFTMAX + math.log(3)),
        ("focal", {"gamma": 0.0}, math.log(3)),  # gamma 0: exactly the cross-entropy
        ("focal", {}, (2 / 3) ** 2 * math.log(3)),
        ("dice_focal", {**EXACT, "lambda_focal": 2.0}, DICE_SOFTMAX + 2 * (2 / 3) ** 2 * math.log(3)),
        ("tversky", {**EXACT, "alpha": 0.5, "beta": 0.5}, DICE_SOFTMAX),  # alpha = beta = 0.5 is Dice
        (
            "generalized_dice",
            EXACT,
            1 - 2 * (8 / 3 / 64 + 2 * (4 / 3) / 16) / ((16 / 3 + 8) / 64 + 2 * (16 / 3 + 4) / 16),
        ),
        # uniform logits: CE = ln 3 whatever the weights; balanced weights 16/(3 n_c) = 2/3, 4/3, 4/3
        # (mean-1: 0.6, 1.2, 1.2) weight the per-class Dice losses 0.6, 5/7, 5/7
        ("wce_dice", EXACT, math.log(3) + (0.6 * 0.6 + 2 * 1.2 * 5 / 7) / 3.0),
        ("wce_dice", {**EXACT, "class_weights": [1, 1, 1]}, math.log(3) + DICE_SOFTMAX),
    ],
)
def test_softmax_mode_values(name, kw, expected):
    logits, labels = _softmax_case()
    value = build_loss(name, mode="softmax", **kw)(logits, labels)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=0, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=0, keepdims=True))


def test_wce_dice_softmax_weights_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 4)).astype(np.float32)
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[2, :] = 1
    labels[3, :2] = 2
    weights = np.array([1.0, 2.0, 3.0])
    w = weights / weights.mean()
    logp = _log_softmax(logits)
    onehot = np.stack([labels == c for c in range(3)]).astype(np.float64)
    ce = (
        sum(-w[labels[i, j]] * logp[labels[i, j], i, j] for i in range(4) for j in range(4)) / w[labels].sum()
    )
    p = np.exp(logp)
    dice = 1 - 2 * (p * onehot).sum((1, 2)) / (p.sum((1, 2)) + onehot.sum((1, 2)))
    expected = ce + (w * dice).sum() / w.sum()

    loss = build_loss("wce_dice", mode="softmax", class_weights=weights.tolist(), **EXACT)
    value = loss(torch.from_numpy(logits)[None], torch.from_numpy(labels)[None, None])
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_ce_weight_must_have_one_entry_per_channel():
    logits, target = _sigmoid_case()
    with pytest.raises(ValueError, match="weight has 3 entries but the logits have 2 channels"):
        build_loss("ce", weight=[1.0, 1.0, 1.0])(logits, target)


def test_wce_dice_balanced_weights_follow_inverse_frequency():
    logits, labels = _softmax_case()  # counts 8, 4, 4 of N = 16 -> N/(C n_c) = 2/3, 4/3, 4/3
    loss = build_loss("wce_dice", mode="softmax").loss
    w = loss.weights(logits, labels.float())
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 1.0]) / (2.5 / 3))

    # sigmoid: positives per channel 4 and 8 of 16 -> 16/(2*4), 16/(2*8) = 2, 1 -> mean-1: 4/3, 2/3
    logits, target = _sigmoid_case()
    loss = build_loss("wce_dice", mode="sigmoid").loss
    torch.testing.assert_close(loss.weights(logits, target), torch.tensor([4 / 3, 2 / 3]))

    # a class absent from the batch gets the largest present weight
    target[0, 1] = 0
    torch.testing.assert_close(loss.weights(logits, target), torch.tensor([1.0, 1.0]))


def test_wce_dice_sigmoid_weights_channels_by_hand():
    logits, target = _sigmoid_case()
    logits[0, 0] = 2.0  # channel 0: p = sigmoid(2)
    p0 = 1 / (1 + math.exp(-2))
    bce0 = (4 * -math.log(p0) + 12 * -math.log(1 - p0)) / 16
    dice0 = 1 - 2 * 4 * p0 / (16 * p0 + 4)
    dice1 = 1 - 8 / (8 + 8)
    w = np.array([1.0, 3.0]) / 2.0
    expected = (w[0] * bce0 + w[1] * math.log(2)) / w.sum() + (w[0] * dice0 + w[1] * dice1) / w.sum()
    loss = build_loss("wce_dice", mode="sigmoid", class_weights=[1.0, 3.0], **EXACT)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_bce_pos_weight_weights_positive_voxels():
    logits, target = _sigmoid_case()
    loss = build_loss("dice_bce", lambda_dice=0.0, pos_weight=[3.0, 1.0])
    # channel 0: 4 positives weighted 3, 12 negatives; channel 1 unweighted; mean over 32 elements
    expected = (3 * 4 + 12 + 16) * math.log(2) / 32
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_bool_and_int_targets_are_accepted():
    logits, target = _sigmoid_case()
    loss = build_loss("dice_focal")
    assert loss(logits, target.bool()).item() == pytest.approx(loss(logits, target).item())
    logits, labels = _softmax_case()
    loss = build_loss("dice_ce", mode="softmax")
    assert loss(logits, labels.int()).item() == pytest.approx(loss(logits, labels.float()).item())


def test_3d_inputs_work():
    logits = torch.randn(2, 3, 8, 8, 8)
    target = torch.rand(2, 3, 8, 8, 8) > 0.5
    for name in LOSSES:
        assert torch.isfinite(build_loss(name)(logits, target))


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize(("name", "mode"), [(n, m) for n, s in LOSSES.items() for m in s.modes])
def test_loss_decreases_under_adam(name, mode):
    g = torch.Generator().manual_seed(0)
    if mode == "sigmoid":
        target = torch.rand(2, 3, 8, 8, 8, generator=g) > 0.7
    else:
        target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    logits = torch.nn.Parameter(torch.randn(2, 3, 8, 8, 8, generator=g) * 0.1)
    loss_fn = build_loss(name, mode=mode)
    opt = torch.optim.Adam([logits], lr=0.1)
    values = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0] * 0.9, values


# ------------------------------------------------------------------------------- errors
def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="unknown loss 'dice2'.*dice_focal.*generalized_dice"):
        build_loss("dice2")


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown loss mode 'relu'"):
        build_loss("dice", mode="relu")


def test_dice_bce_is_sigmoid_only():
    with pytest.raises(ValueError, match="'dice_bce' supports mode sigmoid only.*dice_ce"):
        build_loss("dice_bce", mode="softmax")


def test_activation_options_are_set_by_mode():
    with pytest.raises(ValueError, match=r"\['softmax'\] are set by mode"):
        build_loss("dice", softmax=True)


def test_sigmoid_target_must_match_logits():
    logits, _ = _sigmoid_case()
    with pytest.raises(
        ValueError, match="sigmoid mode.*logits' shape \\(1, 2, 4, 4\\).*got \\(1, 1, 4, 4\\)"
    ):
        build_loss("dice")(logits, torch.zeros(1, 1, 4, 4))


def test_softmax_target_must_be_class_indices():
    logits, labels = _softmax_case()
    with pytest.raises(ValueError, match="softmax mode.*class indices of shape \\(1, 1, 4, 4\\)"):
        build_loss("dice_ce", mode="softmax")(logits, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="must lie in \\[0, 2\\], got values in \\[0, 4\\]"):
        build_loss("dice_ce", mode="softmax")(logits, labels * 2)


def test_logits_must_be_2d_or_3d_images():
    with pytest.raises(ValueError, match="logits must be"):
        build_loss("dice")(torch.zeros(2, 3), torch.zeros(2, 3))


def test_bad_class_weights():
    with pytest.raises(ValueError, match="class_weights must be a non-empty sequence of positive numbers"):
        build_loss("wce_dice", class_weights=[1.0, -1.0])
    logits, target = _sigmoid_case()
    with pytest.raises(ValueError, match="class_weights has 3 entries but the logits have 2 channels"):
        build_loss("wce_dice", class_weights=[1.0, 1.0, 1.0])(logits, target)


def test_negative_lambda_rejected():
    with pytest.raises(ValueError, match="lambda_bce must be >= 0"):
        build_loss("dice_bce", lambda_bce=-1.0)


def test_registry_cites_papers():
    for name, spec in LOSSES.items():
        assert spec.name == name and spec.paper and spec.description
        assert set(spec.modes) <= {"sigmoid", "softmax"}
