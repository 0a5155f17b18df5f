"""EnvConfig and MoERoutingEnv construction: bad settings are clear errors naming the field, a config object and
keyword arguments agree, presets and registered ids get their own deployment and telemetry."""

import re

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import EnvConfig, MoERoutingEnv, Workload

TINY = dict(preset="tiny", telemetry="simulated", episode_intervals=12)


BAD_KWARGS = [  # (kwargs, what the message must say: the field and the bad value)
    (dict(telemetry="gpu"), "EnvConfig.telemetry 'gpu' is not one of"),
    (dict(interval_s=0.0), "EnvConfig.interval_s must be positive, got 0.0"),
    (dict(episode_intervals=0), "EnvConfig.episode_intervals must be positive, got 0"),
    (dict(shift_range=(0.8, 0.2)), "EnvConfig.shift_range must satisfy 0 <= low <= high <= 1, got (0.8, 0.2)"),
    (dict(split="dev"), "EnvConfig.split 'dev' is not one of"),
    (dict(preset="huge"), "unknown MoEConfig preset 'huge'"),
    (dict(not_a_field=1), "unknown MoERouting-v0 argument(s) ['not_a_field']"),
    (dict(interval_s=1e9), "EnvConfig.interval_s must be at most"),  # the simulated GPU stepped through it for hours
    (dict(noise_std=float("nan")), "EnvConfig.noise_std must be finite and >= 0, got nan"),  # NaN energy and rewards
    (dict(ambient_range_c=(20.0, float("inf"))), "ambient (20.0, inf)"),  # was numpy's OverflowError at reset
    (dict(seed=-1), "EnvConfig.seed must be >= 0, got -1"),
    (dict(runtime_tokens=10**9), "EnvConfig.runtime_tokens must be at most"),  # calibrated for minutes and gigabytes
    (dict(ambient_range_c=(200.0, 300.0)), "EnvConfig.ambient_range_c must lie within"),  # was accepted: a 302 C GPU
    (dict(reward={"w_energi": 2.0}), "EnvConfig.reward: unknown RewardConfig field(s) ['w_energi']; known: ["),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_KWARGS)
def test_bad_config_is_a_clear_error_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MoERoutingEnv(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(gpu="H900"), "unknown GPU 'H900'"),
        (dict(checkpoint="/no/such/model.pt"), "checkpoint '/no/such/model.pt' does not exist"),
        (dict(cost_table="/no/such/table.json"), "cost_table '/no/such/table.json' does not exist"),
        (dict(cost_table="/"), "cost_table '/' is a folder"),  # was IsADirectoryError from the KCM
        (dict(checkpoint="/"), "checkpoint '/' is a folder"),
        (dict(cost_table=__file__), "EnvConfig.cost_table: cost table " + __file__ + " is not valid JSON"),
        (dict(cost_table="builtin", gpu="L4"), "EnvConfig.cost_table: "),  # no calibrated table ships for the L4
        (dict(domains=("prose", "klingon")), "domains: 'klingon' is neither a built-in domain ('prose', 'code')"),
        (dict(torch_threads=100000), "torch_threads must be at most 256, got 100000"),
    ],
)
def test_unknown_gpu_and_missing_files_fail_in_the_config(kwargs, message):
    # the CLIs check an EnvConfig before they start workers or train: these must not wait for the env's backend
    with pytest.raises(ValueError, match=re.escape(message)):
        EnvConfig.from_kwargs(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(interval_s="1s"), "interval_s must be a number, got '1s'"),
        (dict(episode_intervals=2.5), "episode_intervals must be an integer, got 2.5"),
        (dict(torch_threads=True), "torch_threads must be an integer, got True"),
        (dict(reward=[1.0]), "reward must be a RewardConfig, got [1.0]"),  # a mapping of its fields would do
        (dict(model="tiny"), "model must be a MoEConfig or None (a preset name goes in `preset`), got 'tiny'"),
        (dict(ttt="maybe"), "ttt must be true or false, got 'maybe'"),
        (dict(randomize=2), "randomize must be true or false, got 2"),
        (dict(shift_range=0.5), "shift_range must be a (low, high) pair of numbers, got 0.5"),
        (dict(ambient_range_c=(1,)), "ambient_range_c must be a (low, high) pair of numbers, got (1,)"),
        (dict(cooling_range=("a", "b")), "cooling_range must be a (low, high) pair of numbers"),
        (dict(domains="prose"), "domains must be (before, after) names or paths, got 'prose'"),
        (dict(gpu=100), "gpu must be a string, got 100"),
    ],
)
def test_wrongly_typed_settings_are_type_errors_naming_the_field(kwargs, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        EnvConfig.from_kwargs(**{**TINY, **kwargs})


def test_a_workload_may_be_given_by_its_profile_name():
    assert EnvConfig.from_kwargs(**TINY, workload="bursty").workload == Workload(profile="bursty")
    with pytest.raises(ValueError, match="'spiky' is not one of"):
        EnvConfig.from_kwargs(**TINY, workload="spiky")
    for bad in (float("nan"), 2.5, 1):  # NaN was accepted and made every interval's demand NaN
        with pytest.raises(ValueError, match=f"period_intervals must be a whole number >= 2, got {bad!r}"):
            Workload(period_intervals=bad)
    assert Workload(period_intervals=32.0).period_intervals == 32  # as a YAML file or --env-kwargs may write it


def test_nvml_without_gpu_is_a_clear_error():
    from telemetry import nvml_available

    if nvml_available():
        pytest.skip("a GPU with NVML is present: this checks the error without one")
    import torch

    from telemetry import NvmlUnavailableError

    if torch.cuda.is_available():  # CUDA without NVML: the NVML error, naming what is missing
        with pytest.raises(NvmlUnavailableError):
            MoERoutingEnv(**{**TINY, "telemetry": "nvml"})
        return
    with pytest.raises(RuntimeError, match=r"telemetry='nvml' needs an NVIDIA GPU with CUDA.*use telemetry='simulated"):
        MoERoutingEnv(**{**TINY, "telemetry": "nvml"})


def test_env_config_object_and_kwargs_agree():
    a = MoERoutingEnv(EnvConfig.from_kwargs(**TINY))
    b = MoERoutingEnv(**TINY)
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)


