"""Checkpoints of `train_agent.py` runs: where a checkpoint's files go, saving them atomically (a run killed mid-save
keeps its earlier checkpoints and no truncated file), and finding the newest readable one to resume from."""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CheckpointCallback

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "ckpt"


def checkpoint_paths(folder: str | Path, steps: int, prefix: str = CHECKPOINT_PREFIX) -> dict[str, Path]:
    """Where `CheckpointCallback(name_prefix=prefix)` puts a checkpoint's model, VecNormalize and replay buffer."""
    folder = Path(folder)
    return {
        "model": folder / f"{prefix}_{steps}_steps.zip",
        "vecnormalize": folder / f"{prefix}_vecnormalize_{steps}_steps.pkl",
        "replay_buffer": folder / f"{prefix}_replay_buffer_{steps}_steps.pkl",
    }


def atomic_save(path: str | Path, save: Callable[[str], Any]) -> Path:
    """Write `path` atomically: `save(tmp)` writes a temporary file in the same folder (its name ends in `.tmp`, so
    SB3 adds no suffix), which then replaces `path` (`os.replace`); a crash or Ctrl-C mid-write leaves the old file,
    or none, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(model: BaseAlgorithm, folder: str | Path, prefix: str = CHECKPOINT_PREFIX) -> Path:
    """Save the model (with its VecNormalize statistics and replay buffer, if any) as a checkpoint now; returns the
    model's path. Each file is written atomically and the model last, so a checkpoint's zip means it is complete."""
    paths = checkpoint_paths(folder, model.num_timesteps, prefix)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    venv = model.get_vec_normalize_env()
    if venv is not None:
        atomic_save(paths["vecnormalize"], venv.save)
    if getattr(model, "replay_buffer", None) is not None:
        atomic_save(paths["replay_buffer"], model.save_replay_buffer)
    atomic_save(paths["model"], model.save)
    return paths["model"]


class AtomicCheckpointCallback(CheckpointCallback):
    """`CheckpointCallback` that saves through `save_checkpoint` (atomic files, model last), so a run killed while
    saving leaves its earlier checkpoints and no truncated one."""

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            save_checkpoint(self.model, self.save_path, self.name_prefix)
        return True


def unreadable_model_zip(path: str | Path) -> str | None:
    """Why `path` is not a readable saved SB3 model (not a zip, no `data` entry, a corrupt entry), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            if "data" not in z.namelist():
                return "no 'data' entry"
            corrupt = z.testzip()
            return f"corrupt entry {corrupt!r}" if corrupt is not None else None
    except Exception as exc:  # a probe: zipfile, zlib and OS errors all mean unreadable
        return f"{type(exc).__name__}: {exc}"


def latest_checkpoint(folder: str | Path, prefix: str = CHECKPOINT_PREFIX) -> tuple[int, dict[str, Path]] | None:
    """(steps, paths) of the readable checkpoint with the most steps in `folder`, or None. Unreadable model zips
    (truncated, empty) are skipped with a logged warning naming them."""
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_steps\.zip$")
    found = [int(m.group(1)) for f in Path(folder).glob("*.zip") if (m := pattern.match(f.name))]
    for steps in sorted(found, reverse=True):
        paths = checkpoint_paths(folder, steps, prefix)
        problem = unreadable_model_zip(paths["model"])
        if problem is None:
            return steps, paths
        logger.warning("skipping unreadable checkpoint %s (%s)", paths["model"], problem)
    return None


def read_vecnormalize(path: str | Path) -> Any:
    """VecNormalize statistics saved by `VecNormalize.save` (a VecNormalize without its venv: `normalize_obs` works).

    Raises:
        ValueError: a truncated or corrupt file, or one that holds something else, naming the file.
    """
    try:
        with open(path, "rb") as f:
            stats = pickle.load(f)
    except Exception as exc:  # a corrupt pickle can raise nearly anything (EOFError, MemoryError, ...)
        raise ValueError(f"{path} is not readable VecNormalize statistics ({type(exc).__name__}: {exc})") from None
    if not hasattr(stats, "normalize_obs"):
        raise ValueError(f"{path} holds a {type(stats).__name__}, not VecNormalize statistics")
    return stats


def load_replay_buffer(model: BaseAlgorithm, path: str | Path) -> None:
    """Load an off-policy model's replay buffer saved by `save_checkpoint`.

    Raises:
        ValueError: a truncated or corrupt file, or one that holds something else, naming the file.
    """
    try:
        model.load_replay_buffer(str(path))
    except Exception as exc:  # a corrupt pickle can raise nearly anything (EOFError, UnpicklingError, ...)
        raise ValueError(f"{path} is not a readable replay buffer ({type(exc).__name__}: {exc})") from None
