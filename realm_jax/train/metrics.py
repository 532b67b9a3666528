"""Metrics IO: JSONL + TensorBoard event files + a live progress bar.

Only process 0 writes. Every logged value is checked: NaN or Inf stops the run
with the step and the metric named (`NonFiniteError`), before anything is
checkpointed.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
  """A loss, gradient or metric became NaN/Inf."""


def to_host(metrics: dict[str, Any]) -> dict[str, float]:
  out = {}
  for k, v in jax.device_get(metrics).items():
    a = np.asarray(v)
    out[k] = float(a) if a.size == 1 else float(a.mean())
  return out


def check_finite(metrics: dict[str, float], step: int, phase: str,
                 keys: tuple[str, ...] = ("loss", "grad_norm")) -> None:
  """Raises NonFiniteError naming the step and the first non-finite metric of `keys`.

  Only `keys` are checked: some metrics are legitimately NaN (e.g. accuracy
  over prompts without routes when every prompt carried routes).
  """
  for k in keys:
    if k in metrics and not math.isfinite(metrics[k]):
      raise NonFiniteError(f"{phase} step {step}: metric {k!r} is {metrics[k]}; stopping "
                           "(the last checkpoint on disk predates this step)")


class MetricsWriter:
  """Appends {'step', 'phase', **metrics} lines to workdir/metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # optional dependency
        self._tb = None

  def write(self, phase: str, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"phase": phase, "step": int(step), **metrics}) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if math.isfinite(v):  # NaN marks "not measured this step" (kept in the JSONL)
          self._tb.add_scalar(f"{phase}/{k}", v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str, phase: str | None = None) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        row = json.loads(line)
        if phase is None or row.get("phase") == phase:
          rows.append(row)
  return rows


def progress(total: int, initial: int, desc: str):
  """A tqdm bar (stderr) on process 0; a no-op object elsewhere."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
              disable=jax.process_index() != 0, mininterval=1.0)


def report_memory(phase: str, jitted: Any, args: tuple, writer: MetricsWriter,
                  fraction: float = 0.9, device_memory: int | None = None) -> dict[str, int]:
  """Compiles `jitted` for `args` (ShapeDtypeStructs: no allocation), prints and logs the
  per-device memory estimate, and stops before training when it cannot fit."""
  from realm_jax.train import sharding
  est = sharding.compiled_memory_estimate(jitted, *args)
  if jax.process_index() == 0:
    print(f"[realm-jax] {phase}: compiled step needs {est['total_bytes'] / 2**20:.1f} MiB per device "
          f"(arguments {est['argument_bytes'] / 2**20:.1f}, temporaries {est['temp_bytes'] / 2**20:.1f}, "
          f"outputs {est['output_bytes'] / 2**20:.1f}, donated {est['alias_bytes'] / 2**20:.1f} MiB)")
  writer.write(f"{phase}_memory", 0, {k: float(v) for k, v in est.items()})
  sharding.check_fits(est, device_memory, fraction)
  return est
