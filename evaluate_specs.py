"""Policy specs and seed lists of `evaluate.py`'s command line (grammar in `evaluate.py`'s docstring), and its
`UsageError`."""

from __future__ import annotations

import ast
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

SB3_PREFIXES = ("ppo", "a2c", "sac", "td3", "sb3")
SB3_SPEC = re.compile(rf"^({'|'.join(SB3_PREFIXES)}):(.+)$")  # ALGO:PATH of a saved model


class UsageError(ValueError):
    """A bad flag, policy spec or path: reported as one line, exit status 2."""


@dataclass(frozen=True)
class PolicySpec:
    """A parsed policy spec: a controller by name with keyword arguments, or a saved SB3 model."""

    label: str
    text: str
    name: str = ""  # controller name (kind "controller")
    kwargs: dict = field(default_factory=dict)
    algo: str = ""  # ppo, a2c, sac, td3, or "" to infer (kind "sb3")
    path: str = ""
    env: str = "main"  # which env of the run it runs on (suites use several)
    group: str = ""  # the method whose training run this is (a glob spec's LABEL; `run_groups`)

    @property
    def kind(self) -> str:
        return "sb3" if self.path else "controller"


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside parentheses: "a,b(x=1,y=2),c" -> ["a", "b(x=1,y=2)", "c"]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            raise UsageError(f"unbalanced ')' in {text!r}")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise UsageError(f"unbalanced '(' in {text!r}")
    return [p.strip() for p in parts + [cur] if p.strip()]


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(text.lower(), text)


def split_label(text: str) -> tuple[str, str]:
    """("LABEL", "SPEC") of "LABEL=SPEC", ("", "SPEC") of a spec without a label."""
    m = re.match(r"^([^=():]+)=(.+)$", text.strip())
    return (m.group(1).strip(), m.group(2).strip()) if m else ("", text.strip())


RUN_SEPARATOR = "@"  # a training run's label: GROUP@RUN (`expand_runs`, `run_groups`); refused in other labels


def run_groups(labels: list[str]) -> dict[str, list[str]]:
    """{group: its runs' labels, in order} of the labels "GROUP@RUN" that `expand_runs` made, for groups of two or
    more runs: the training runs of one method, whose results `evaluate_stats.across_runs` pools. (Only a glob
    spec's labels hold the separator, so labels alone say it, and --report-only finds the groups in episodes.csv.)"""
    groups: dict[str, list[str]] = {}
    for label in labels:
        group, sep, run = label.partition(RUN_SEPARATOR)
        if sep and group and run:
            groups.setdefault(group, []).append(label)
    return {g: members for g, members in groups.items() if len(members) > 1}


def run_names(paths: list[Path], pattern: Path) -> list[str]:
    """The training run each of a glob's matches belongs to: its run folder's name (`run_folder`: the model's
    folder, or its parent for train_agent.py's `best/`); where two share that name (`a/s0` and `b/s0`), the folders
    the pattern's wildcards matched, joined by '-' (`a-s0`)."""
    names = [run_folder(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    wild = [i for i, part in enumerate(pattern.parts[:-1]) if glob.has_magic(part)]
    if not wild or any(len(p.parts) != len(pattern.parts) for p in paths):
        return names  # nothing better to tell them apart by: expand_runs says so
    return ["-".join(p.parts[i] for i in wild) for p in paths]


def run_folder(path: Path) -> Path:
    """The training run's folder of a saved model: its own folder, or that folder's parent for the best model in
    train_agent.py's `best/` subfolder."""
    folder = path.parent if path.is_file() else path
    return folder.parent if folder.name == "best" and path.is_file() else folder


def expand_runs(text: str, controllers: tuple[str, ...]) -> list[PolicySpec]:
    """The specs of one --policies item: one, or one per training run where a saved model's PATH is a glob
    (`LABEL=ppo:runs/ppo_s*/best/best_model.zip`), each labelled LABEL@RUN with RUN its run folder's name; without a
    LABEL, the path's first part with a wildcard (`ppo_s*`)."""
    label, body = split_label(text)
    m = SB3_SPEC.match(body)
    if not (m and glob.has_magic(m.group(2))):
        return [parse_policy(text, controllers)]
    algo, pattern = m.group(1), m.group(2).strip()
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise UsageError(f"policy {text!r}: no saved model matches {pattern} (train runs with train_agent.py --out)")
    runs = run_names([Path(p) for p in paths], Path(pattern))
    if len(set(runs)) < len(runs):
        raise UsageError(f"policy {text!r}: the matches {paths} do not each have their own run folder")
    group = label or next(part for part in Path(pattern).parts if glob.has_magic(part))
    if RUN_SEPARATOR in group:
        raise UsageError(f"policy {text!r}: the label {group!r} may not hold {RUN_SEPARATOR!r}, which marks its runs")
    return [
        PolicySpec(f"{group}{RUN_SEPARATOR}{run}", f"{group}{RUN_SEPARATOR}{run}={algo}:{path}",
                   algo="" if algo == "sb3" else algo, path=path, group=group)
        for run, path in zip(runs, paths)
    ]


def parse_policy(text: str, controllers: tuple[str, ...]) -> PolicySpec:
    """One policy spec (grammar in the module docstring). Raises UsageError with the fix."""
    label, body = split_label(text)
    m = SB3_SPEC.match(body)
    if m:
        algo, path = m.group(1), m.group(2).strip()
        if not Path(path).exists():
            raise UsageError(f"policy {text!r}: no saved model at {path} (train one with train_agent.py --out DIR)")
        default = f"{algo}:{run_folder(Path(path)).name}"
        return PolicySpec(label or default, text, algo="" if algo == "sb3" else algo, path=path)
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)(?:\((.*)\))?$", body)
    if not m:
        raise UsageError(f"policy {text!r} is not NAME, NAME(KEY=VALUE,...), MODULE:NAME(...), ppo:PATH or sb3:PATH")
    name, kwargs = m.group(1), {}
    if ":" not in name and name not in controllers:  # MODULE:NAME, an entry point, is imported when it is built
        raise UsageError(f"policy {text!r}: unknown controller {name!r}; choose one of {', '.join(controllers)} "
                         "or ppo:PATH / sb3:PATH for a saved model, or MODULE:NAME for your own")
    for item in split_top_level(m.group(2) or ""):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UsageError(f"policy {text!r}: argument {item!r} is not KEY=VALUE")
        kwargs[key.strip()] = _value(value.strip())
    return PolicySpec(label or body, text, name=name, kwargs=kwargs)


def parse_policies(text: str, controllers: tuple[str, ...]) -> list[PolicySpec]:
    specs = [spec for p in split_top_level(text) for spec in expand_runs(p, controllers)]
    if not specs:
        raise UsageError("--policies is empty; give e.g. heuristic,no_control")
    labels = [s.label for s in specs]
    if marked := [s.label for s in specs if RUN_SEPARATOR in s.label and not s.group]:
        raise UsageError(f"policy label {marked[0]!r} holds {RUN_SEPARATOR!r}, which marks a training run of a glob "
                         "spec (LABEL=ppo:GLOB); name it with LABEL=SPEC")
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise UsageError(f"policy labels must be unique, {duplicates} repeat: name them with LABEL=SPEC")
    return specs


def parse_seeds(text: str) -> list[int]:
    """"0,3,5-7" -> [0, 3, 5, 6, 7]."""
    seeds: list[int] = []
    for part in split_top_level(text):
        m = re.match(r"^(\d+)(?:-(\d+))?$", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"--seeds {text!r}: {part!r} is not N or N-M (M >= N)")
        seeds += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} must name distinct seeds")
    return seeds
