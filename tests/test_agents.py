"""agents: controllers react the right way, baselines drive the env, the router-module face matches the runtime's
router, a PPO policy reloads as a Controller, warm starts (AgentRouter: `test_agent_router.py`). Tiny preset, CPU,
seconds."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import agents
import envs  # noqa: F401  (registers MoERouting-v0)
from agents import ControlSpec, EnergyAwareTTTRouter, load_policy, make_controller
from agents.warm_start import Demonstrations, discounted_returns, fit_policy
from envs import ActionConfig
from kernels import KernelCostModel, dispatch
from moe_runtime import ControlAction, MoEConfig, MoETransformer
from telemetry import GpuSystemMonitor, SimulatedGpu

CONTROLLER_NAMES = sorted(agents.CONTROLLERS)
TINY = MoEConfig.preset("tiny")
COST_RATIO = np.array([0.42, 0.80, 1.19, 1.58])  # tiny experts' energy per token over the mean (narrow -> wide)
# Observations crafted through the env's ObservationBuilder: one runtime interval of 1024 tokens, a lightly loaded
# GPU (so TTT fits in the idle time), cool, or hot and at the power cap.
SPEC = ControlSpec(
    num_experts=4, tdp_w=700.0, slowdown_temp_c=89.0, interval_s=1.0, action=ActionConfig(), runtime_tokens=1024
)
COOL = dict(temperature_c=45.0, power_w=250.0, throttled=0.0, sm_clock_ratio=1.0)
HOT = dict(temperature_c=86.0, power_w=695.0, throttled=1.0, sm_clock_ratio=0.75)
SPIKE = dict(loss_delta=0.4, loss_gap=0.3)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def figures(**overrides) -> dict:
    f = {
        "power_w": 250.0,
        "interval_energy_j": 250.0,
        "temperature_c": 45.0,
        "sm_clock_ratio": 1.0,
        "gpu_utilization": 0.1,
        "memory_pressure": 0.1,
        "throttled": 0.0,
        "pred_energy_j_e": np.full(4, 5.0),
        "pred_latency_ms_e": np.full(4, 10.0),
        "expert_cost_ratio_e": COST_RATIO,
        "pred_total_energy_j": 40.0,
        "pred_total_latency_ms": 60.0,
        "load_fraction_e": np.full(4, 0.25),
        "loss": 3.0,
        "loss_delta": 0.0,
        "loss_gap": 0.0,
        "router_entropy": 1.0,
        "tokens_since_ttt": 1024.0,
        "bias_e": np.zeros(4),
        "ttt_frequency": 0.0,
        "ttt_chunk": 0.5,
        "ttt_grad_norm": 0.0,
        "ttt_activation_energy": 0.0,
        "demand": 0.1,
        "backlog": 0.0,
        "energy_from_counter": 0.0,
        "sample_staleness_s": 0.0,
    }
    f.update(overrides)
    return f


def observe(**overrides) -> np.ndarray:
    return SPEC.builder.build(figures(**overrides))


def decide(router: EnergyAwareTTTRouter, obs: np.ndarray) -> ControlAction:
    return SPEC.codec.decode(router.act(obs))


def ttt_rate(c: ControlAction) -> float:
    """Tokens trained per token served (0 when TTT is off)."""
    return c.ttt_chunk_tokens / c.ttt_frequency_tokens if c.ttt_enabled else 0.0


def heuristic(**kw) -> EnergyAwareTTTRouter:
    return make_controller("heuristic", SPEC, config=TINY, **kw)


# ----- the heuristic reacts the right way ---------------------------------------------------------------------------
def test_hotter_biases_toward_cheap_experts_and_less_ttt():
    cool, hot = decide(heuristic(), observe(**COOL)), decide(heuristic(), observe(**HOT))
    b_cool, b_hot = cool.biases(4), hot.biases(4)
    assert b_hot[3] < b_cool[3] < 0, "the widest (costliest) expert gets a more negative bias when hot"
    assert b_hot[3] - b_hot[0] < b_cool[3] - b_cool[0] < 0, "hot pushes load further toward narrow experts"
    assert np.all(np.diff(b_hot) < 0), "biases fall with expert cost"
    assert ttt_rate(hot) < ttt_rate(cool), (hot, cool)


def test_near_power_cap_biases_harder_than_cool():
    capped = decide(heuristic(), observe(**{**COOL, "power_w": 699.0}))
    cool = decide(heuristic(), observe(**COOL))
    assert capped.biases(4)[3] < cool.biases(4)[3]


def test_loss_spike_brings_more_ttt_for_a_while():
    calm_router, spiked_router = heuristic(), heuristic()
    calm = decide(calm_router, observe(**COOL))
    spiked = decide(spiked_router, observe(**COOL, **SPIKE))
    assert ttt_rate(spiked) > ttt_rate(calm) > 0, (spiked, calm)
    # the next calm interval: the router that saw the spike keeps adapting harder than the one that did not
    assert ttt_rate(decide(spiked_router, observe(**COOL))) > ttt_rate(decide(calm_router, observe(**COOL)))


def test_no_ttt_while_a_backlog_waits_or_when_unaffordable():
    assert not decide(heuristic(), observe(**COOL, **SPIKE, backlog=0.5)).ttt_enabled
    assert not decide(heuristic(), observe(**COOL, **SPIKE, gpu_utilization=0.84)).ttt_enabled


def test_ttt_cost_ratio_learned_from_an_update():
    router = heuristic(ttt_cost_ratio=1.0)
    first = decide(router, observe(**COOL, **SPIKE))
    assert first.ttt_enabled
    # the interval with the update: the KCM predicts 5x the busy time of an interval without TTT
    decide(router, observe(**COOL, ttt_grad_norm=1.0, tokens_since_ttt=0.0, pred_total_latency_ms=300.0))
    assert router.ttt_cost_ratio > 1.0
    router.reset()
    assert router.ttt_cost_ratio > 1.0, "kappa is a hardware fact: reset keeps it"


def test_fast_weights_train_at_test_time_and_reset():
    router = heuristic(energy_aware_lr=0.05, ttt_update_frequency=512)
    initial = router.get_statistics()["fast_weight_norm"]
    for _ in range(4):
        decide(router, observe(**HOT))
    stats = router.get_statistics()
    assert stats["ttt_update_count"] == 8  # 1024 tokens per interval, an update every 512
    assert stats["fast_weight_norm"] != pytest.approx(initial)
    learned = router._last_decision.learned_bias
    assert learned[3] < learned[0], "the energy-aware loss teaches the fast weights to avoid the costly expert"
    router.reset()
    assert router.get_statistics()["fast_weight_norm"] == pytest.approx(initial)
    assert router.get_statistics()["ttt_update_count"] == 0


def test_seed_api_energy_aware_loss_and_statistics():
    router = EnergyAwareTTTRouter(TINY, None, None)
    assert set(router.objective_weights) == {"performance", "energy", "thermal", "memory", "load_balance"}
    on_target = router.update_energy_aware_loss({"power_watt": 150.0, "temperature": 60.0, "inference_latency_ms": 8.0})
    assert on_target == {"total_loss": 0.0, "power_loss": 0.0, "temp_loss": 0.0, "latency_penalty": 0.0}
    over = router.update_energy_aware_loss(
        {"power_watt": 300.0, "temperature": 75.0, "inference_latency_ms": 15.0},
        target_power=200.0,
        target_temp=65.0,
        target_latency=10.0,
    )
    assert over["power_loss"] == pytest.approx(0.25) and over["temp_loss"] == pytest.approx(1.0)
    assert over["latency_penalty"] == pytest.approx(0.5) and over["total_loss"] > 0
    project_names = router.update_energy_aware_loss({"power_w": 300.0, "temperature_c": 75.0, "latency_ms": 15.0})
    assert project_names["total_loss"] == pytest.approx(
        router.update_energy_aware_loss({"power_watt": 300.0, "temperature": 75.0, "inference_latency_ms": 15.0})[
            "total_loss"
        ]
    )
    stats = router.get_statistics()
    for key in ("ttt_update_count", "avg_energy_savings_watts", "expert_usage", "load_balance_cv", "thermal_scaling"):
        assert key in stats
    # the statistics follow the decisions: the observed load, and the saving the biases toward cheap experts predict
    load = np.array([0.4, 0.3, 0.2, 0.1])
    cool, hot = heuristic(), heuristic()
    for _ in range(3):
        decide(cool, observe(**COOL, load_fraction_e=load))
        decide(hot, observe(**HOT))
    cool_stats, hot_stats = cool.get_statistics(), hot.get_statistics()
    np.testing.assert_allclose(cool_stats["expert_usage"], load, atol=1e-6)
    assert cool_stats["load_balance_cv"] == pytest.approx(np.std(load) / np.mean(load), rel=1e-5)
    assert cool_stats["thermal_scaling"] == 1.0 < hot_stats["thermal_scaling"]
    assert 0.0 < cool_stats["avg_energy_savings_watts"] < hot_stats["avg_energy_savings_watts"] < HOT["power_w"]
    with pytest.raises(ValueError, match="positive"):
        EnergyAwareTTTRouter(TINY, None, None, ttt_chunk_size=0)
    with pytest.raises(ValueError, match="ControlSpec"):
        router.act(observe())


# ----- the router-module face -------------------------------------------------------------------------------------
def test_router_module_selects_like_the_runtime_router_for_zero_biases():
    torch.manual_seed(0)
    model = MoETransformer(TINY).eval()
    layer = model.moe_layers[1]
    seen = {}
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach(), counts=out[2].detach()))
    with torch.no_grad():
        model(torch.randint(0, 256, (3, TINY.seq_len)))
    hook.remove()
    logits = layer.gate(seen["x"]).detach()  # (T, E) the layer's own router logits
    reference = dispatch.route(logits, layer.selection_bias, TINY.top_k)
    router = EnergyAwareTTTRouter(TINY, KernelCostModel(), GpuSystemMonitor(device_id=0, source="simulated"))
    ids, weights, meta = router(logits.view(3, TINY.seq_len, -1), context={"routing_biases": torch.zeros(4)})
    assert ids.shape == weights.shape == (3, TINY.seq_len, TINY.top_k)
    assert torch.equal(ids.reshape(-1, TINY.top_k), reference.topk_ids)
    assert torch.allclose(weights.reshape(-1, TINY.top_k), reference.topk_weights)
    assert np.array_equal(meta["expert_counts"], seen["counts"].numpy())


def test_router_module_reads_the_monitor_and_biases_harder_when_hot():
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    context = {"gradients": [torch.randn(8, 32)], "activations": [torch.randn(8, 32)], "loss": torch.tensor(2.0)}
    outputs = {}
    for name, temp_c in (("cool", 40.0), ("hot", 86.0)):
        monitor = GpuSystemMonitor(device_id=0, source=SimulatedGpu("H100", initial_temp_c=temp_c))
        router = EnergyAwareTTTRouter(TINY, KernelCostModel(), monitor, ttt_update_frequency=32, ttt_chunk_size=64)
        ids, weights, meta = router(logits, num_tokens=64, context=context)
        assert ids.shape == (64, 2) and int(ids.min()) >= 0 and int(ids.max()) < 4
        assert torch.allclose(weights.sum(-1), torch.ones(64))
        assert meta["ttt_updated"] and meta["ttt_feedback"]["gradient_mean"] > 0
        assert router.get_statistics()["ttt_update_count"] == 2
        outputs[name] = meta
    assert outputs["hot"]["thermal_scaling"] > outputs["cool"]["thermal_scaling"]
    assert outputs["hot"]["biases"][3] < outputs["cool"]["biases"][3] < 0


# ----- baselines ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTROLLER_NAMES)
def test_every_controller_steps_the_env(env, name):
    controller = make_controller(name, env)
    assert isinstance(controller, agents.Controller)
    obs, _ = env.reset(seed=0)
    controller.reset()
    for _ in range(3):
        action = controller.act(obs)
        assert env.action_space.contains(np.asarray(action, dtype=np.float32)), action
        obs, reward, terminated, truncated, info = env.step(action)
        assert np.isfinite(reward)


def test_controllers_from_a_vector_env(env):
    venv = DummyVecEnv([lambda: env])
    assert ControlSpec.from_env(venv) == ControlSpec.from_env(env)
    assert make_controller("heuristic", venv).num_experts == 4


def test_baselines_move_the_right_way():
    load = np.array([0.4, 0.3, 0.2, 0.1])
    balanced = SPEC.codec.decode(make_controller("load_balance", SPEC, step=0.02).act(observe(load_fraction_e=load)))
    assert balanced.biases(4) == pytest.approx([-0.02, -0.02, 0.02, 0.02])
    greedy = SPEC.codec.decode(make_controller("kcm_greedy", SPEC).act(observe())).biases(4)
    assert np.all(np.diff(greedy) < 0) and greedy[3] == pytest.approx(-0.25)
    fixed = SPEC.codec.decode(
        make_controller("fixed_ttt", SPEC, frequency_tokens=1024, chunk_tokens=256).act(observe())
    )
    assert (fixed.ttt_frequency_tokens, fixed.ttt_chunk_tokens) == (1024, 256)
    assert SPEC.codec.decode(make_controller("no_control", SPEC).act(observe())) == ControlAction.uncontrolled(4)
    a, b = (make_controller("random", SPEC, seed=3) for _ in range(2))
    assert np.array_equal(a.act(observe()), b.act(observe()))


def test_a_random_controller_reset_with_an_episode_seed_plays_that_episode_alone():
    """Its actions in an episode depend on the controller's and the episode's seeds, not on the episodes before
    (evaluate.py passes the episode seed, so a resumed or reordered evaluation plays the same actions)."""
    from agents import reset_controller

    def episode(c, seed, steps=3):
        reset_controller(c, seed)
        return np.stack([c.act(observe()) for _ in range(steps)])

    fresh, used = (make_controller("random", SPEC, seed=3) for _ in range(2))
    episode(used, 1000)
    episode(used, 2000)
    assert np.array_equal(episode(fresh, 4000), episode(used, 4000))  # whatever ran before
    assert not np.array_equal(episode(fresh, 4000), episode(fresh, 5000))  # each episode its own actions
    other = make_controller("random", SPEC, seed=4)
    assert not np.array_equal(episode(other, 4000), episode(fresh, 4000))  # and each controller seed
    first = fresh.act(observe())
    fresh.reset()  # no seed: the generator goes on, not back to where it started
    assert not np.array_equal(fresh.act(observe()), first)

    class NoSeed:  # a controller of your own whose reset takes no seed is reset as it is
        resets = 0

        def reset(self):
            self.resets += 1

    c = NoSeed()
    reset_controller(c, 7)
    assert c.resets == 1


def test_make_controller_errors():
    with pytest.raises(ValueError, match="unknown controller"):
        make_controller("greedy", SPEC)
    with pytest.raises(TypeError, match=r"heuristic: unknown argument\(s\) \['foo'\]; it takes config, .*ttt_update_frequency"):
        make_controller("heuristic", SPEC, foo=1)
    with pytest.raises(TypeError, match=r"no_control: unknown argument\(s\) \['step'\]; it takes none"):
        make_controller("no_control", SPEC, step=0.1)
    with pytest.raises(TypeError, match="MoERouting-v0"):
        make_controller("no_control", object())
    with pytest.raises(ValueError, match="shape"):
        make_controller("no_control", SPEC).act(np.zeros(3))
    with pytest.raises(ValueError, match="seed must be None or a non-negative integer, got -1"):
        make_controller("random", SPEC, seed=-1)  # was numpy's "expected non-negative integer"
    assert make_controller("random", SPEC, seed=np.random.default_rng(3)).act(observe()).shape == (SPEC.codec.size,)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [  # as a policy spec on evaluate's command line hands them over: unparsed words stay strings
        ("kcm_greedy", {"strength": "nan"}, "KcmGreedy: strength must be a finite number, got 'nan'"),
        ("kcm_greedy", {"strength": float("nan")}, "KcmGreedy: strength must be a finite number, got nan"),
        ("load_balance", {"step": float("inf")}, "LoadBalance: step must be a finite number, got inf"),
        ("fixed_ttt", {"frequency_tokens": "abc"}, "FixedTTT: frequency_tokens must be a finite number, got 'abc'"),
        ("heuristic", {"ttt_update_frequency": True}, "ttt_update_frequency must be a finite number, got True"),
        ("random", {"seed": "nan"}, "seed must be None or a non-negative integer, got 'nan'"),
    ],
)
def test_controller_arguments_that_are_not_numbers_are_named(name, kwargs, message):
    """Was "'<' not supported between instances of 'int' and 'str'" (or numpy's SeedSequence error)."""
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        make_controller(name, SPEC, **kwargs)


@pytest.mark.parametrize("name", CONTROLLER_NAMES)
def test_a_non_finite_observation_is_named_not_turned_into_a_nan_action(env, name):
    """The env never emits NaN; one from elsewhere failed later as a NaN action blamed on the biases."""
    controller = make_controller(name, env)
    obs, _ = env.reset(seed=0)
    obs = obs.copy()
    obs[SPEC.builder.index["temperature_c"]] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite entries: temperature_c"):
        controller.act(obs)


# ----- SB3 policies -----------------------------------------------------------------------------------------------
def test_ppo_policy_reloads_to_the_same_actions(env, ppo_run):
    folder, model, venv = ppo_run
    policy = load_policy(folder / "model.zip")
    assert policy.vec_normalize is not None
    obs, _ = env.reset(seed=5)
    for _ in range(3):
        expected, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
        np.testing.assert_allclose(policy.act(obs), expected, atol=1e-6)
        obs, *_ = env.step(policy.act(obs))
    assert np.allclose(load_policy(folder).act(obs), policy.act(obs))  # a run folder works too
    with pytest.raises(ValueError, match="NaN or infinite entries"):
        policy.act(np.full_like(obs, np.inf))  # VecNormalize clipped it into an ordinary-looking action


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04 truncated"])
@pytest.mark.parametrize("algo", [None, "ppo"])
def test_load_policy_of_a_file_that_is_not_a_model_is_a_value_error(tmp_path, content, algo):
    path = tmp_path / "model.zip"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="model.zip"):
        load_policy(path, algo=algo)


