"""AgentRouter: a controller drives a live runtime interval by interval on a simulated GPU or NVML (faked here), with
the env's observations, the paired loss gap, served-token pricing, clear errors, and recovery after an interrupted
interval. Tiny preset, CPU, seconds."""

from __future__ import annotations

import numpy as np
import pytest

from agents import AgentRouter, load_policy
from moe_runtime import MoEConfig, MoERuntime, TTTConfig, TTTEngine
from telemetry import SimulatedGpu

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = MoEConfig.preset("tiny")


def test_agent_router_runs_the_heuristic_on_a_live_runtime(env):
    runtime = MoERuntime(TINY, ttt=TTTEngine(TTTConfig()))
    router = AgentRouter("heuristic", runtime, interval_s=1.0)
    assert router.builder.names == env.unwrapped.observation_names
    records = router.run(4)
    assert [r.interval for r in records] == [0, 1, 2, 3]
    for r in records:
        assert r.source == "simulated" and r.energy_j > 0 and np.isfinite(r.loss)
        assert np.all(r.observation >= router.builder.low) and np.all(r.observation <= router.builder.high)
    assert runtime.action == records[-1].next_action
    assert records[-1].next_action.biases(4)[3] < 0, "the heuristic leans away from the widest expert"
    assert router.controller.get_statistics()["decisions"] == 4


def test_agent_router_observes_the_paired_loss_gap_as_the_env_does():
    """Without a TTT update or biases the served model is the base model: the paired gap is exactly 0, as in the env
    (which scores half a sequence again by default); with `reference_tokens=0` it falls back to a running mean."""
    runtime = MoERuntime(TINY)  # built without a reference, as a user would
    router = AgentRouter("no_control", runtime, monitor=SimulatedGpu("H100", seed=1))
    assert runtime.reference_tokens == TINY.seq_len // 2
    gaps = [router.builder.raw(r.observation, "loss_gap") for r in router.run(3)]
    assert gaps == [0.0, 0.0, 0.0]
    unpaired = AgentRouter("no_control", MoERuntime(TINY), reference_tokens=0, monitor=SimulatedGpu("H100", seed=1))
    assert unpaired.runtime.reference_tokens == 0
    assert any(router.builder.raw(r.observation, "loss_gap") != 0.0 for r in unpaired.run(3))
    with pytest.raises(ValueError, match="reference_tokens must be an integer >= 0, got -1"):
        AgentRouter("no_control", MoERuntime(TINY), reference_tokens=-1)
    assert AgentRouter("no_control", MoERuntime(TINY), reference_tokens=np.int64(8)).runtime.reference_tokens == 8
    bare = MoERuntime(TINY)
    with pytest.raises(ValueError, match="interval_s"):  # a refused router leaves the runtime as it was
        AgentRouter("no_control", bare, reference_tokens=8, interval_s=0.0)
    assert bare.reference_tokens == 0
    for bad in (2.5, float("nan"), True):
        with pytest.raises(ValueError, match="reference_tokens must be an integer >= 0"):
            MoERuntime(TINY, reference_tokens=bad)
    for bad in (0, 2.7, True):  # 0 became the default 128 and 2.7 became 2, silently
        with pytest.raises(ValueError, match=f"need interval_tokens a positive integer, got {bad!r}"):
            AgentRouter("no_control", MoERuntime(TINY), interval_tokens=bad)
        with pytest.raises(ValueError, match=f"need launch_tokens a positive integer, got {bad!r}"):
            AgentRouter("no_control", MoERuntime(TINY), launch_tokens=bad)


def test_agent_router_steps_again_after_an_interrupted_interval(monkeypatch):
    runtime = MoERuntime(TINY)
    router = AgentRouter("no_control", runtime, monitor=SimulatedGpu("H100", seed=1))

    def interrupted(num_tokens):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        router.step()
    monkeypatch.undo()
    assert router.monitor.open_windows == [] and router.step().interval == 0


