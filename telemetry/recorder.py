"""`TraceRecorder`: telemetry rows to JSONL or CSV, and optionally TensorBoard scalars, flushed often enough that a
crash loses at most the last few rows."""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib
import time
import warnings
from dataclasses import asdict, is_dataclass
from typing import Any

__all__ = ["TraceRecorder"]

logger = logging.getLogger(__name__)


def _row_dict(row: Any) -> dict[str, Any]:
    """A dict, a dataclass (Sample, SimulatedInterval, Measurement) or anything with as_dict(), as a flat dict."""
    if isinstance(row, dict):
        out = dict(row)
    elif callable(getattr(row, "as_dict", None)):
        out = row.as_dict()
    elif is_dataclass(row) and not isinstance(row, type):
        out = asdict(row)
    else:
        raise TypeError(f"cannot record a {type(row).__name__}: pass a dict or a dataclass")
    return {key: "|".join(map(str, value)) if isinstance(value, list | tuple) else value for key, value in out.items()}


class TraceRecorder:
    """Append telemetry rows to a JSONL or CSV file (and TensorBoard scalars), flushing regularly.

    Rows are flushed to the OS every `flush_rows` rows or `flush_interval_s` seconds, whichever comes first, so a
    crashed process loses at most that many; `fsync=True` also survives a machine crash, at a cost per flush.
    CSV columns come from the first row; later keys outside them are dropped with one warning (use JSONL for
    rows that vary).

    Args:
        path: output file; ".jsonl" or ".csv" (the format follows the suffix unless `fmt` is given).
        fmt: "jsonl" or "csv".
        tensorboard_dir: also write each numeric field as the scalar "telemetry/<field>" there.
        flush_rows: flush after this many rows.
        flush_interval_s: flush when this long has passed since the last flush.
        fsync: fsync the file on every flush.

    Raises:
        ValueError: an unknown format or non-positive flush settings.
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, tensorboard_dir: str | None = None,
                 flush_rows: int = 5, flush_interval_s: float = 1.0, fsync: bool = False) -> None:
        self.path = pathlib.Path(path)
        self.fmt = fmt or ("csv" if self.path.suffix == ".csv" else "jsonl")
        if self.fmt not in ("jsonl", "csv"):
            raise ValueError(f"fmt must be 'jsonl' or 'csv', got {self.fmt!r}")
        if flush_rows < 1 or not flush_interval_s > 0.0:
            raise ValueError(f"flush_rows must be >= 1 and flush_interval_s > 0, got {flush_rows}, {flush_interval_s}")
        self.flush_rows, self.flush_interval_s, self.fsync = flush_rows, flush_interval_s, fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._csv: csv.DictWriter | None = None
        self._warned_extra = False
        self._pending = 0
        self._last_flush_s = time.monotonic()
        self.rows_written = 0
        self._tb = self._open_tensorboard(tensorboard_dir) if tensorboard_dir else None

    def write(self, row: Any, step: int | None = None) -> None:
        """Append one row (dict or dataclass). step: TensorBoard step (the row count when None)."""
        data = _row_dict(row)
        if self.fmt == "jsonl":
            self._file.write(json.dumps(data, default=str) + "\n")
        else:
            self._write_csv(data)
        if self._tb is not None:
            tb_step = self.rows_written if step is None else step
            for key, value in data.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(f"telemetry/{key}", value, tb_step)
        self.rows_written += 1
        self._pending += 1
        if self._pending >= self.flush_rows or time.monotonic() - self._last_flush_s >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Push buffered rows to the OS (and disk, with fsync=True) and TensorBoard."""
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()
        self._pending = 0
        self._last_flush_s = time.monotonic()

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_csv(self, data: dict[str, Any]) -> None:
        if self._csv is None:
            # Appending to a trace: its own header orders the columns, whatever order this row's keys come in.
            header = self._existing_header() if self._file.tell() > 0 else None
            self._csv = csv.DictWriter(self._file, fieldnames=header or list(data), extrasaction="ignore")
            if header is None:
                self._csv.writeheader()
        extra = set(data) - set(self._csv.fieldnames)
        if extra and not self._warned_extra:
            warnings.warn(f"{self.path}: columns {sorted(extra)} are not in the CSV header; dropped (use JSONL)",
                          RuntimeWarning, stacklevel=3)
            self._warned_extra = True
        self._csv.writerow(data)

    def _existing_header(self) -> list[str]:
        """The column names of the CSV being appended to (its first line); a ValueError if it has none."""
        with open(self.path, newline="") as f:
            header = next(csv.reader(f), [])
        if not header or not all(header):
            raise ValueError(f"{self.path} has no CSV header to append rows under; give a new path")
        return header

    @staticmethod
    def _open_tensorboard(log_dir: str) -> Any:
        """TensorBoard's own numpy-only writer (`tensorboard.summary.Writer`), else torch's `SummaryWriter`."""
        try:
            from tensorboard.summary import Writer
        except ImportError:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError("TensorBoard scalars need the tensorboard package: pip install tensorboard") from error
            return SummaryWriter(log_dir=log_dir)
        return Writer(log_dir)
