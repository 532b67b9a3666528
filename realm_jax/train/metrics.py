"""Metrics IO: JSONL + TensorBoard event files + a live progress bar.

Only process 0 writes. Every logged value is checked: NaN or Inf stops the run
with the step and the metric named (`NonFiniteError`), before anything is
checkpointed.

One row per (phase, step): a resumed phase first calls `rewind(phase, s)`,
which rewrites `metrics.jsonl` (atomically: a temporary file, then a rename)
keeping only that phase's rows with step < s, and reopens the phase's
TensorBoard writer (`tb/PHASE`, one event directory per phase) with
`purge_step=s`, so TensorBoard hides the events of steps >= s the stopped run
had written. Rows that describe a phase's set-up (memory estimate, teacher
statistics, RFT rounds) go through `write_once`, a rewind to the row's step
then a write, which replaces what an earlier start wrote there.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from realm_jax.train import sharding

FILENAME = "metrics.jsonl"


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


def _read_rows(path: str) -> list[dict]:
  """The JSON rows of `path` ([] when absent); a bad line raises ValueError naming file:line."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      try:
        if line.strip():
          rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not a JSON object ({e})") from e
  return rows


def read_metrics(workdir: str | os.PathLike, phase: str | None = None) -> list[dict]:
  """The rows of `workdir/metrics.jsonl` (of one phase when given), in file order."""
  rows = _read_rows(os.path.join(workdir, FILENAME))
  return [r for r in rows if phase is None or r.get("phase") == phase]


class MetricsWriter:
  """Appends {'step', 'phase', **metrics} lines to workdir/metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = workdir
    self.path = os.path.join(workdir, FILENAME)
    self._tb: dict[str, Any] = {}
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)

  def _tb_writer(self, phase: str, purge_step: int | None = None):
    if phase not in self._tb:
      try:
        from tensorboardX import SummaryWriter  # heavy import, only where something is logged
      except ImportError:
        self._tb[phase] = None
      else:
        # A unique file per writer: TensorBoard reads a directory's files in name order.
        self._tb[phase] = SummaryWriter(os.path.join(self.workdir, "tb", phase),
                                        purge_step=purge_step,
                                        filename_suffix=f".{time.time_ns()}")
    return self._tb[phase]

  def write(self, phase: str, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"phase": phase, "step": int(step), **metrics}) + "\n")
    tb = self._tb_writer(phase)
    if tb is not None:
      for k, v in metrics.items():
        if math.isfinite(v):  # NaN marks "not measured this step" (kept in the JSONL)
          tb.add_scalar(f"{phase}/{k}", v, step)

  def _keep(self, keep) -> None:
    rows = _read_rows(self.path)
    kept = [r for r in rows if keep(r)]
    if len(kept) == len(rows):
      return
    with open(self.path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(self.path + ".tmp", self.path)

  def rewind(self, phase: str, step: int) -> None:
    """Forget `phase`'s rows (and TensorBoard events) of steps >= `step`: a resume from `step`."""
    if not self.enabled:
      return
    self._keep(lambda r: r.get("phase") != phase or r["step"] < step)
    old = self._tb.pop(phase, None)
    if old is not None:
      old.close()
    self._tb_writer(phase, purge_step=step)

  def write_once(self, phase: str, step: int, metrics: dict[str, float]) -> None:
    """`write` after `rewind(phase, step)`: replaces what an earlier start wrote there."""
    self.rewind(phase, step)
    self.write(phase, step, metrics)

  def close(self) -> None:
    for tb in self._tb.values():
      if tb is not None:
        tb.flush()
        tb.close()
    self._tb = {}


def progress(total: int, initial: int, desc: str):
  """A tqdm bar (stderr) on process 0; a no-op object elsewhere."""
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
              disable=jax.process_index() != 0, mininterval=1.0)


def report_memory(phase: str, jitted: Any, args: tuple, writer: MetricsWriter,
                  fraction: float = 0.9, device_memory: int | None = None) -> dict[str, int]:
  """Compiles `jitted` for `args` (ShapeDtypeStructs: no allocation), prints and logs the
  per-device memory estimate, and stops before training when it cannot fit."""
  est = sharding.compiled_memory_estimate(jitted, *args)
  if jax.process_index() == 0:
    print(f"[realm-jax] {phase}: compiled step needs {est['total_bytes'] / 2**20:.1f} MiB per device "
          f"(arguments {est['argument_bytes'] / 2**20:.1f}, temporaries {est['temp_bytes'] / 2**20:.1f}, "
          f"outputs {est['output_bytes'] / 2**20:.1f}, donated {est['alias_bytes'] / 2**20:.1f} MiB)")
  writer.write_once(f"{phase}_memory", 0, {k: float(v) for k, v in est.items()})
  sharding.check_fits(est, device_memory, fraction)
  return est