def test_agent_router_keeps_the_served_interval_when_the_controller_answers_nan():
    runtime = MoERuntime(TINY, ttt=TTTEngine(TTTConfig()))
    router = AgentRouter("heuristic", runtime, monitor=SimulatedGpu("H100", seed=1))
    first = router.step()
    act = router.controller.act
    router.controller.act = lambda obs: np.full_like(act(obs), np.nan)
    served = r"non-finite entries.*after interval 1, which was served and is in router.last_record"
    with pytest.raises(ValueError, match=served):
        router.step()
    lost = router.last_record
    assert lost is not None and lost.interval == 1 and lost.energy_j > 0 and np.isfinite(lost.loss)
    assert lost.applied == first.next_action == lost.next_action == runtime.action, "the runtime keeps its action"
    router.controller.act = act
    assert router.step().interval == 2 and router.last_record.interval == 2


@pytest.mark.parametrize("demand", [1e-9, 10.0])
def test_agent_router_on_nvml_serves_the_demand_then_idles_out_the_interval(demand):
    """On an NVML source the runtime itself serves launches until the demand is met or the interval is used up, then
    the GPU idles for the rest of it, as `MoERoutingMeasured-v0` does; it used to run one step and measure only
    that, so a policy trained on the measured env saw energy and power on another scale."""
    from telemetry_fakes import FakeNvml, reference_rows

    from envs import EnvConfig
    from telemetry import NvmlSource

    fake = FakeNvml(reference_rows(), start_s=80.0, follow_wall_clock=True)
    runtime = MoERuntime(TINY)
    router = AgentRouter("no_control", runtime, monitor=NvmlSource(0, nvml=fake, clock=fake.clock), interval_s=0.25,
                         demand=demand)
    launch = TINY.seq_len * TINY.batch_size
    assert router.launch_tokens == launch and router.interval_tokens == EnvConfig(preset="tiny").runtime_tokens
    assert router.spec.runtime_tokens == router.interval_tokens  # the controller counts the env's tokens
    # The measured env's calibration prices one runtime_tokens step of the real runtime (MeasuredBackend)
    probe = [c for c in MoERuntime(TINY).step(router.interval_tokens).work if c.phase == "forward"]
    cost = router.kcm.predict_step(probe)
    assert router.capacity_tokens_per_s == pytest.approx(cost.tokens / cost.total.latency_s, rel=0.02)
    due = demand * router.capacity_tokens_per_s * 0.25
    for record in router.run(2):
        assert record.source == "measured" and record.tokens % launch == 0
        observed = router.builder.raw(record.observation, "gpu_utilization")
        if demand < 1:  # one launch serves it; the window still spans the interval, mostly idle
            assert record.tokens == launch and record.served_tokens == pytest.approx(due)
            assert record.backlog_tokens == 0.0 and observed < 0.9
        else:  # more than the CPU runtime can serve: launches until the interval is used up, the rest is backlog
            assert record.tokens > launch and record.backlog_tokens > 0.0 and observed > 0.5
            assert record.served_tokens == record.tokens
            # several launches, each scoring its first tokens with the base model: still the paired gap (0 here, up
            # to rounding: the served pass and the reference pass batch the tokens differently, and on some CPUs the
            # matmuls then round differently, 6e-9 nats on 2026-11-25's machine)
            assert router.builder.raw(record.observation, "loss_gap") == pytest.approx(0.0, abs=1e-6)
        assert record.latency_ms > 0.0
        assert record.energy_j / record.power_w >= 0.24  # the window spans the interval, not only the launches
        assert 0.0 < router.builder.raw(record.observation, "sample_staleness_s") < 0.2  # the 100 Hz sampler's age


