"""Statistics for `evaluate.py`: per-episode figures in, interquartile means with stratified-bootstrap confidence
intervals out (the rliable method, `rliable.library.get_interval_estimates`), and paired improvements.

- Aggregates: for each policy, a matrix of per-episode figures [episodes, metrics]. Each metric is treated as one
  rliable "task": the aggregate function returns the IQM of every column at once, and the stratified bootstrap
  resamples episodes independently within each column, so one bootstrap gives every metric's marginal interval.
- Paired improvements: policies ran on the same episode seeds (same streams, shift points, workloads and initial
  temperatures), so the improvement of policy P over baseline B is computed per episode first,
  `d_i = sign * (P_i - B_i)` (absolute, in the metric's unit) or `d_i = 100 * sign * (P_i - B_i) / |B_i|` (relative,
  %), with `sign` = -1 where lower is better, so that a positive improvement is always better; then the IQM of the
  d_i with its bootstrap interval. An interval that includes zero shows no difference at that confidence.
- Across training runs (`across_runs`): the mean of the runs' own IQMs, with a bootstrap over runs and episode seeds
  both (a new training run and new scenarios are both draws).
- Sources: every metric's label on each backend (`Metric.source_on`, `metric_sources`: measured, simulated,
  predicted, or what a figure combines, `SOURCE_NOTES`); `hardware_backend` refuses episodes from two backends, which
  no IQM or pairing may mix.

rliable draws its resampling indices from numpy's global generator (`np.random.choice`); `interval_estimates`
seeds it and restores its state afterwards, so results are reproducible and callers' randomness is untouched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

BACKENDS = ("simulated", "measured")  # the env's `info["source"]`, episodes.csv's `hardware_source`

# What each label means, for the reports (a label is one of these or a backend's override in `Metric.on_backend`).
SOURCE_NOTES = {
    "measured": "real: the model's loss and TTT updates; on a GPU also power, energy, temperature, latency, the "
    "TTT share of the runtime's wall time and the episode return",
    "simulated": "the simulated GPU at deployment scale",
    "predicted": "the kernel cost model, KCM",
    "mixed": "the episode return on the simulated backend: its energy, temperature and latency terms are simulated, "
    "its loss term measured",
    "predicted vs simulated": "the KCM's prediction against the simulated GPU's figure",
    "predicted vs measured": "the KCM's prediction against the measured GPU's figure",
}


@dataclass(frozen=True)
class Metric:
    """One per-episode figure.

    Attributes:
        name: column name in episodes.csv (unit in the name).
        title: table heading.
        source: `hardware` (measured or simulated, as the backend), `measured` (real on any backend: the model's
            loss, its TTT updates), or `predicted` (the kernel cost model).
        lower_is_better: direction of "better" (None: no direction, no improvement row).
        relative: improvements in % of the baseline (else in the metric's unit).
        on_backend: (backend, label) pairs that replace `source` on that backend (`source_on`), for a figure whose
            provenance depends on it: the return mixes simulated hardware terms with the measured loss on the
            simulated backend, the TTT share is the KCM's there and a measured wall-time share on the GPU.
    """

    name: str
    title: str
    source: str
    lower_is_better: bool | None = True
    relative: bool = True
    on_backend: tuple[tuple[str, str], ...] = ()

    def source_on(self, backend: str) -> str:
        """This figure's label (`SOURCE_NOTES`) for episodes run on `backend` (`simulated` or `measured`)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown hardware backend {backend!r}; expected one of {BACKENDS}")
        label = dict(self.on_backend).get(backend)
        return label or (backend if self.source == "hardware" else self.source)


_KCM_VS = (("simulated", "predicted vs simulated"), ("measured", "predicted vs measured"))  # the KCM error
_WALL_TIME_ON_GPU = (("measured", "measured"),)  # TTT share: the runtime's wall-time share on the measured backend
_RETURN = (("simulated", "mixed"),)  # simulated energy, temperature and latency terms + the measured loss term
METRICS: tuple[Metric, ...] = (
    Metric("energy_per_token_mj", "energy/token (mJ)", "hardware"),
    Metric("mean_power_w", "mean power (W)", "hardware"),
    Metric("peak_power_w", "peak power (W)", "hardware"),
    Metric("peak_temperature_c", "peak temp (C)", "hardware", relative=False),
    Metric("temperature_rise_c", "temp rise (C)", "hardware", relative=False),
    Metric("time_throttled_s", "throttled (s)", "hardware", relative=False),
    Metric("time_per_token_ms", "interval time/served token (ms)", "hardware"),  # 1000 / throughput, not a latency
    Metric("latency_p50_ms", "p50 latency (ms)", "hardware"),
    Metric("latency_p95_ms", "p95 latency (ms)", "hardware"),
    Metric("throughput_tokens_per_s", "throughput (tok/s)", "hardware", lower_is_better=False),
    Metric("slo_violations", "SLO violations", "hardware", relative=False),
    Metric("mean_loss", "loss (nats)", "measured"),
    Metric("perplexity", "perplexity", "measured"),
    Metric("loss_after_shift", "loss after shift", "measured"),
    Metric("ttt_updates", "TTT updates", "measured", lower_is_better=None),
    Metric("ttt_overhead_pct", "TTT share of busy (%)", "predicted", relative=False, on_backend=_WALL_TIME_ON_GPU),
    Metric("kcm_pred_energy_per_token_mj", "KCM energy/token (mJ)", "predicted", lower_is_better=None),
    Metric("kcm_energy_error_pct", "KCM error (%)", "predicted", lower_is_better=None, on_backend=_KCM_VS),
    Metric("episode_return", "return", "hardware", lower_is_better=False, relative=False, on_backend=_RETURN),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}


def hardware_backend(rows: list[dict], env_sources: dict[str, str] | None = None) -> str:
    """The one backend (`simulated` or `measured`) that every episode in `rows` (their `hardware_source`) and every
    env in `env_sources` ({env name: its backend's source}) ran on.

    Raises:
        ValueError: naming who ran where, when they differ (a `--resume` of a `--telemetry auto` run on another
            machine, say: measured and simulated episodes in one IQM, or paired across policies, compare unlike
            figures), when a source is not one of `BACKENDS`, or when there is nothing to go by.
    """
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["hardware_source"], set()).add(f"policy {r['label']!r}")
    for env, source in (env_sources or {}).items():
        found.setdefault(source, set()).add(f"env {env!r}")
    if unknown := sorted(set(found) - set(BACKENDS)):
        raise ValueError(f"hardware source {unknown[0]!r} is not one of {BACKENDS}")
    if len(found) != 1:
        where = "; ".join(f"{b}: {', '.join(sorted(who))}" for b, who in sorted(found.items())) or "no episode, no env"
        raise ValueError(
            f"the episodes do not share one hardware backend ({where}): measured and simulated figures cannot be "
            "aggregated or paired; run each backend into its own --out"
        )
    return next(iter(found))


