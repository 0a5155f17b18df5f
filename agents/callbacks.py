"""stable-baselines3 callbacks of `train_agent.py`: per-episode env figures to TensorBoard, VecNormalize statistics
saved with the best model, and held-out evaluation on fixed seeds whose history and best model are written
atomically (and read back on `--resume`)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from agents.checkpoints import atomic_save

EVALUATIONS_FILE = "evaluations.npz"  # EvalCallback(log_path=run folder) writes it


class CriticWarmupCallback(BaseCallback):
    """Keep an off-policy actor (SAC, TD3) as it starts for the first `steps` env steps while its critic learns.

    A warm-started actor (`imitate`, `init_action: no_control`) meets a critic with random weights: SAC's and TD3's
    actor loss follows the gradient of that critic from the first update and walks the actor away from its teacher
    before the critic knows anything. Meanwhile the critic learns the warm-started policy's values from its own
    (noisy) actions, so the actor's first updates follow a critic fitted around where it acts. The actor's weights
    take no gradient (`requires_grad` off; SB3's optimiser skips them), its targets track it unchanged, and SAC's
    entropy coefficient goes on adapting. A resume past `steps` is not frozen again.
    """

    def __init__(self, steps: int, verbose: int = 0):
        super().__init__(verbose)
        self.steps = int(steps)
        self.frozen = False

    def _set_actor_trainable(self, trainable: bool) -> None:
        for p in self.model.actor.parameters():
            p.requires_grad_(trainable)
        self.frozen = not trainable

    def _on_training_start(self) -> None:
        if self.model.num_timesteps < self.steps:
            self._set_actor_trainable(False)

    def _on_step(self) -> bool:
        if self.frozen and self.num_timesteps > self.steps:  # the update after step `steps` was still the critic's
            self._set_actor_trainable(True)
            self.logger.record("train/critic_warmup_ended_at", self.num_timesteps)
        return True

    def _on_training_end(self) -> None:
        if self.frozen:  # the model leaves `learn` as it came in, trainable
            self._set_actor_trainable(True)


class EpisodeInfoCallback(BaseCallback):
    """Logs the env's `info` per episode (means over the episodes finished since the last dump).

    `env/reward_<term>`: each weighted reward term summed over the episode; `env/loss` (mean, nats, measured: the
    model's real loss), `env/ttt_updates`. The hardware figures carry their `info["source"]` (`simulated` or
    `measured`) in the tag, so a simulated curve never reads as a measured one: `env/<source>/energy_j` (episode
    total), `env/<source>/energy_per_token_j`, `env/<source>/latency_ms` (mean), `env/<source>/slo_violations`
    (intervals); `telemetry/<source>/temperature_c` (mean), `telemetry/<source>/peak_temperature_c`,
    `telemetry/<source>/power_w` (mean).
    """

    def _on_training_start(self) -> None:
        self._episodes: list[dict[str, float]] = [defaultdict(float) for _ in range(self.training_env.num_envs)]
        self._sources: list[str] = ["unknown"] * self.training_env.num_envs

    def _on_step(self) -> bool:
        for i, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"])):
            if "energy_j" not in info:
                continue
            a = self._episodes[i]
            self._sources[i] = str(info.get("source", "unknown"))
            a["steps"] += 1
            for term, value in info.get("reward_terms", {}).items():
                a[f"reward_{term}"] += value
            a["energy_j"] += info["energy_j"]
            a["tokens"] += info["tokens"]
            a["latency_ms"] += info["latency_ms"]
            a["loss"] += info["loss"]
            a["slo_violations"] += float(info["slo_violated"])
            a["ttt_updates"] += info["ttt_updates"]
            a["temperature_c"] += info["temperature_c"]
            a["power_w"] += info["power_w"]
            a["peak_temperature_c"] = max(
                a["peak_temperature_c"], info.get("peak_temperature_c", info["temperature_c"])
            )
            if done:
                self._log_episode(a, self._sources[i])
                self._episodes[i] = defaultdict(float)
        return True

    def _log_episode(self, a: dict[str, float], source: str) -> None:
        n = max(a["steps"], 1.0)
        for key, value in a.items():
            if key.startswith("reward_"):
                self.logger.record_mean(f"env/{key}", value)
        self.logger.record_mean("env/loss", a["loss"] / n)
        self.logger.record_mean("env/ttt_updates", a["ttt_updates"])
        self.logger.record_mean(f"env/{source}/energy_j", a["energy_j"])
        self.logger.record_mean(f"env/{source}/energy_per_token_j", a["energy_j"] / max(a["tokens"], 1.0))
        self.logger.record_mean(f"env/{source}/latency_ms", a["latency_ms"] / n)
        self.logger.record_mean(f"env/{source}/slo_violations", a["slo_violations"])
        self.logger.record_mean(f"telemetry/{source}/temperature_c", a["temperature_c"] / n)
        self.logger.record_mean(f"telemetry/{source}/peak_temperature_c", a["peak_temperature_c"])
        self.logger.record_mean(f"telemetry/{source}/power_w", a["power_w"] / n)


class SaveVecNormalizeCallback(BaseCallback):
    """Saves the training env's VecNormalize statistics to `path` (use as EvalCallback's `callback_on_new_best`,
    so the best model's statistics lie beside it)."""

    def __init__(self, path: str | Path, verbose: int = 0):
        super().__init__(verbose)
        self.path = Path(path)

    def _on_step(self) -> bool:
        venv = self.model.get_vec_normalize_env()
        if venv is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(self.path, venv.save)
        return True


class HeldOutEvalCallback(EvalCallback):
    """`EvalCallback` that reseeds its eval env with `eval_seed` before each evaluation, so every evaluation plays
    the same held-out episodes (seeds `eval_seed + i` for eval env i, and what those seeds draw next) and the best
    model is chosen on a fixed set. The best model (`best_model_save_path/best_model.zip`) and the history
    (`log_path/evaluations.npz`) are written atomically: a run stopped mid-save keeps the previous ones."""

    def __init__(
        self,
        eval_env,
        eval_seed: int,
        resume_steps: int | None = None,
        best_model_save_path: str | None = None,
        **kwargs,
    ):
        super().__init__(eval_env, best_model_save_path=None, **kwargs)  # saved here, atomically
        self.best_model_file = Path(best_model_save_path) / "best_model.zip" if best_model_save_path else None
        self.history_file = Path(f"{self.log_path}.npz") if self.log_path else None
        if self.history_file is not None:  # SB3 writes its np.savez here; `_on_step` renames it into place
            self.log_path = str(self.history_file.with_name(f".{self.history_file.stem}.{os.getpid()}.tmp.npz"))
        self.eval_seed = int(eval_seed)
        self.set_aside: Path | None = None  # where `load_history` moved a best model of a discarded timeline
        if resume_steps is not None:
            self.load_history(resume_steps)

    def load_history(self, up_to_steps: int) -> None:
        """Continue a resumed run's evaluation history (`evaluations.npz`, entries up to `up_to_steps`) and its best
        mean reward, so the file keeps every evaluation and `best_model` is replaced only by a better one.

        The best model on disk says when it was saved (its `num_timesteps`). One saved after `up_to_steps`, on steps
        the resume discards, or one that does not load, is moved aside to `best_discarded_<steps>/` and the next
        evaluation saves a new best; one on the kept steps keeps its own mean reward as the one to beat; with none
        on disk the next evaluation saves one.

        Raises:
            ValueError: an `evaluations.npz` that is not a readable evaluation history, naming it.
        """
        if self.history_file is not None and self.history_file.exists():
            saved = read_eval_history(self.history_file)
            keep = saved["timesteps"] <= up_to_steps
            self.evaluations_timesteps = saved["timesteps"][keep].tolist()
            self.evaluations_results = [list(r) for r in saved["results"][keep]]
            self.evaluations_length = [list(r) for r in saved["ep_lengths"][keep]]
        means = {int(t): float(np.mean(r)) for t, r in zip(self.evaluations_timesteps, self.evaluations_results)}
        if self.best_model_file is None:  # no best model kept: the best of the kept history is the one to beat
            self.best_mean_reward = max(means.values(), default=-np.inf)
            return
        if not self.best_model_file.exists():
            self.best_mean_reward = -np.inf
            return
        steps = saved_steps(self.best_model_file)
        if steps is None or steps > up_to_steps:
            self._set_aside_best(steps)
        else:
            self.best_mean_reward = means.get(steps, max(means.values(), default=-np.inf))

    def _set_aside_best(self, best_steps: int | None) -> None:
        """Rename the best model's folder (kept, not deleted); the resumed run's next evaluation saves a new best."""
        best_dir = self.best_model_file.parent
        tag = "unreadable" if best_steps is None else str(best_steps)
        aside, n = best_dir.with_name(f"{best_dir.name}_discarded_{tag}"), 1
        while aside.exists():
            aside, n = best_dir.with_name(f"{best_dir.name}_discarded_{tag}_{n}"), n + 1
        best_dir.rename(aside)
        self.best_mean_reward = -np.inf
        self.set_aside = aside
        why = (
            "does not load"
            if best_steps is None
            else f"was saved at {best_steps} steps, after this resume's checkpoint"
        )
        print(f"the best model in {best_dir} {why}: moved to {aside}; the next evaluation saves a new best")

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_env.seed(self.eval_seed)
        best_before = self.best_mean_reward
        continue_training = super()._on_step()
        if self.history_file is not None and Path(self.log_path).exists():
            os.replace(self.log_path, self.history_file)
        if self.best_model_file is not None and self.best_mean_reward > best_before:
            self.best_model_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(self.best_model_file, self.model.save)
        return continue_training


def saved_steps(path: str | Path) -> int | None:
    """The `num_timesteps` an SB3 model zip was saved at; None when it does not load."""
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
        return int(data["num_timesteps"])
    except Exception:  # zipfile, JSON, torch and key errors all mean: not a model this run can trust
        return None


def read_eval_history(path: str | Path) -> dict[str, np.ndarray]:
    """The `timesteps`, `results` and `ep_lengths` arrays of an `EvalCallback` history (`evaluations.npz`).

    Raises:
        ValueError: a truncated or corrupt file, or one without those arrays, naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as saved:
            history = {k: saved[k] for k in ("timesteps", "results", "ep_lengths")}
    except Exception as exc:  # zipfile, zlib, pickle and OS errors all mean unreadable
        raise ValueError(f"{path} is not a readable evaluation history ({type(exc).__name__}: {exc})") from None
    if not len(history["timesteps"]) == len(history["results"]) == len(history["ep_lengths"]):
        raise ValueError(f"{path} is not a readable evaluation history (its arrays differ in length)")
    return history
