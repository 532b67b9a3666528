"""A sweep's results: each run's final training metrics and eval numbers gathered into
`OUT/results.csv` (everything), `OUT/results.md` (overrides and the main results) and
`OUT/results.png` (a metric per run, training curves).

Training metrics: the final value of each key over the rows of a run's last
phase (`train.metrics.read_metrics`); eval: the numeric leaves of eval.json as
columns 'eval/<path>'. Runs are `cli.sweep.Run`s (name, overrides, workdir,
finished).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

from realm_jax.evaluation.report import markdown_table
from realm_jax.train.metrics import read_metrics


def format_value(value: Any) -> str:
  return value if isinstance(value, str) else repr(value)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def final_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Latest value of every key over the lines of the last phase (all lines if unphased)."""
  if not history:
    return {}
  phase = history[-1].get("phase")
  out: dict[str, Any] = {}
  for line in history:
    if line.get("phase") == phase:
      out.update(_flatten(line))
  return out


def eval_metrics(path: Path) -> dict[str, Any]:
  """Numeric leaves of eval.json as 'eval/<path>' (a top-level 'results' level dropped)."""
  if not path.exists():
    return {}
  flat = _flatten(json.loads(path.read_text()))
  return {"eval/" + k.removeprefix("results/"): v for k, v in flat.items() if _is_number(v)}


def gather(runs: Sequence[Any], status: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
  """One row per run: name, status, overrides, final training metrics, eval metrics."""
  rows = []
  for run in runs:
    row: dict[str, Any] = {"run": run.name,
                           "status": (status or {}).get(run.name, "done" if run.finished else "missing")}
    row.update({k: v if _is_number(v) else format_value(v) for k, v in run.overrides.items()})
    row.update(final_metrics(read_metrics(run.workdir)))
    row.update(eval_metrics(run.workdir / "eval.json"))
    rows.append(row)
  return rows


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  return list(dict.fromkeys(k for r in rows for k in r))


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
    writer.writeheader()
    writer.writerows(rows)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pick_metric(rows: Sequence[Mapping[str, Any]], preferred: str | None = None) -> str | None:
  cols = columns(rows)
  if preferred:
    if preferred not in cols:
      raise KeyError(f"metric {preferred!r} is not a result column; columns: {cols}")
    return preferred
  numeric = [c for c in cols if c not in ("run", "step") and any(_is_number(r.get(c)) for r in rows)]
  evals = sorted((c for c in numeric if c.startswith("eval/")),  # stable: file order within ties
                 key=lambda c: ("final" not in c, "accuracy" not in c))
  return (evals or numeric or [None])[0]


def summary_columns(rows: Sequence[Mapping[str, Any]], runs: Sequence[Any],
                    metric: str | None, limit: int = 8) -> list[str]:
  """The markdown table's columns: run, status, overrides, then up to `limit` results."""
  keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
  cols = columns(rows)
  results = [c for c in cols if c.startswith("eval/")] or [
      c for c in cols if c not in keys and c not in ("run", "status") and
      any(_is_number(r.get(c)) for r in rows)]
  picked = ([metric] if metric else []) + [c for c in results if c != metric]
  return ["run", "status", *keys, *picked[:limit]]


def plot(rows: Sequence[Mapping[str, Any]], runs: Sequence[Any], metric: str | None,
         path: Path) -> None:
  """Left: `metric` per run. Right: that metric's (or the first) training curve per run."""
  fig = Figure(figsize=(12, 4.5))
  ax_bar, ax_curve = fig.subplots(1, 2)
  values = [r.get(metric) if metric else None for r in rows]
  ax_bar.bar(range(len(rows)), [v if _is_number(v) else 0.0 for v in values])
  ax_bar.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=30, ha="right", fontsize=8)
  ax_bar.set_ylabel(metric or "(no metric)")
  ax_bar.set_title(f"final {metric}" if metric else "no numeric results")
  curve_key = None
  for run in runs:
    history = read_metrics(run.workdir)
    phase = history[-1].get("phase") if history else None
    history = [_flatten(h) for h in history if h.get("phase") == phase]
    if curve_key is None and history:
      keys = [k for k in history[-1] if k != "step" and _is_number(history[-1][k])]
      curve_key = metric if metric in keys else (keys or [None])[0]
    pts = [(h["step"], h[curve_key]) for h in history if curve_key and "step" in h
           and _is_number(h.get(curve_key))]
    if pts:
      ax_curve.plot(*zip(*pts), label=run.name)
  ax_curve.set_xlabel("step")
  ax_curve.set_ylabel(curve_key or "")
  ax_curve.set_title(f"training curve: {curve_key}" if curve_key else "no training metrics")
  if ax_curve.lines:
    ax_curve.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def summarize(sweep: Any, runs: Sequence[Any], out: Path,
              status: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
  """Write results.csv / results.md / results.png under `out`; return the rows."""
  rows = gather(runs, status)
  metric = pick_metric(rows, sweep.metric)
  write_csv(rows, out / "results.csv")
  cols = summary_columns(rows, runs, metric)
  (out / "results.md").write_text(markdown_table(cols, [[r.get(c) for c in cols] for r in rows]))
  plot(rows, runs, metric, out / "results.png")
  return rows