def metric_sources(backend: str) -> dict[str, str]:
    """{metric name: its source label} for episodes run on `backend` (`Metric.source_on`)."""
    return {m.name: m.source_on(backend) for m in METRICS}


EXTRA_COLUMNS = ("tokens_served", "runtime_tokens", "ttt_tokens_trained", "initial_temperature_c", "shift_interval")
STEP_FIELDS = (  # what a trace keeps of each step's info
    "power_w",
    "peak_power_w",
    "temperature_c",
    "peak_temperature_c",
    "sm_clock_mhz",
    "latency_ms",
    "energy_j",
    "tokens",
    "runtime_tokens",
    "loss",
    "domain",
    "ttt_updates",
    "ttt_tokens_trained",
    "ttt_share_of_busy",
    "throttled_share",
    "slo_violated",
    "kcm_pred_energy_j",
    "kcm_pred_latency_ms",
    "demand_tokens",
    "ttt_frequency_tokens",
    "ttt_chunk_tokens",
)


def episode_metrics(trace: dict) -> dict:
    """The per-episode figures of `METRICS` (and `EXTRA_COLUMNS`) from a trace (`evaluate.run_episode`).

    Energy per token and throughput count deployment tokens served; mean power is time-weighted (each interval's
    duration is its energy over its mean power); the time per token is the episode's interval time per served token
    (1000 / throughput, ms: not a latency, and the same for every policy that meets the demand); p50/p95 are over
    the intervals' latencies; the TTT share is the share of busy time spent in TTT (the KCM's on the simulated
    backend, the runtime's wall-time share on the measured one), weighted by the KCM's busy time of each interval;
    the KCM error is the signed error of its predicted episode energy against the observed one, %.
    """
    steps, dt_s = trace["steps"], trace["interval_s"]
    col = {k: np.array([s[k] for s in steps], dtype=np.float64) for k in STEP_FIELDS if k != "domain"}
    n, tokens, energy = len(steps), col["tokens"].sum(), col["energy_j"].sum()
    after = [s["loss"] for s in steps if s["domain"] == trace["domains"][1]]
    busy = col["kcm_pred_latency_ms"]
    shift = next((i for i, s in enumerate(steps) if s["domain"] == trace["domains"][1]), -1)
    mean_loss = float(col["loss"].mean())
    power = col["power_w"]
    duration_s = float(np.sum(np.where(power > 0, col["energy_j"] / np.where(power > 0, power, 1.0), dt_s)))
    return {
        "energy_per_token_mj": 1e3 * energy / max(tokens, 1.0),
        "mean_power_w": energy / duration_s,
        "peak_power_w": float(col["peak_power_w"].max()),
        "peak_temperature_c": float(col["peak_temperature_c"].max()),
        "temperature_rise_c": float(col["peak_temperature_c"].max() - trace["initial_temperature_c"]),
        "time_throttled_s": float(col["throttled_share"].sum() * dt_s),
        "time_per_token_ms": 1e3 * n * dt_s / max(tokens, 1.0),
        "latency_p50_ms": float(np.percentile(col["latency_ms"], 50)),
        "latency_p95_ms": float(np.percentile(col["latency_ms"], 95)),
        "throughput_tokens_per_s": tokens / (n * dt_s),
        "slo_violations": int(col["slo_violated"].sum()),
        "mean_loss": mean_loss,
        "perplexity": math.exp(mean_loss),
        "loss_after_shift": float(np.mean(after)) if after else math.nan,
        "ttt_updates": int(col["ttt_updates"].sum()),
        "ttt_overhead_pct": 100.0 * float(np.dot(col["ttt_share_of_busy"], busy) / busy.sum()) if busy.sum() else 0.0,
        "kcm_pred_energy_per_token_mj": 1e3 * col["kcm_pred_energy_j"].sum() / max(tokens, 1.0),
        "kcm_energy_error_pct": 100.0 * (col["kcm_pred_energy_j"].sum() - energy) / energy if energy else math.nan,
        "episode_return": float(sum(s["reward"] for s in steps)),
        "tokens_served": float(tokens),
        "runtime_tokens": int(col["runtime_tokens"].sum()),
        "ttt_tokens_trained": int(col["ttt_tokens_trained"].sum()),
        "initial_temperature_c": trace["initial_temperature_c"],
        "shift_interval": shift,
    }