def test_agent_router_on_nvml_prices_every_expert_for_the_whole_interval():
    """The KCM prices one launch on NVML; the observation's per-expert predictions, as its total, are per interval
    (times the launches the demand needs), as on the simulated GPU. They were per launch, here ~1,000x too small
    beside their total: a policy trained in simulation saw its experts' costs on another scale on a GPU."""
    from telemetry_fakes import FakeNvml, reference_rows

    from telemetry import NvmlSource

    fake = FakeNvml(reference_rows(), start_s=80.0, follow_wall_clock=True)
    router = AgentRouter("no_control", MoERuntime(TINY), monitor=NvmlSource(0, nvml=fake, clock=fake.clock),
                         interval_s=0.25, demand=0.5)  # fmt: skip
    probe = router.kcm.predict_step(MoERuntime(TINY).step(router.launch_tokens).work)
    share = sum(probe.experts.energy_j) / probe.total.energy_j
    obs = router.step().observation
    raw = router.builder.raw
    total = raw(obs, "pred_total_energy_j")
    experts = sum(raw(obs, f"pred_energy_j_e{i}") for i in range(TINY.num_experts))
    assert 0.0 < total < 2.9 * router.gpu_spec.tdp_w * 0.25  # within the feature's bound, not clipped
    assert experts / total == pytest.approx(share, rel=0.25)
    source = router.monitor.source
    with router:  # closing stops the sampler thread of the monitor it made; the source the caller gave stays open
        assert source.sampler_running
    assert not source.sampler_running and fake.inits == 1 and source.temperature_c() > 0
    source.close()
    assert fake.inits == 0


def test_agent_router_names_a_wrong_argument_before_the_first_step():
    runtime = MoERuntime(TINY)
    with pytest.raises(ValueError, match="reference_loss must map each domain to a finite loss"):
        AgentRouter("no_control", runtime, reference_tokens=0, reference_loss={"code": float("nan")})
    loss = np.float32(5.5)  # a numpy loss, as a mean of losses is, is a loss
    router = AgentRouter("no_control", runtime, reference_tokens=0, reference_loss={"code": loss})
    assert router.reference_loss == {"code": pytest.approx(5.5)}
    by_name = AgentRouter("no_control", runtime, monitor="simulated")  # a source name, as the monitor's
    assert isinstance(by_name.gpu, SimulatedGpu) and by_name.gpu is by_name.monitor.source
    wrong = [  # each was an AttributeError from inside the constructor or the first step
        (dict(runtime=TINY), "runtime must be a moe_runtime.MoERuntime, got MoEConfig"),
        (dict(controller=object()), "controller must be a controller name or have act"),
        (dict(monitor=42), "monitor must be None, a GpuSystemMonitor, a GPU source"),
        (dict(kernel_cost_model="H100"), "kernel_cost_model must be None or a KernelCostModel"),
        (dict(action_config={}), "action_config must be None or a ActionConfig"),
    ]
    for kwargs, message in wrong:
        with pytest.raises(TypeError, match=message):
            AgentRouter(**{"controller": "no_control", "runtime": runtime, **kwargs})


def test_agent_router_prices_energy_per_served_token():
    """Demand over capacity leaves a backlog: energy per token counts the tokens served, not those demanded."""
    router = AgentRouter("no_control", MoERuntime(TINY), monitor=SimulatedGpu("H100", seed=1), demand=2.5)
    records = router.run(3)
    assert records[-1].backlog_tokens > records[0].backlog_tokens > 0
    for r in records:
        demanded = router.demand * router.capacity_tokens_per_s * router.interval_s
        assert 0 < r.served_tokens < demanded
        assert r.energy_per_token_j == pytest.approx(r.energy_j / r.served_tokens)


def test_agent_router_runs_a_loaded_policy(ppo_run):
    folder, _, _ = ppo_run
    policy = load_policy(folder / "model.zip")
    runtime = MoERuntime(TINY, ttt=TTTEngine(TTTConfig()))
    router = AgentRouter(policy, runtime, monitor=SimulatedGpu("H100", seed=1))
    for r in router.run(3):
        assert r.next_action == router.spec.codec.decode(policy.act(r.observation))
    assert runtime.action == r.next_action


