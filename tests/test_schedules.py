"""Every registered schedule against rates worked out by hand, through the engine's ``learning_rate``."""
import pytest

from tailshift.config import OptimConfig, build_config
from tailshift.engine import learning_rate
from tailshift.schedules import SCHEDULES

# base 0.2, a 10-epoch stage, milestones [4, 8] with gamma 0.1; (progress, expected rate)
BY_HAND = {
    "constant": [(0.0, 0.2), (4.0, 0.2), (9.99, 0.2)],
    # 0.1 * (1 + cos(pi * progress / 10)), flat at 0 past the end
    "cosine": [(0.0, 0.2), (2.5, 0.1 * (1 + 0.7071067811865476)), (5.0, 0.1), (10.0, 0.0), (12.0, 0.0)],
    # 0.1 * (1 + cos(pi * floor(progress) / 10)): 2.7 trains as epoch 2, cos(pi / 5) = 0.8090169943749475
    "cosine_epoch": [(0.0, 0.2), (0.9, 0.2), (2.7, 0.1 * (1 + 0.8090169943749475)), (5.5, 0.1)],
    # BBN's: 1-based epoch k = floor(progress) + 1, x0.1 per milestone <= k, times 1/3 (1 - k/5) + k/5 while k < 5
    "bbn_multistep": [(0.0, 0.2 * (1 / 3 * 0.8 + 0.2)), (2.5, 0.2 * (1 / 3 * 0.4 + 0.6)),
                      (3.0, 0.02 * (1 / 3 * 0.2 + 0.8)), (4.0, 0.02), (6.9, 0.02), (7.0, 0.002), (9.9, 0.002)],
    # x0.1 from epoch 4 on, x0.01 from epoch 8 on
    "step": [(0.0, 0.2), (3.99, 0.2), (4.0, 0.02), (7.5, 0.02), (8.0, 0.002), (9.9, 0.002)],
}


def test_every_schedule_is_checked_by_hand():
    assert sorted(BY_HAND) == SCHEDULES.names()


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_schedule_rates_match_the_hand_values(name):
    optim = OptimConfig(schedule=name, milestones=[4, 8], gamma=0.1)
    for progress, expected in BY_HAND[name]:
        assert learning_rate(optim, 0.2, name, 10, progress) == pytest.approx(expected, abs=1e-12), progress


def test_schedules_start_after_the_warmup():
    optim = OptimConfig(warmup_epochs=2, milestones=[4, 8])
    assert learning_rate(optim, 0.2, "constant", 10, 1.0) == pytest.approx(0.1)  # linear warm-up: 0.2 * 1 / 2
    # cosine decays over the 8 epochs after the warm-up: at 6, half way, 0.1
    assert learning_rate(optim, 0.2, "cosine", 10, 6.0) == pytest.approx(0.1, abs=1e-12)
    # cosine_epoch counts from the stage start with its own period: epoch 5 of 20, 0.1 * (1 + cos(pi / 4))
    assert learning_rate(optim, 0.2, "cosine_epoch", 10, 5.5, period=20) == pytest.approx(0.1 * (1 + 0.7071067811865476))


def test_the_config_takes_only_registered_schedules():
    assert build_config({}, ["train.optim.schedule=cosine_epoch"]).train.optim.schedule == "cosine_epoch"
    with pytest.raises(ValueError, match="train.optim.schedule must be one of bbn_multistep, constant, cosine, cosine_epoch, "
                                         "step; got 'linear'"):
        build_config({}, ["train.optim.schedule=linear"])
