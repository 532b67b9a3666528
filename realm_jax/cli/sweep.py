"""Grid sweeps: expand a sweep file into runs, run each as `realm-jax train`, gather results.

A sweep file (`experiments/sweeps/NAME.py`) defines `get_sweep() -> Sweep`:
one experiment, base overrides shared by every run, and either a grid
(dotted key -> list of values, expanded as a cartesian product) or an explicit
list of override dicts.

Each run gets `OUT/<run name>` as its workdir; the name is built from the
overrides that vary across the sweep (`lr=0.0001_seed=1`), so it stays the same
when values are added to a grid and finished runs are recognised: a run is
finished when its workdir holds `sweep.done`, written by the sweep after all
the run's commands (train, eval, fetch) exit 0. Rerunning a sweep skips
finished runs; an interrupted run starts again and resumes from its own latest
checkpoint.

Each run is `realm-jax train` then `realm-jax eval`; their results are gathered
by `cli.sweep_results` into OUT/results.{csv,md,png}.

CLI: `realm-jax sweep SWEEPFILE [--parallel N] [--out DIR] [--dry-run] [--tpu NAME --zone Z]`.
Overrides reach the training CLI as `key=value` with strings verbatim and
other values as Python literals (`repr`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.util
import itertools
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from realm_jax.cli.sweep_results import format_value, summarize

DONE = "sweep.done"  # the training loop's own DONE only says training ended; eval may not have
LAUNCH = Path(__file__).resolve().parents[2] / "tpu" / "launch.py"  # the checkout's tpu/


@dataclasses.dataclass(frozen=True)
class Sweep:
  """experiment: name for `realm-jax train`; grid: dotted key -> values;
  runs: explicit override dicts (instead of a grid); base: overrides for all;
  metric: result column to plot (default: the first 'eval/' column)."""
  experiment: str
  grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  base: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  runs: Sequence[Mapping[str, Any]] | None = None
  metric: str | None = None

  def __post_init__(self):
    if not self.experiment:
      raise ValueError("Sweep.experiment is empty; name an experiment as for `realm-jax train`")
    if self.grid and self.runs is not None:
      raise ValueError("Sweep takes a grid or an explicit list of runs, not both")
    for key, values in self.grid.items():
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"Sweep.grid[{key!r}] must be a non-empty list of values, got {values!r}")
    keys = list(self.grid) + list(self.base) + [k for r in self.runs or () for k in r]
    for key in keys:
      if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise ValueError(f"Sweep override key {key!r} is not a dotted config path")

  def overrides(self) -> list[dict[str, Any]]:
    each = expand(self.grid) if self.runs is None else [dict(r) for r in self.runs]
    return [{**self.base, **o} for o in each]


def expand(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Cartesian product of a grid, first key slowest; {} -> [{}]."""
  keys = list(grid)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def override_args(overrides: Mapping[str, Any]) -> list[str]:
  return [f"{k}={format_value(v)}" for k, v in overrides.items()]


def run_names(all_overrides: Sequence[Mapping[str, Any]]) -> list[str]:
  """Names from the keys whose values vary; short (last dotted part) when unambiguous."""
  keys = list(dict.fromkeys(k for o in all_overrides for k in o))
  varying = [k for k in keys
             if len({format_value(o.get(k, "<unset>")) for o in all_overrides}) > 1]
  short = {k: k.rsplit(".", 1)[-1] for k in varying}
  if len(set(short.values())) < len(short):
    short = {k: k for k in varying}
  names = []
  for o in all_overrides:
    parts = [f"{short[k]}={format_value(o[k])}" for k in varying if k in o]
    names.append(re.sub(r"[^\w.=+-]", "-", "_".join(parts)) or "run")
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"sweep runs share the names {dupes}; two runs have identical overrides")
  return names


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict[str, Any]
  workdir: Path

  @property
  def finished(self) -> bool:
    return (self.workdir / DONE).exists()


def plan_runs(sweep: Sweep, out: Path) -> list[Run]:
  all_overrides = sweep.overrides()
  return [Run(n, o, Path(out) / n) for n, o in zip(run_names(all_overrides), all_overrides)]


def load_sweep(path: str | Path) -> Sweep:
  """Import a sweep file by path and call its `get_sweep()`."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"sweep file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"realm_sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise AttributeError(f"sweep file {path} defines no get_sweep() returning a realm_jax.cli.sweep.Sweep")
  sweep = module.get_sweep()
  if not isinstance(sweep, Sweep):
    raise TypeError(f"{path}: get_sweep() returned {type(sweep).__name__}, expected sweep.Sweep")
  return sweep


# ----------------------------------------------------------------------------
# Commands and execution.

CommandFn = Callable[[str, Run], list[list[str]]]


def _cli() -> list[str]:
  exe = Path(sys.executable).with_name("realm-jax")
  return [str(exe)] if exe.exists() else [sys.executable, "-m", "realm_jax"]


def local_commands(experiment: str, run: Run) -> list[list[str]]:
  """`realm-jax train` then `realm-jax eval` (which writes eval.json) in the run's workdir."""
  workdir = str(run.workdir)
  return [_cli() + ["train", experiment, "--workdir", workdir, *override_args(run.overrides)],
          _cli() + ["eval", "--workdir", workdir]]