def test_load_policy_of_a_folder_without_model_zip_names_the_models_there(tmp_path):
    (tmp_path / "best_model.zip").write_bytes(b"")
    (tmp_path / "last_model.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="it has best_model.zip, last_model.zip: name the file"):
        load_policy(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no model.zip nor checkpoint in \S+empty$"):
        load_policy(tmp_path / "empty")


def test_warm_start_fits_the_policy_to_its_teacher(env):
    venv = VecNormalize(DummyVecEnv([lambda: Monitor(env)]), norm_obs=False, norm_reward=True, gamma=0.98)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, gamma=0.98, seed=0, device="cpu")
    teacher = make_controller("kcm_greedy", env)
    observations = [env.reset(seed=7)[0]]  # states the teacher visits, on episodes the fit never saw
    for _ in range(7):
        observations.append(env.step(teacher.act(observations[-1]))[0])

    def gap() -> float:
        return max(float(np.abs(model.predict(o, deterministic=True)[0] - teacher.act(o)).max()) for o in observations)

    before = gap()
    record = agents.warm_start(model, venv, "kcm_greedy", steps=32, epochs=60, seed=0)
    assert record["steps"] == 32 and record["episodes"] == 4 and np.isfinite(record["teacher_mean_return"])
    assert record["action_mse"] < 1e-3 and record["value_mse"] > 0
    assert gap() < min(0.1, before / 3), (before, gap())
    with pytest.raises(ValueError, match="unknown controller 'oracle'"):
        agents.warm_start(model, venv, "oracle", steps=8, epochs=1)


class ConstantReward(gym.RewardWrapper):
    """Every step earns the same reward: in an env that never terminates V = reward / (1 - gamma) everywhere."""

    def __init__(self, env, reward: float):
        super().__init__(env)
        self.constant = reward

    def reward(self, reward: float) -> float:
        return self.constant


def test_warm_start_values_bootstrap_at_the_time_limit_with_frozen_reward_statistics():
    gamma, reward = 0.9, 0.5
    env = gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=16, torch_threads=1)
    venv = VecNormalize(DummyVecEnv([lambda: Monitor(ConstantReward(env, reward))]), norm_obs=False, gamma=gamma)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, gamma=gamma, seed=0, device="cpu")
    record = agents.warm_start(model, venv, "no_control", steps=64, epochs=200, seed=0)
    # the reward PPO sees next: normalised with the statistics the collection left
    scaled = reward / np.sqrt(venv.ret_rms.var + venv.epsilon)
    observations = torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(4)]))
    values = model.policy.predict_values(observations).detach().numpy().ravel()
    # Returns cut at each 16-step episode's end average ~54% of V here; bootstrapped ones are V itself.
    np.testing.assert_allclose(values, scaled / (1 - gamma), rtol=0.1)
    target = record["value_target"]
    assert target["rounds"] > 1 and target["rewards"].startswith("normalised with the VecNormalize statistics frozen")
    assert target["mean"] == pytest.approx(scaled / (1 - gamma), rel=0.05)
    assert target["mean_if_cut_at_episode_ends"] < 0.7 * target["mean"]
    env.close()


