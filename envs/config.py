"""`EnvConfig`: everything that defines an `MoERoutingEnv`, checked at construction."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.actions import ActionConfig
from envs.rewards import RewardConfig
from envs.workload import Workload
from kernels import DeploymentScale
from moe_runtime import BUILTIN_DOMAINS, MoEConfig, PretrainConfig
from telemetry import get_gpu_spec

TELEMETRY_SOURCES = ("auto", "nvml", "simulated")
SPLITS = ("train", "validation", "test")
MAX_RUNTIME_TOKENS = 1 << 20  # a million tokens an interval: past any preset's use, short of hanging the env's build
AMBIENT_LIMITS_C = (-20.0, 60.0)  # air a GPU can run in; hotter is past the thermal model's use
MAX_TORCH_THREADS = 256  # far past any CPU's use; a huge count fails to map its threads' stacks, or segfaults


@dataclass
class EnvConfig:
    """Configuration of `MoERoutingEnv`.

    Attributes:
        preset: `MoEConfig` preset of the served model (`default`, `tiny`, `gpu`); ignored if `model` is given.
        model: an explicit `MoEConfig`.
        checkpoint: path of a pretrained checkpoint; None uses the cached pretrained model of the preset, pretraining
            it once when none is cached; "none" serves a randomly initialised model (for quick tests).
        pretrain_steps: steps for that one-time pretraining; None picks by preset (tiny 150, else `PretrainConfig.steps`).
        telemetry: `auto` (NVML if a GPU and driver are present, else simulated), `nvml`, `simulated`.
        gpu: GPU spec the simulated backend models (`H100`, `H200`, `A100`, `V100`, `L4`).
        cost_table: the KCM's coefficients: None for the analytic roofline, "builtin" for the shipped calibrated
            table of `gpu` (H100), or the path of a table from `python -m kernels.profile`.
        deployment: the shape at which the simulated backend prices the runtime's decisions; None:
            `deployment_for(model)`, the default deployment with one expert per model expert in its width ratios.
        workload: token demand profile (a `Workload`, or a profile name for that profile at the default load).
            This and the other nested configs (`reward`, `action`, `model`, `deployment`) may be mappings of their
            fields, as a spec read back from JSON gives them.
        interval_s: wall time of one control interval, s.
        reference_tokens: tokens of each interval the uncontrolled base model also scores, for the paired loss
            reference (`RewardConfig.loss_reference`); None: half a sequence (`model.seq_len // 2`, 64 tokens on
            `default`, ~3 ms a step).
        runtime_tokens: tokens the runtime really serves per interval (its real loss and routing); None picks by
            preset (default 1024, tiny 128).
        episode_intervals: intervals per episode (the episode ends by truncation).
        domains: (before, after) the domain shift.
        shift_range: the shift comes after a share of the episode drawn from this range.
        split: corpus split the stream reads (train for learning, test for evaluation).
        randomize: domain randomisation of ambient temperature, cooling, initial temperature and shift point.
        ambient_range_c: ambient temperature range when randomised, C.
        cooling_range: heatsink thermal-resistance multiplier range when randomised (1 = as measured).
        reward: reward weights and scales.
        action: action bounds.
        ttt: use a TTT engine (its knobs are in the action); False serves without TTT.
        torch_threads: torch CPU threads in this process; None: 2, or 1 in a child process (a vector env's worker,
            spawned or forked) so that workers do not contend for the cores. A forked child takes 1 whatever is
            given: torch forked after running multi-threaded hangs on its first parallel op.
        noise_std: simulated sensor noise (relative).
        seed: seeds the simulated GPU built with the env, before its first `reset`. Episodes are seeded by
            `reset(seed=...)`; as in Gymnasium, a first `reset()` without one draws its seed from the OS (so the
            copies in an unseeded vector env differ).
    """

    preset: str = "default"
    model: MoEConfig | None = None
    checkpoint: str | None = None
    pretrain_steps: int | None = None
    telemetry: str = "auto"
    gpu: str = "H100"
    cost_table: str | None = None
    deployment: DeploymentScale | None = None
    workload: Workload = field(default_factory=Workload)
    interval_s: float = 1.0
    runtime_tokens: int | None = None
    reference_tokens: int | None = None
    episode_intervals: int = 64
    domains: tuple[str, str] = ("prose", "code")
    shift_range: tuple[float, float] = (0.25, 0.6)
    split: str = "train"
    randomize: bool = True
    ambient_range_c: tuple[float, float] = (22.0, 40.0)
    cooling_range: tuple[float, float] = (0.8, 1.6)
    reward: RewardConfig = field(default_factory=RewardConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    ttt: bool = True
    torch_threads: int | None = None
    noise_std: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.workload, str):  # a profile name is the Workload of that profile at the default load
            self.workload = Workload(profile=self.workload)
        for name, kind in NESTED_CONFIGS.items():  # a mapping: what a spec read back from JSON holds
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, _config_from_mapping(kind, value, name))
        self._check_types()
        for name in ("domains", "shift_range", "ambient_range_c", "cooling_range"):  # JSON gives tuples back as lists
            setattr(self, name, tuple(getattr(self, name)))
        if self.telemetry not in TELEMETRY_SOURCES:
            raise ValueError(f"EnvConfig.telemetry {self.telemetry!r} is not one of {TELEMETRY_SOURCES}")
        if self.model is None:
            self.model = MoEConfig.preset(self.preset)  # raises on an unknown preset
        if self.deployment is None:
            self.deployment = deployment_for(self.model)
        elif not isinstance(self.deployment, DeploymentScale):
            raise TypeError(f"EnvConfig.deployment must be a DeploymentScale or None, got {self.deployment!r}")
        if self.runtime_tokens is None:
            self.runtime_tokens = 128 if self.model.preset_name == "tiny" else 1024
        if self.reference_tokens is None:
            self.reference_tokens = self.model.seq_len // 2 if self.reward.loss_reference == "paired" else 0
        if self.reference_tokens < 0:
            raise ValueError(f"EnvConfig.reference_tokens must be >= 0, got {self.reference_tokens}")
        if self.seed is not None and self.seed < 0:  # numpy's generators take no negative seed
            raise ValueError(f"EnvConfig.seed must be >= 0, got {self.seed}")
        if self.torch_threads is None:
            self.torch_threads = 1 if multiprocessing.parent_process() is not None else 2
        if self.pretrain_steps is None:
            self.pretrain_steps = 150 if self.model.preset_name == "tiny" else PretrainConfig().steps
        for name in ("interval_s", "runtime_tokens", "episode_intervals", "torch_threads", "pretrain_steps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EnvConfig.{name} must be positive, got {getattr(self, name)}")
        if self.torch_threads > MAX_TORCH_THREADS:
            raise ValueError(f"EnvConfig.torch_threads must be at most {MAX_TORCH_THREADS}, got {self.torch_threads}")
        if not self.interval_s <= 3600.0:  # the simulated GPU steps through each interval: a huge one never ends
            raise ValueError(f"EnvConfig.interval_s must be at most 3600 s, got {self.interval_s}")
        if not self.runtime_tokens <= MAX_RUNTIME_TOKENS:  # the runtime serves them all each interval, on the CPU too
            raise ValueError(f"EnvConfig.runtime_tokens must be at most {MAX_RUNTIME_TOKENS}, got {self.runtime_tokens}")
        lo, hi = self.shift_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"EnvConfig.shift_range must satisfy 0 <= low <= high <= 1, got {self.shift_range}")
        if self.split not in SPLITS:
            raise ValueError(f"EnvConfig.split {self.split!r} is not one of {SPLITS}")
        if len(self.domains) != 2:
            raise ValueError(f"EnvConfig.domains must be (before, after) the shift, got {self.domains}")
        for domain in self.domains:  # here, not when a worker first reads the stream
            if domain not in BUILTIN_DOMAINS and not Path(domain).expanduser().exists():
                raise ValueError(
                    f"EnvConfig.domains: {domain!r} is neither a built-in domain {BUILTIN_DOMAINS} nor "
                    "an existing text file or folder"
                )
        if self.deployment.num_experts != self.model.num_experts:
            raise ValueError(
                f"EnvConfig.deployment has {self.deployment.num_experts} experts; the model has "
                f"{self.model.num_experts}: give a DeploymentScale with one width per expert"
            )
        if (
            not np.all(np.isfinite([*self.ambient_range_c, *self.cooling_range]))
            or not self.ambient_range_c[0] <= self.ambient_range_c[1]
            or not 0 < self.cooling_range[0] <= self.cooling_range[1]
        ):
            raise ValueError(
                f"EnvConfig ranges must be finite (low <= high): ambient {self.ambient_range_c}, cooling "
                f"{self.cooling_range}"
            )
        if not AMBIENT_LIMITS_C[0] <= self.ambient_range_c[0] <= self.ambient_range_c[1] <= AMBIENT_LIMITS_C[1]:
            raise ValueError(f"EnvConfig.ambient_range_c must lie within {AMBIENT_LIMITS_C} C (the air around "
                             f"the GPU), got {self.ambient_range_c}")  # fmt: skip
        if not 0 <= self.noise_std < math.inf:
            raise ValueError(f"EnvConfig.noise_std must be finite and >= 0, got {self.noise_std}")
        # Checked here, not where the backend and model are built, so that a CLI fails before it starts workers
        # or trains (train_agent.py and evaluate.py build an EnvConfig first).
        get_gpu_spec(self.gpu)  # an unknown name is a ValueError listing the known ones
        files = {
            "checkpoint": (self.checkpoint not in (None, "none"), "a model file, or 'none'"),
            "cost_table": (self.cost_table not in (None, "builtin"), "None, 'builtin' or a table from kernels.profile"),
        }
        for name, (is_path, allowed) in files.items():
            path = Path(getattr(self, name)) if is_path else None
            if path is not None and not path.is_file():
                problem = "is a folder" if path.is_dir() else "does not exist"
                raise ValueError(f"EnvConfig.{name} {getattr(self, name)!r} {problem} ({allowed})")
        if self.cost_table is not None:  # read it now: a corrupt table (or no builtin one for `gpu`) names itself
            from kernels import KernelCostModel

            try:
                KernelCostModel(gpu_type=self.gpu, data_path=self.cost_table)
            except ValueError as exc:
                raise ValueError(f"EnvConfig.cost_table: {exc}") from None

    def _check_types(self) -> None:
        """A TypeError naming the field, its value and the type it needs (before a comparison fails obscurely)."""
        counts = ("episode_intervals", "torch_threads", "runtime_tokens", "reference_tokens", "pretrain_steps", "seed")
        for name in counts:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise TypeError(f"EnvConfig.{name} must be an integer, got {value!r}")
        for name in ("interval_s", "noise_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"EnvConfig.{name} must be a number, got {value!r}")
        for name, kind in (("workload", Workload), ("reward", RewardConfig), ("action", ActionConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"EnvConfig.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if self.model is not None and not isinstance(self.model, MoEConfig):
            raise TypeError(
                f"EnvConfig.model must be a MoEConfig or None (a preset name goes in `preset`), got {self.model!r}"
            )
        for name in ("ttt", "randomize"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"EnvConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("preset", "telemetry", "gpu", "split"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"EnvConfig.{name} must be a string, got {getattr(self, name)!r}")
        for name in ("checkpoint", "cost_table"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), (str, Path)):
                raise TypeError(f"EnvConfig.{name} must be a path or None, got {getattr(self, name)!r}")
        if not (isinstance(self.domains, (tuple, list)) and all(isinstance(d, (str, Path)) for d in self.domains)):
            raise TypeError(f"EnvConfig.domains must be (before, after) names or paths, got {self.domains!r}")
        for name in ("shift_range", "ambient_range_c", "cooling_range"):
            pair = getattr(self, name)
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                    and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)):  # fmt: skip
                raise TypeError(f"EnvConfig.{name} must be a (low, high) pair of numbers, got {pair!r}")

    def pretrain_config(self, progress: bool = True) -> PretrainConfig | None:
        """How the served model is pretrained (and cached); None when a checkpoint file, or no model ("none"), is
        served instead."""
        return None if self.checkpoint else PretrainConfig(steps=self.pretrain_steps, progress=progress)

    @classmethod
    def from_kwargs(cls, **kwargs) -> EnvConfig:
        """An EnvConfig from flat keyword arguments (what `gymnasium.make` passes); unknown names are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(f"unknown MoERouting-v0 argument(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**kwargs)


NESTED_CONFIGS = {"workload": Workload, "reward": RewardConfig, "action": ActionConfig, "model": MoEConfig,
                  "deployment": DeploymentScale}  # fmt: skip


def _config_from_mapping(kind: type, values: Mapping, name: str):
    """`kind(**values)` for the nested config `EnvConfig.<name>` given as a mapping (`gym.make(EnvSpec.from_json(...))`
    passes dataclasses back as dicts, their tuples as lists); a ValueError naming any field `kind` lacks."""
    known = {f.name for f in dataclasses.fields(kind)}
    if unknown := sorted(set(values) - known):
        raise ValueError(f"EnvConfig.{name}: unknown {kind.__name__} field(s) {unknown}; known: {sorted(known)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def deployment_for(model: MoEConfig, d_model: int = 1024) -> DeploymentScale:
    """The default `DeploymentScale` (the `gpu` preset's shape) with one expert per runtime expert, in the runtime's
    width ratios: the median runtime width maps to 2 x d_model, rounded to multiples of 64."""
    median = float(sorted(model.expert_widths)[len(model.expert_widths) // 2 - (1 - len(model.expert_widths) % 2)])
    widths = tuple(max(64, int(round(2 * d_model * w / median / 64)) * 64) for w in model.expert_widths)
    return dataclasses.replace(DeploymentScale(), d_model=d_model, expert_widths=widths)