def test_a_config_built_directly_fits_its_preset():
    """`EnvConfig(preset="tiny")` gets the same 4-expert deployment as `gym.make` (not the 8-expert default)."""
    direct = EnvConfig(preset="tiny")
    assert direct.deployment == EnvConfig.from_kwargs(preset="tiny").deployment == envs.deployment_for(direct.model)
    assert direct.deployment.num_experts == direct.model.num_experts == 4
    assert EnvConfig().deployment == EnvConfig.from_kwargs().deployment
    with pytest.raises(TypeError, match="deployment must be a DeploymentScale or None"):
        EnvConfig(preset="tiny", deployment="h100")
    with pytest.raises(ValueError, match="deployment has 8 experts; the model has 4"):  # a mapping of its fields
        EnvConfig(preset="tiny", deployment={"d_model": 1024})


def test_the_measured_env_serves_the_gpu_preset():
    assert gym.spec("MoERoutingMeasured-v0").kwargs == {"telemetry": "nvml", "preset": "gpu"}


def test_a_spec_read_back_from_json_makes_the_same_env():
    """`EnvSpec.to_json` turns the nested configs into dicts and tuples into lists; `gym.make(EnvSpec.from_json(...))`
    must build the env it describes, not fail on them."""
    import dataclasses

    from gymnasium.envs.registration import EnvSpec

    from envs import ActionConfig, RewardConfig
    from moe_runtime import MoEConfig

    kwargs = dict(TINY, workload=Workload(profile="constant", load=0.4), reward=RewardConfig(w_energy=2.0),
                  action=ActionConfig(bias_range=1.0), model=MoEConfig.preset("tiny"), cooling_range=(0.9, 1.2))  # fmt: skip
    spec = EnvSpec.from_json(dataclasses.replace(gym.spec("MoERouting-v0"), kwargs=kwargs).to_json())
    assert isinstance(spec.kwargs["reward"], dict) and isinstance(spec.kwargs["cooling_range"], list)  # as JSON gives
    assert EnvConfig.from_kwargs(**spec.kwargs) == EnvConfig.from_kwargs(**kwargs)


def _threads_in_a_spawned_child(queue, kwargs) -> None:
    queue.put(EnvConfig(**kwargs).torch_threads)


def test_an_env_built_in_a_worker_process_takes_one_thread_unless_told():
    """SB3's SubprocVecEnv spawns its workers (forkserver on Linux): at 2 threads each, 2 workers on 2 cores ran ~10x
    slower than at 1."""
    import multiprocessing

    assert EnvConfig(**TINY).torch_threads == 2  # this process: the default
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    for given, expected in ((None, 1), (3, 3)):
        child = ctx.Process(target=_threads_in_a_spawned_child, args=(queue, dict(TINY, torch_threads=given)))
        child.start()
        assert queue.get(timeout=120) == expected
        child.join(timeout=60)
