"""Argument checks and the atomic JSON writer shared by the benchmark scripts.

The scripts run as `python benchmarks/NAME.py`, which puts this folder first on sys.path: they import these as
`from _cli import ...`. Bad input exits through `parser.error` (one line, exit code 2) before any work is done.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import textwrap
from collections.abc import Callable
from pathlib import Path


def field_help(cls) -> dict[str, str]:
    """--help text of each field of an `Args` dataclass: the docstring under it (CleanRL style), with its default."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError):  # no source to read (a frozen or .pyc-only install): the defaults alone
        body = []
    helps = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            helps[node.target.id] = " ".join(str(nxt.value.value).split())
    for f in dataclasses.fields(cls):
        default = "" if f.default is dataclasses.MISSING else f" (default: {f.default!r})"
        helps[f.name] = (helps.get(f.name, "") + default).strip().replace("%", "%%")  # argparse formats help
    return helps


def flags(name: str) -> tuple[str, ...]:
    """A field's command-line flags: `--period-s`, as the other scripts spell theirs, and `--period_s` as an alias."""
    dashed = "--" + name.replace("_", "-")
    return (dashed,) if "_" not in name else (dashed, "--" + name)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count that is divided by or looped over)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


MAX_THREADS = 256  # as envs.config.MAX_TORCH_THREADS: a huge count fails to map its threads' stacks, or segfaults


def thread_count(text: str) -> int:
    """argparse type: torch CPU threads, 1 to `MAX_THREADS`."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_THREADS}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a duration or a rate)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text!r}")
    return value


def check_out_file(parser: argparse.ArgumentParser, flag: str, path: str, kind: str = ".json") -> None:
    """Refuse an output path that cannot be a file, now rather than after the run: an existing directory, one below
    an existing file (its parent folder could not be made), or one whose nearest existing folder is not writable."""
    out = Path(path)
    if out.is_dir():
        parser.error(f"{flag} {path} is a directory; give a {kind} file path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                parser.error(f"{flag} {path}: {parent} is a file, not a directory; give a {kind} file path")
            if not os.access(parent, os.W_OK | os.X_OK):  # a read-only mount or folder: found now, not at the end
                parser.error(f"{flag} {path}: {parent} is not writable; give a {kind} file path in a writable folder")
            break


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it over `path`: a crash or Ctrl-C mid-write
    leaves the file saved before, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f"{path.name}.{os.getpid()}.tmp"))  # not mkstemp: its 0600 would outlive the rename
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """`data` as indented JSON, written atomically (`write_atomic`); NaN and infinities as null (strict JSON has
    none, and strict parsers refuse Python's `NaN`)."""
    text = json.dumps(_finite_or_none(data), indent=1, allow_nan=False)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def _finite_or_none(data):
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite_or_none(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_none(v) for v in data]
    return data


def gpu_only_cli(description: str, needs: str) -> None:
    """The command line of a script that only measures a GPU: `--help`, and a one-line error naming what it `needs`
    where CUDA is missing (not a traceback from deep inside torch)."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.parse_args()
    if not torch.cuda.is_available():
        parser.error(f"this script measures a GPU: it needs {needs}, and torch.cuda.is_available() is False here")


def out_dir_json(name: str, data) -> Path:
    """Write `data` atomically to $OUT/`name` (the device tool's folder), or ./`name` without $OUT; the path."""
    path = Path(os.environ.get("OUT", ".")) / name
    write_json_atomic(path, data)
    return path
