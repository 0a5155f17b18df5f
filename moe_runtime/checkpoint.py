"""Checkpoints: atomic writes, a cache keyed by config and corpus, clear errors for corrupt or mismatched files."""

from __future__ import annotations

import hashlib
import os
import pathlib

import torch

from moe_runtime.config import MoEConfig
from moe_runtime.model import MoETransformer

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the config asked for."""


def default_cache_dir() -> pathlib.Path:
    """`$MOE_RL_CACHE`, else `~/.cache/moe-energy-rl`."""
    return pathlib.Path(os.environ.get("MOE_RL_CACHE", pathlib.Path.home() / ".cache" / "moe-energy-rl"))


def cache_dir_problem(path: str | os.PathLike | None = None) -> str | None:
    """Why the checkpoint cache (`path`, default `default_cache_dir()`) cannot be used, in a sentence naming it, or
    None. A cache folder that exists is taken as it is (a read-only one may hold every checkpoint a run needs); one
    to be made needs a writable folder above it, and no file in its place."""
    given = os.environ.get("MOE_RL_CACHE") if path is None else None
    path = pathlib.Path(path or default_cache_dir())
    name = f"MOE_RL_CACHE={given}" if given else f"the checkpoint cache {path}"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or (existing == path and path.is_dir()):
        return None
    if not existing.is_dir():
        return f"{name}: {existing} is a file, not a folder; point MOE_RL_CACHE at a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{name}: cannot create it, {existing} is not writable; point MOE_RL_CACHE at a writable folder"
    return None


def atomic_save(obj, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its mode 0600 would outlive the rename, leaving a shared cache unreadable to others.
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, model: MoETransformer, corpus_sha: str, extra: dict | None = None) -> None:
    """Save model weights with the config and the corpus hash they were trained on."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "format_version": FORMAT_VERSION,
            "config": model.cfg.to_dict(),
            "corpus_sha": corpus_sha,
            "model": state,
            **(extra or {}),
        },
        path,
    )


def read_checkpoint(path) -> dict:
    """Load a checkpoint dict (weights only, no pickled code).

    Raises:
        CheckpointError: the file does not exist, cannot be read, or is not one of ours.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # torch's own message runs to paragraphs of advice on weights_only; its first sentence says what went wrong
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a checkpoint ({type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a format-{FORMAT_VERSION} moe_runtime checkpoint")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its weights or model config are missing")
    return ckpt


def load_model(path, config: MoEConfig | None = None) -> MoETransformer:
    """Build the model a checkpoint holds.

    Args:
        config: if given, the checkpoint must have been trained for the same model shape (`MoEConfig.model_key`);
            its device and dtype are kept.

    Raises:
        CheckpointError: missing, corrupt, or mismatched checkpoint.
    """
    ckpt = read_checkpoint(path)
    try:
        saved = MoEConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:  # a config no MoEConfig accepts
        raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid model config ({exc})") from exc
    if config is not None:
        if saved.model_key() != config.model_key():
            raise CheckpointError(
                f"checkpoint {str(path)!r} was trained for a different model "
                f"(d_model {saved.d_model}, layers {saved.n_layers}, experts {saved.expert_widths}) than asked for "
                f"(d_model {config.d_model}, layers {config.n_layers}, experts {config.expert_widths})"
            )
        saved = config
    model = MoETransformer(saved)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError, ValueError) as exc:  # missing, extra or non-tensor weights
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model: {exc}") from exc
    # Which weights these are, for reports: the same config and seed pretrain to other weights on another CPU (its
    # matmuls round differently, and 900 steps carry that far: validation loss 1.85 on one machine, 2.02 on another).
    pretrain = ckpt.get("pretrain") if isinstance(ckpt.get("pretrain"), dict) else {}
    model.provenance = {
        "checkpoint": pathlib.Path(path).name,
        "weights_sha256": weights_digest(ckpt["model"]),
        **{k: pretrain[k] for k in ("steps", "val_loss_prose", "val_loss_code", "resumed_from") if k in pretrain},
    }
    return model


def weights_digest(state: dict) -> str:
    """The first 12 hex digits of a SHA-256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]
