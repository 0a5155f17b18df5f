"""envs.rewards: each term of the reward on hand-computed cases (the formula in the module and env docstrings).

    r = - w_energy  * min(E_tok / E_ref, 10)
        - w_temp    * max(0, T - T_target) / T_scale
        - w_latency * log(1 + max(0, L / L_target - 1)),   L_target = configured, else 1.5 x the calibrated latency
        - w_loss    * clip(loss_gap / loss_scale, -10, 10)

Defaults: T_target 75 C, T_scale 10 C, loss_scale 0.25 nats. Reference here: 1 J/token, 100 ms (so L_target 150 ms).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.rewards import OBJECTIVES, RewardConfig, RewardReference, reward, target_latency_ms, vector_reward

REF = RewardReference(energy_per_token_j=1.0, latency_ms=100.0, loss={})
CALM = dict(energy_per_token_j=1.0, temperature_c=50.0, latency_ms=100.0, loss_gap=0.0)  # -1, 0, 0, 0


def terms(cfg: RewardConfig | None = None, ref: RewardReference = REF, **figures) -> dict[str, float]:
    """The unweighted vector by objective name (default RewardConfig), with `CALM` figures except those given."""
    vec = vector_reward(cfg or RewardConfig(), ref, **{**CALM, **figures})
    return dict(zip(OBJECTIVES, (float(v) for v in vec)))


def test_objectives_are_named_in_the_documented_order():
    assert OBJECTIVES == ("energy", "temperature", "latency", "loss")
    assert terms() == {"energy": -1.0, "temperature": 0.0, "latency": 0.0, "loss": 0.0}


@pytest.mark.parametrize(
    ("energy_per_token_j", "expected"),
    [(0.5, -0.5), (1.0, -1.0), (2.0, -2.0), (9.0, -9.0), (10.0, -10.0), (50.0, -10.0), (1e9, -10.0)],
)
def test_energy_term_is_the_ratio_to_the_reference_clipped_at_ten(energy_per_token_j, expected):
    assert terms(energy_per_token_j=energy_per_token_j)["energy"] == pytest.approx(expected, rel=1e-6)


def test_energy_term_is_relative_to_the_calibrated_energy():
    ref4 = RewardReference(energy_per_token_j=4.0, latency_ms=100.0, loss={})
    assert terms(ref=ref4, energy_per_token_j=2.0)["energy"] == pytest.approx(-0.5)  # 2 J against 4 J
    assert terms(ref=ref4, energy_per_token_j=60.0)["energy"] == pytest.approx(-10.0)  # 15x, clipped


@pytest.mark.parametrize(
    ("temperature_c", "expected"),
    [(20.0, 0.0), (60.0, 0.0), (74.9, 0.0), (75.0, 0.0), (80.0, -0.5), (85.0, -1.0), (105.0, -3.0)],
)
def test_temperature_term_costs_only_above_the_target(temperature_c, expected):
    # below the 75 C target it costs nothing, however cold; above it, one unit per 10 C
    assert terms(temperature_c=temperature_c)["temperature"] == pytest.approx(expected, abs=1e-6)


def test_temperature_target_and_scale_are_the_configured_ones():
    cfg = RewardConfig(target_temp_c=60.0, temp_scale_c=4.0)
    assert terms(cfg, temperature_c=70.0)["temperature"] == pytest.approx(-2.5)  # (70 - 60) / 4
    assert terms(cfg, temperature_c=59.0)["temperature"] == 0.0


def test_latency_target_is_one_and_a_half_times_the_calibrated_latency_unless_configured():
    assert target_latency_ms(RewardConfig(), REF) == pytest.approx(150.0)
    assert target_latency_ms(RewardConfig(), RewardReference(1.0, 40.0, {})) == pytest.approx(60.0)
    assert target_latency_ms(RewardConfig(target_latency_ms=20.0), REF) == 20.0


@pytest.mark.parametrize(
    ("latency_ms", "expected"),
    [
        (10.0, 0.0),
        (100.0, 0.0),  # the calibrated latency is within the SLO
        (150.0, 0.0),  # at the target
        (225.0, -math.log(1.5)),  # 1.5x the target: log(1 + 0.5)
        (300.0, -math.log(2.0)),  # twice the target
        (1500.0, -math.log(10.0)),
    ],
)
def test_latency_term_is_the_log_of_the_overshoot(latency_ms, expected):
    assert terms(latency_ms=latency_ms)["latency"] == pytest.approx(expected, abs=1e-6)


def test_a_configured_latency_target_sets_the_overshoot():
    cfg = RewardConfig(target_latency_ms=50.0)
    assert terms(cfg, latency_ms=100.0)["latency"] == pytest.approx(-math.log(2.0))
    assert terms(cfg, latency_ms=50.0)["latency"] == 0.0


@pytest.mark.parametrize(
    ("loss_gap", "expected"),
    [
        (0.0, 0.0),
        (0.05, -0.2),  # a loss increase costs: 0.05 / 0.25
        (0.25, -1.0),
        (-0.05, 0.2),  # served loss below the base model's (TTT that adapts) earns
        (2.5, -10.0),  # at the clip
        (100.0, -10.0),
        (-100.0, 10.0),
    ],
)
def test_loss_term_is_minus_the_scaled_gap_clipped_at_ten(loss_gap, expected):
    assert terms(loss_gap=loss_gap)["loss"] == pytest.approx(expected, abs=1e-6)


def test_loss_scale_is_the_gap_that_costs_one_unit():
    cfg = RewardConfig(loss_scale=0.5)
    assert terms(cfg, loss_gap=0.05)["loss"] == pytest.approx(-0.1)
    assert terms(cfg, loss_gap=0.5)["loss"] == pytest.approx(-1.0)
    assert terms(cfg, loss_gap=6.0)["loss"] == pytest.approx(-10.0)  # 12 units, clipped


def test_total_is_the_weighted_sum_of_the_vector():
    cfg = RewardConfig(w_energy=2.0, w_temp=0.5, w_latency=3.0, w_loss=4.0)
    total, weighted, vec = reward(cfg, REF, energy_per_token_j=2.0, temperature_c=85.0, latency_ms=300.0, loss_gap=0.05)
    # unweighted: -2, -1, -log 2, -0.2; weighted: -4, -0.5, -3 log 2, -0.8
    np.testing.assert_allclose(vec, [-2.0, -1.0, -math.log(2.0), -0.2], rtol=1e-6)
    assert vec.dtype == np.float32 and vec.shape == (4,)
    expected = {"energy": -4.0, "temperature": -0.5, "latency": -3.0 * math.log(2.0), "loss": -0.8}
    assert weighted.keys() == expected.keys()
    for name, value in expected.items():
        assert weighted[name] == pytest.approx(value, rel=1e-6), name
    assert total == pytest.approx(-5.3 - 3.0 * math.log(2.0), rel=1e-6)


def test_no_control_at_the_calibration_scores_minus_the_energy_weight():
    """The module docstring: "no control" scores about -w_energy per step."""
    total, weighted, _ = reward(RewardConfig(), REF, **CALM)
    assert total == pytest.approx(-1.0) and weighted["energy"] == pytest.approx(-1.0)
    assert weighted["temperature"] == weighted["latency"] == 0.0 and weighted["loss"] == 0.0


def test_zero_weights_drop_their_terms_from_the_total_but_not_from_the_vector():
    cfg = RewardConfig(w_energy=0.0, w_temp=0.0, w_latency=0.0, w_loss=1.0)
    total, _, vec = reward(cfg, REF, energy_per_token_j=3.0, temperature_c=95.0, latency_ms=600.0, loss_gap=-0.1)
    assert total == pytest.approx(0.4)  # only the loss term: -(-0.1 / 0.25)
    np.testing.assert_allclose(vec, [-3.0, -2.0, -math.log(4.0), 0.4], rtol=1e-6)