def tpu_commands(name: str, zone: str, project: str | None, remote_root: str) -> CommandFn:
  """Train and evaluate each run on a TPU VM/pod in the foreground, then fetch its workdir."""
  if not LAUNCH.exists():
    raise FileNotFoundError(f"{LAUNCH} not found; --tpu needs a source checkout (pip install -e .)")
  scope = ["--name", name, "--zone", zone] + (["--project", project] if project else [])

  def commands(experiment: str, run: Run) -> list[list[str]]:
    remote = f"{remote_root.rstrip('/')}/{run.name}"
    base = [sys.executable, str(LAUNCH)]
    return [base + ["run", *scope, "--eval", experiment, "--workdir", remote,
                    *override_args(run.overrides)],
            base + ["fetch", *scope, "--workdir", remote, "--dest", str(run.workdir)]]
  return commands


def _execute_one(run: Run, commands: list[list[str]]) -> str:
  run.workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()
  with open(run.workdir / "sweep.log", "a") as log:
    for cmd in commands:
      log.write(f"$ {shlex.join(cmd)}\n")
      log.flush()
      rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
      if rc:
        log.write(f"exit code {rc}\n")
        return "failed"
  (run.workdir / DONE).write_text(json.dumps(
      {"seconds": round(time.time() - start, 1), "commands": [shlex.join(c) for c in commands]}))
  return "done"


def execute(experiment: str, runs: Sequence[Run], command_fn: CommandFn = local_commands,
            parallel: int = 1, dry_run: bool = False,
            echo: Callable[[str], None] = print) -> dict[str, str]:
  """Run every unfinished run (`parallel` at a time); status per run name:
  'skipped' (finished before), 'done', 'failed' or 'planned' (dry run)."""
  if parallel < 1:
    raise ValueError(f"--parallel={parallel}; use 1 or more")
  status, todo = {}, []
  for run in runs:
    if run.finished:
      status[run.name] = "skipped"
      echo(f"[skip] {run.name} (finished: {run.workdir / DONE})")
    else:
      todo.append(run)
  if dry_run:
    for run in todo:
      for cmd in command_fn(experiment, run):
        echo(shlex.join(cmd))
      status[run.name] = "planned"
    return status
  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    futures = {pool.submit(_execute_one, r, command_fn(experiment, r)): r for r in todo}
    for fut in concurrent.futures.as_completed(futures):
      run = futures[fut]
      status[run.name] = fut.result()
      echo(f"[{status[run.name]}] {run.name} (log: {run.workdir / 'sweep.log'})")
  return {r.name: status[r.name] for r in runs}


def run_sweep(sweep: Sweep, out: str | Path, command_fn: CommandFn = local_commands,
              parallel: int = 1, dry_run: bool = False) -> tuple[dict[str, str], list[dict]]:
  """Plan, execute (skipping finished runs) and summarize a sweep."""
  out = Path(out)
  runs = plan_runs(sweep, out)
  status = execute(sweep.experiment, runs, command_fn, parallel, dry_run)
  if dry_run:
    return status, []
  out.mkdir(parents=True, exist_ok=True)
  return status, summarize(sweep, runs, out, status)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="realm-jax sweep", description="Run a grid of experiments.")
  p.add_argument("sweep_file", help="experiments/sweeps/NAME.py defining get_sweep()")
  p.add_argument("--out", default=None, help="output root (default runs/sweeps/NAME)")
  p.add_argument("--parallel", type=int, default=1, help="local runs at a time")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--metric", default=None, help="result column to plot")
  p.add_argument("--tpu", default=None, metavar="NAME", help="run on this TPU VM (tpu/launch.py)")
  p.add_argument("--zone", default=None, help="TPU zone (with --tpu)")
  p.add_argument("--project", default=None, help="GCP project (with --tpu)")
  p.add_argument("--bucket", default=None,
                 help="gs://BUCKET/PREFIX for TPU workdirs (default: worker 0's disk)")
  a = p.parse_args(argv)
  sweep = load_sweep(a.sweep_file)
  if a.metric:
    sweep = dataclasses.replace(sweep, metric=a.metric)
  stem = Path(a.sweep_file).stem
  out = Path(a.out or f"runs/sweeps/{stem}")
  command_fn = local_commands
  if a.tpu:
    if not a.zone:
      p.error("--tpu needs --zone")
    if a.parallel != 1:
      p.error("--tpu runs one job at a time on the slice; drop --parallel")
    command_fn = tpu_commands(a.tpu, a.zone, a.project, a.bucket.rstrip("/") + f"/{stem}"
                              if a.bucket else f"runs/sweeps/{stem}")
  status, rows = run_sweep(sweep, out, command_fn, a.parallel, a.dry_run)
  if rows:
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
  failed = [n for n, s in status.items() if s == "failed"]
  if failed:
    print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their sweep.log)", file=sys.stderr)
  return 1 if failed else 0
