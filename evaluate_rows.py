"""The run folder of `evaluate.py` and its episodes.csv, written one episode at a time: whether a run may use the
folder (`check_out`, `prepare_out`), the columns, appending a row durably, and reading the rows back with those a
crash cut short left out (or, for --resume, moved aside to run again); `atomic_open` for every other file it writes."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import evaluate_stats as stats
from evaluate_specs import PolicySpec, UsageError, split_label

ID_COLUMNS = ("label", "spec", "env", "seed", "episode", "episode_seed", "hardware_source", "wall_time_s")
COLUMNS = ID_COLUMNS + tuple(m.name for m in stats.METRICS) + stats.EXTRA_COLUMNS
# Columns renamed since a run may have been written: {old name: new name}. Read under the new name; a --resume
# rewrites the file with the new header before it appends.
RENAMED_COLUMNS = {"latency_per_token_ms": "time_per_token_ms"}
TEXT_COLUMNS = ("label", "spec", "env", "hardware_source")
INT_COLUMNS = ("seed", "episode", "episode_seed")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; when the block ends without an error it is flushed to disk
    and replaces `path`.

    An error or Ctrl-C mid-write leaves the file saved before (or none), never a half-written one, and removes the
    temporary file; so does a crash of the machine. A killed process (SIGKILL) may leave `.<name>.<pid>.tmp` behind.
    `mode` is "w" or "wb"; `kwargs` go to `open` (newline="" for csv).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open(mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the rename points the name at it
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # where the temporary could not be made (a read-only folder): the first error is the one to see
            pass
        raise


def complete_row(row: dict) -> bool:
    """Whether a row of episodes.csv is whole: every column and no more, its text columns not empty, the rest
    numbers (NaN included)."""
    if None in row or any(row.get(k) is None for k in COLUMNS):  # a field too many, or too few
        return False
    try:
        for k in COLUMNS:
            if k in INT_COLUMNS:
                int(row[k])
            elif k not in TEXT_COLUMNS:
                float(row[k])
    except ValueError:
        return False
    return all(row[k] for k in TEXT_COLUMNS)


def split_rows(path: Path) -> tuple[list[dict], list[dict], bool]:
    """(complete rows, incomplete rows, whether the file must be rewritten before a row is appended) of an
    episodes.csv. A row a crash cut short is incomplete (`complete_row`); so is a last line without its line end,
    whose last field may be cut short, and to which the next row would be glued."""
    if not path.exists():
        return [], [], False
    try:
        with path.open(newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        why = f"{exc.reason} at byte {exc.start}"
        raise UsageError(f"{path} is not a text CSV of evaluate.py ({why}); use a new --out") from exc
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = None if reader.fieldnames is None else tuple(reader.fieldnames)
        renamed = header is not None and any(name in RENAMED_COLUMNS for name in header)
        if renamed:
            reader.fieldnames = [RENAMED_COLUMNS.get(name, name) for name in header]
        if header is not None and tuple(reader.fieldnames) != COLUMNS:
            raise UsageError(f"{path} has other columns than this evaluate.py writes; use a new --out")
        rows, torn_end = list(reader), not text.endswith("\n")
    except csv.Error as exc:
        raise UsageError(f"{path} is not a CSV file evaluate.py can read ({exc}); use a new --out") from exc
    good, bad = [], []
    for i, r in enumerate(rows):
        (good if complete_row(r) and not (torn_end and i == len(rows) - 1) else bad).append(r)
    for r in good:
        r["episode_seed"] = int(r["episode_seed"])
    return good, bad, bool(bad) or torn_end or renamed


def read_rows(path: Path) -> list[dict]:
    """The complete rows of an episodes.csv; incomplete ones (`split_rows`) are left out with a note."""
    rows, dropped, _ = split_rows(path)
    if dropped:
        print(
            f"note: left out {len(dropped)} incomplete row(s) of {path} (cut short by a crash?); "
            "--resume runs their episodes again"
        )
    return rows


def repair_rows(path: Path) -> list[dict]:
    """The complete rows of an episodes.csv, rewritten (atomically) without its incomplete rows, which move to
    episodes.dropped.csv beside it, so that --resume runs those episodes again and appends after a whole line."""
    rows, dropped, repair = split_rows(path)
    if not repair:
        return rows
    if dropped:
        aside = path.with_name("episodes.dropped.csv")
        new = not aside.exists()
        with aside.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(dropped)
            f.flush()
            os.fsync(f.fileno())
        print(
            f"note: {len(dropped)} incomplete row(s) of {path} (cut short by a crash?) moved to {aside}; "
            "their episodes run again"
        )
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one row and make it durable (a crash afterwards keeps it)."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


# The settings that define an episode (its env, served model, and the policies a suite adds): a --resume must give
# the saved run's. Not among them: the policy and seed lists and --episodes (a resume may extend them), how long to
# run (--max-wall-s, --main-budget-s, the short training run's flags: a resume reuses its model), where policies
# and torch run (--policy-device, --torch-threads), --part, and the statistics and output flags.
EPISODE_SETTINGS = (
    "suite_run",
    "preset",
    "telemetry",
    "gpu",
    "split",
    "episode_intervals",
    "interval_s",
    "workload",
    "load",
    "pretrain_steps",
    "checkpoint",
    "trained_policy",
    "gpu_pretrain_steps",
)


def check_out(out: Path, args: Any, suite_run: str) -> None:
    """Refuse, before anything is written there, an --out this run cannot use: a file, a folder holding another
    run's episodes without --resume or --overwrite, or a --resume with other `EPISODE_SETTINGS` than the saved
    args.json's."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; give a folder path")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):  # read-only: a mount, or permissions
        raise UsageError(f"--out {out}: {existing} is not writable; give a folder path where this run can write")
    csv_path = out / "episodes.csv"
    if csv_path.exists() and not args.resume and not args.overwrite:
        raise UsageError(f"{csv_path} exists: pass --resume to continue that run or --overwrite to start over")
    saved_path = out / "args.json"
    if not args.resume or not saved_path.exists():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except ValueError as exc:
        raise UsageError(
            f"--resume: cannot read {saved_path} ({exc}); start over with --overwrite or use a new --out"
        ) from exc
    now = dataclasses.asdict(args) | {"suite_run": suite_run}
    differ = [
        f"--{'suite' if k == 'suite_run' else k.replace('_', '-')} {saved[k]!r} (now {now[k]!r})"
        for k in EPISODE_SETTINGS
        if k in saved and saved[k] != now[k]
    ]
    if differ:
        raise UsageError(
            f"--resume: {out} holds episodes run with other settings: {', '.join(differ)}; resume "
            "with the saved ones, or start over with --overwrite or a new --out"
        )


def prepare_out(out: Path, resume: bool, overwrite: bool, specs: list[PolicySpec]) -> list[dict]:
    """Create --out; return the finished rows to keep (resume), or refuse to mix runs: episodes there without
    --resume or --overwrite, or a resume that gives a saved label to another policy."""
    csv_path = out / "episodes.csv"
    if csv_path.exists() and not resume:
        if not overwrite:
            raise UsageError(f"{csv_path} exists: pass --resume to continue that run or --overwrite to start over")
        csv_path.unlink()
        shutil.rmtree(out / "traces", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        return []
    rows = repair_rows(csv_path)
    saved_specs = {r["label"]: split_label(r["spec"])[1] for r in rows}  # what each label ran, whatever its name
    pairs = [(p.label, saved_specs[p.label], split_label(p.text)[1]) for p in specs if p.label in saved_specs]
    if clash := [f"{label}: {saved!r} (saved) vs {now!r}" for label, saved, now in pairs if saved != now]:
        raise UsageError(  # its new episodes would be paired with the other policy's old ones
            f"--resume: {out} holds episodes of other policies under these labels: {'; '.join(clash)}; "
            "name them apart (LABEL=SPEC), or start over with --overwrite or a new --out"
        )
    return rows