@dataclass(frozen=True)
class Estimate:
    """An IQM with its confidence interval over `n` episodes (NaN when n == 0)."""

    iqm: float
    low: float
    high: float
    n: int

    @property
    def includes_zero(self) -> bool:
        return self.n > 0 and self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        return {**asdict(self), "includes_zero": self.includes_zero}


NAN_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def iqm(x: np.ndarray, axis: int | None = 0) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (scipy's 25% trimmed mean, as `rliable.metrics.aggregate_iqm`
    but per column when `axis=0`)."""
    return np.asarray(sps.trim_mean(x, proportiontocut=0.25, axis=axis))


def require_rliable() -> None:
    """Raise RuntimeError, saying how to fix it, if rliable cannot be imported here (checked before a run)."""
    _rliable()


def _rliable():
    try:
        from rliable import library
    except Exception as exc:  # rliable 1.2 needs arch < 8, whose import fails with pandas >= 3
        raise RuntimeError(
            f"cannot import rliable ({type(exc).__name__}: {exc}); install it with a pandas it works with: "
            "pip install 'rliable>=1.0' 'pandas<3'"
        ) from exc
    return library


def interval_estimates(scores: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> list[Estimate]:
    """IQM and stratified-bootstrap interval of each column of `scores` [episodes, metrics].

    NaN entries are left out column by column (a column with NaNs is bootstrapped on its own finite values).

    Args:
        scores: per-episode figures, float [N, M].
        reps: bootstrap replications.
        confidence: interval coverage (0.95: a 95% interval).
        seed: seed of the resampling.

    Returns:
        One `Estimate` per column.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [episodes, metrics], got shape {scores.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    library = _rliable()
    out: list[Estimate | None] = [None] * scores.shape[1]
    finite = np.isfinite(scores)
    full = [j for j in range(scores.shape[1]) if finite[:, j].all() and scores.shape[0] > 0]
    groups = [(full, scores[:, full])] if full else []
    for j in range(scores.shape[1]):
        if j not in full:
            column = scores[finite[:, j], j][:, None]
            if column.shape[0] == 0:
                out[j] = NAN_ESTIMATE
            else:
                groups.append(([j], column))
    state = np.random.get_state()  # noqa: NPY002  (rliable resamples with the legacy global generator)
    try:
        np.random.seed(seed)  # noqa: NPY002
        for columns, matrix in groups:
            point, interval = library.get_interval_estimates(
                {"x": matrix}, lambda s: iqm(s, axis=0), reps=reps, confidence_interval_size=confidence
            )
            for k, j in enumerate(columns):
                out[j] = Estimate(
                    float(point["x"][k]), float(interval["x"][0, k]), float(interval["x"][1, k]), matrix.shape[0]
                )
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return out  # type: ignore[return-value]


def paired_differences(policy: np.ndarray, baseline: np.ndarray, lower_is_better: bool, relative: bool) -> np.ndarray:
    """Per-episode improvement of `policy` over `baseline` (aligned arrays [N]); positive is better.

    Relative: 100 * sign * (P - B) / |B| (NaN where B is 0); absolute: sign * (P - B).
    """
    p, b = np.asarray(policy, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    sign = -1.0 if lower_is_better else 1.0
    d = sign * (p - b)
    if relative:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(b != 0, 100.0 * d / np.abs(b), np.nan)
    return d


def summarize(
    rows: list[dict],
    labels: list[str],
    metrics: tuple[Metric, ...] = METRICS,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """{label: {metric: Estimate}} over the episodes in `rows` (dicts with `label` and the metric columns).

    Raises:
        ValueError: rows with a `hardware_source` that ran on more than one backend (`hardware_backend`).
    """
    _one_backend(rows)
    result = {}
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        matrix = np.array([[_float(r.get(m.name)) for m in metrics] for r in mine], dtype=np.float64)
        matrix = matrix.reshape(len(mine), len(metrics))
        estimates = interval_estimates(matrix, reps, confidence, seed)
        result[label] = {m.name: e for m, e in zip(metrics, estimates)}
    return result


def improvements(
    rows: list[dict],
    labels: list[str],
    baseline: str,
    metrics: tuple[Metric, ...] = METRICS,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """{label: {metric: Estimate of the paired improvement over `baseline`}} for every other label, paired on
    `episode_seed`; metrics without a direction are left out. Empty when the baseline has no episodes. A
    ValueError for rows from more than one backend, as `summarize`."""
    _one_backend(rows)
    base = {r["episode_seed"]: r for r in rows if r["label"] == baseline}
    directed = tuple(m for m in metrics if m.lower_is_better is not None)
    result = {}
    for label in labels:
        if label == baseline or not base:
            continue
        pairs = [(r, base[r["episode_seed"]]) for r in rows if r["label"] == label and r["episode_seed"] in base]
        matrix = np.array(
            [
                [
                    paired_differences(
                        _float(p.get(m.name)), _float(b.get(m.name)), bool(m.lower_is_better), m.relative
                    )
                    for m in directed
                ]
                for p, b in pairs
            ],
            dtype=np.float64,
        ).reshape(len(pairs), len(directed))
        estimates = interval_estimates(matrix, reps, confidence, seed)
        result[label] = {m.name: e for m, e in zip(directed, estimates)}
    return result


def across_runs(
    rows: list[dict],
    runs: list[str],
    baseline: str,
    metrics: tuple[Metric, ...] = METRICS,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[list[str], dict[str, Estimate]]:
    """The paired improvement over `baseline` of one method trained several times (the runs' labels `runs`): (the
    runs pooled, {metric: Estimate}).

    Point estimate: each run's IQM of its paired improvements over the shared episode seeds, averaged over the runs
    (so it lies among those IQMs; one IQM over all runs x seeds trims a quarter of the pooled entries at each end
    and, with heavy-tailed episodes, need not). Interval: a two-level percentile bootstrap that resamples the runs and,
    independently, the episode seeds, each with replacement, and recomputes that statistic. Both are draws: a new
    training run and new scenarios. Each run played every seed, so the runs x seeds entries are not independent: a
    bootstrap over the runs alone (seeds held fixed) says nothing of the scenarios and was far too narrow here (five
    runs vs no control: [49.8, 50.4] beside runs' IQMs of 56.5-57.4), and rliable's stratified bootstrap, which
    draws a run per seed, averages a run's own effect away.

    Runs that played none of the baseline's seeds (a time budget reached) are left out; the seeds every other run
    and the baseline played count; a seed where a metric is not finite for some run is left out of that metric.
    Metrics without a direction are left out. ([], {}) with fewer than two runs to pool or no shared seed.
    """
    _one_backend(rows)
    by = {(r["label"], r["episode_seed"]): r for r in rows}
    seeds = sorted({r["episode_seed"] for r in rows if r["label"] == baseline})
    runs = [run for run in runs if run != baseline and any((run, s) in by for s in seeds)]
    seeds = [s for s in seeds if all((run, s) in by for run in runs)]
    if len(runs) < 2 or not seeds:
        return [], {}
    rng = np.random.default_rng(seed)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    result = {}
    for m in (m for m in metrics if m.lower_is_better is not None):
        scores = np.array([[_float(by[(run, s)].get(m.name)) for s in seeds] for run in runs])  # [runs, seeds]
        base = np.array([_float(by[(baseline, s)].get(m.name)) for s in seeds])
        matrix = paired_differences(scores, base[None, :], bool(m.lower_is_better), m.relative)
        matrix = matrix[:, np.isfinite(matrix).all(axis=0)]
        if matrix.shape[1] == 0:
            result[m.name] = NAN_ESTIMATE
            continue
        n_runs, n_seeds = matrix.shape
        run_picks = rng.integers(0, n_runs, size=(reps, n_runs, 1))
        seed_picks = rng.integers(0, n_seeds, size=(reps, 1, n_seeds))
        boot = iqm(matrix[run_picks, seed_picks], axis=2).mean(axis=1)  # [reps, runs, seeds] -> [reps]
        low, high = np.percentile(boot, [alpha, 100.0 - alpha])
        result[m.name] = Estimate(float(iqm(matrix, axis=1).mean()), float(low), float(high), matrix.size)
    return runs, result


def _one_backend(rows: list[dict]) -> None:
    """`hardware_backend` over the rows that say where they ran (hand-made rows may not)."""
    tagged = [r for r in rows if r.get("hardware_source")]
    if tagged:
        hardware_backend(tagged)


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
