"""The simulated H100 against the measured one (shared/reference/h100-step-response.csv), with the bounds of issue 5:
steady power within 10%, temperature within 3 C, clock within 10% per phase, and the two-time-scale step."""

from __future__ import annotations

import pytest

import telemetry as tel
from telemetry.reference import (
    PHASE_DUTY,
    compare_phases,
    find_reference_file,
    load_reference_trace,
    replay_reference,
    step_response_shares,
)

pytestmark = pytest.mark.skipif(find_reference_file() is None, reason="shared/reference not found (MOE_REFERENCE_DIR)")
FULL_LOAD_S, COOLING_S = 73.40, 103.43  # phase starts (h100-nvml-meta.json)


@pytest.fixture(scope="module")
def replay():
    trace = load_reference_trace()
    gpu = tel.SimulatedGpu("H100", initial_temp_c=float(trace.temp_c[0]))
    return trace, replay_reference(gpu, trace)


def test_steady_phases_match_the_measured_h100(replay):
    trace, sim = replay
    rows = compare_phases(trace, sim)
    assert [row.phase for row in rows] == list(PHASE_DUTY)
    for row in rows:
        assert row.temp_error_c <= 3.0, row
        assert row.power_error_pct <= 10.0, row
        assert row.clock_error_pct <= 10.0, row
    full = next(row for row in rows if row.phase == "duty100")
    assert full.simulated_clock_mhz < 0.75 * 1980  # the power cap, not the boost clock


@pytest.mark.parametrize(("step_s", "settle_s"), [(FULL_LOAD_S, 30.0), (COOLING_S, 25.0)])
def test_step_response_has_the_measured_fast_and_slow_parts(replay, step_s, settle_s):
    trace, sim = replay
    measured = step_response_shares(trace.t_s, trace.temp_c, step_s, settle_s)
    simulated = step_response_shares(sim["t_s"], sim["temp_c"], step_s, settle_s)
    assert simulated["rise_c"] == pytest.approx(measured["rise_c"], abs=3.0)
    assert 0.45 <= simulated["fast_share"] <= 0.75  # measured: ~60% within 0.5 s
    assert abs(simulated["fast_share"] - measured["fast_share"]) <= 0.15
    assert 3.0 <= simulated["slow_tau_s"] <= 20.0  # the rest over 10-20 s


def test_reference_trace_phases_and_counter():
    trace = load_reference_trace()
    spans = {phase: (start, end) for phase, start, end in trace.phase_spans()}
    assert spans["duty100"][0] == pytest.approx(FULL_LOAD_S, abs=0.05)
    assert trace.energy_counter_j[-1] > trace.energy_counter_j[0]