def test_agent_router_refuses_a_policy_of_another_expert_count(ppo_run):
    folder, _, _ = ppo_run
    policy = load_policy(folder / "model.zip")  # trained on the tiny preset's 4 experts
    runtime = MoERuntime(MoEConfig.preset("default"))  # 8 experts: a longer observation
    with pytest.raises(ValueError, match=r"trained on observations of shape \(43,\); this router's are \(63,\)"):
        AgentRouter(policy, runtime)
    policy.train_env_config = {"preset": "tiny"}  # as a train_agent run's config.yaml records it
    with pytest.raises(ValueError, match="its run served the 'tiny' preset, this runtime is 'default'"):
        AgentRouter(policy, runtime)


def test_agent_router_swaps_its_controller_checked_as_the_constructor_does(ppo_run):
    folder, _, _ = ppo_run
    policy = load_policy(folder / "model.zip")  # trained on the tiny preset's 4 experts
    router = AgentRouter("no_control", MoERuntime(MoEConfig.preset("default")), monitor=SimulatedGpu("H100", seed=1))
    router.step()
    with pytest.raises(ValueError, match=r"trained on observations of shape \(43,\); this router's are \(63,\)"):
        router.controller = policy
    with pytest.raises(TypeError, match="controller must be a controller name or have act"):
        router.controller = object()
    assert type(router.controller).__name__ == "NoControl"  # a refused swap keeps the controller
    router.controller = "load_balance"  # a name is built on the router's spec
    assert type(router.controller).__name__ == "LoadBalance"
    record = router.step()
    assert record.interval == 1 and record.next_action == router.runtime.action  # the router went on
    with pytest.raises(ValueError, match="intervals must be an integer >= 0, got -1"):
        router.run(-1)
    with pytest.raises(ValueError, match="intervals must be an integer >= 0, got 2.5"):
        router.run(2.5)


def test_agent_router_names_the_interval_when_ttt_is_asked_of_a_runtime_without_an_engine():
    runtime = MoERuntime(TINY)  # no TTT engine
    router = AgentRouter("fixed_ttt", runtime, monitor=SimulatedGpu("H100", seed=1))
    before = runtime.action
    with pytest.raises(ValueError, match=r"no TTT engine; build it with one, MoERuntime\(\.\.\., ttt=TTTEngine\(TTTConfig\(\)\)\).*"
                                         r"after interval 0, which was served and is in router.last_record"):
        router.step()
    assert router.last_record.interval == 0 and runtime.action == before


def test_the_measured_env_and_router_read_the_gpu_their_runtime_runs_on(monkeypatch):
    """They ask for the runtime's CUDA device (found in NVML by UUID: NVML numbers GPUs unlike CUDA under
    CUDA_VISIBLE_DEVICES), not NVML's GPU 0; on the CPU there is none to ask for."""
    import envs.measured as measured
    from envs import EnvConfig

    asked = []

    class Spy:
        def __init__(self, **kwargs):
            asked.append(kwargs)
            raise RuntimeError("spied")

    monkeypatch.setattr(measured.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(measured.torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(measured, "GpuSystemMonitor", Spy)
    with pytest.raises(RuntimeError, match="spied"):
        measured.MeasuredBackend(EnvConfig(preset="tiny"))
    assert asked == [{"source": "nvml", "cuda_device": 3}]
    import agents.agent_router as router_module

    monkeypatch.setattr(router_module, "GpuSystemMonitor", Spy)
    with pytest.raises(RuntimeError, match="spied"):
        AgentRouter("no_control", MoERuntime(TINY), monitor="nvml")
    assert asked[-1] == {"source": "nvml", "cuda_device": None}  # a CPU runtime: no CUDA device to find