def test_discounted_returns_bootstrap_where_cut_and_stop_at_terminations():
    rewards = np.ones((4, 2), dtype=np.float32)
    cut = np.array([[False, False], [True, True], [False, False], [True, True]])
    tail = np.array([[0, 0], [10, 0], [0, 0], [5, 7]], dtype=np.float32)  # worker 1 terminates after step 1
    returns = discounted_returns(rewards, cut, tail, gamma=0.5)
    np.testing.assert_allclose(returns[:, 0], [1 + 0.5 * 6, 1 + 0.5 * 10, 1 + 0.5 * 3.5, 1 + 0.5 * 5])
    np.testing.assert_allclose(returns[:, 1], [1.5, 1.0, 1 + 0.5 * 4.5, 1 + 0.5 * 7])


def test_value_iteration_learns_values_that_differ_by_state():
    """Rewarded episodes (reward 1 a step, V = 1 / (1 - gamma) = 10) alternate with unrewarded ones (V = 0), each cut
    at 16 steps: the first round's guess (mean reward / (1 - gamma) = 5 at every cut) is wrong for both, and only
    the critic's own bootstrapped values bring them apart."""
    gamma, length, episodes = 0.9, 16, 12
    rewarded = np.repeat(np.arange(episodes) % 2, length).astype(np.float32)  # [T]
    obs = np.stack([rewarded, np.tile(np.linspace(-1, 1, length), episodes), np.zeros_like(rewarded)], -1)[:, None]
    cut = np.zeros((episodes * length, 1), dtype=bool)
    cut[length - 1 :: length] = True
    demos = Demonstrations(
        observations=obs.astype(np.float32),
        actions=np.zeros((episodes * length, 1, 1), dtype=np.float32),
        rewards=rewarded[:, None],
        cut=cut,
        bootstrap=cut.copy(),  # truncations: each episode goes on from its last observation
        next_observations=np.where(cut[..., None], obs, 0.0).astype(np.float32),
        episodes=episodes,
        mean_return=0.0,
        normalised=False,
    )
    model = PPO("MlpPolicy", gym.make("Pendulum-v1"), gamma=gamma, seed=0, device="cpu")
    fit_policy(model, demos, epochs=600, gamma=gamma, seed=0)
    values = model.policy.predict_values(torch.as_tensor(obs[:, 0])).detach().numpy().ravel()
    assert values[rewarded == 1].mean() == pytest.approx(10.0, abs=1.0)
    assert values[rewarded == 0].mean() == pytest.approx(0.0, abs=1.0)
