"""The training-loop skeleton every stage (base, SFT, RFT rounds, RL) runs on.

A stage hands `run_loop` its train state and a `Stepper`: the stage-specific
step `(state, step) -> (state, metrics)` plus the host-side state the step
depends on (data-iterator position; for RL the EAAI clock and accuracy EMA),
which the stepper writes into and reads back from each checkpoint's JSON.
The skeleton owns everything else, once:

  restore    the phase's newest readable checkpoint (`checkpoint.Checkpointer`),
             onto the stage's abstract sharded state; `metrics.rewind` drops the
             rows a stopped run logged after it, so each step has one row;
  step       `stepper(state, step)`; with `LoopConfig.pipelined` the metrics of
             step n are read after step n+1 is dispatched (device arrays);
  check      the `finite_keys` metrics, then the params before every save
             (`NonFiniteError` names the phase, step and metric);
  log        metrics.jsonl + TensorBoard + the progress bar;
  save       `save_due(done, every, total)`: every `checkpoint_every` steps
             (0: never periodically), at the last step and on a stop, keeping
             `keep_checkpoints`;
  stop       SIGTERM / SIGINT (`preemption`): the step in flight finishes, is
             saved, and `Preempted` exits with the signal's status.

Conventions: `step` is the 0-based index of the update being run; checkpoint
`done` holds the state after `done` updates, so a resume from it runs step
`done` next. Per-step randomness is keyed by (seed, step) inside the steppers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from realm_jax.train import checkpoint, metrics as metrics_lib, preemption


class Stepper(Protocol):
  """A stage's step: `__call__` runs update `step`; the rest is its checkpointed host state."""

  def __call__(self, state: Any, step: int) -> tuple[Any, dict[str, Any]]: ...

  def host_state(self) -> dict[str, Any]:
    """JSON-serialisable state the next step depends on (saved with the train state)."""
    ...

  def load_host_state(self, extra: dict[str, Any]) -> None:
    """Restores what `host_state` returned (the checkpoint's JSON, `step` included)."""
    ...


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  phase: str
  steps: int
  checkpoint_every: int = 100  # 0: save only at the end and on a stop
  keep_checkpoints: int | None = 2  # None keeps all
  finite_keys: tuple[str, ...] = ("loss", "grad_norm")
  postfix: tuple[str, ...] = ("loss",)  # metrics shown on the progress bar
  best_metric: str | None = None  # also keep the best checkpoint by this metric (max)
  pipelined: bool = True  # read step n's metrics after dispatching step n + 1

  def __post_init__(self):
    if self.checkpoint_every < 0:
      raise ValueError(f"checkpoint_every={self.checkpoint_every}; use 0 to save only at the end")
    if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
      raise ValueError(f"keep_checkpoints={self.keep_checkpoints}; keep at least 1")


def save_due(done: int, every: int, total: int) -> bool:
  """Save after `done` updates? At done = every, 2*every, ... and at done = total; never at 0.

  `every <= 0` disables the periodic part (the last step still saves).
  """
  return done == total or (every > 0 and done > 0 and done % every == 0)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.isfinite(x).all(), tree),
                         jnp.bool_(True))


def check_finite_params(params: Any, step: int, phase: str) -> None:
  """Raises NonFiniteError if the update of `step` left NaN/Inf in `params`.

  The loop calls it before each checkpoint: a step's loss and grad norm are
  computed before its update, so an overflowing update shows only here.
  """
  if not bool(_all_finite(params)):
    raise metrics_lib.NonFiniteError(
        f"{phase} step {step}: the updated params hold NaN/Inf; stopping (the last checkpoint "
        "on disk predates this step)")


def restore(cfg: LoopConfig, ckpt: checkpoint.Checkpointer, state: Any, abstract_state: Any,
            stepper: Stepper) -> tuple[Any, int]:
  """(state, first step to run): the newest readable checkpoint's, else (state, 0)."""
  if ckpt.latest_step() is None:
    return state, 0
  state, extra = ckpt.restore(abstract_state=abstract_state)
  stepper.load_host_state(extra)
  start = int(extra["step"])
  if jax.process_index() == 0:
    print(f"[realm-jax] {cfg.phase}: resuming from checkpoint step {start}", flush=True)
  return state, start


class _Log:
  """Host side of the metrics: finite check, metrics.jsonl, progress bar; keeps the last row."""

  def __init__(self, cfg: LoopConfig, writer: metrics_lib.MetricsWriter, bar):
    self.cfg, self.writer, self.bar = cfg, writer, bar
    self.last: dict[str, float] = {}

  def __call__(self, step: int, m: dict[str, Any]) -> None:
    host = metrics_lib.to_host(m)
    metrics_lib.check_finite(host, step, self.cfg.phase, self.cfg.finite_keys)
    self.writer.write(self.cfg.phase, step, host)
    self.bar.update(step + 1 - self.bar.n)
    self.bar.set_postfix({k: f"{host[k]:.3f}" for k in self.cfg.postfix if k in host})
    self.last = host


def run_loop(cfg: LoopConfig, workdir: str, writer: metrics_lib.MetricsWriter, state: Any,
             abstract_state: Any, stepper: Stepper) -> Any:
  """Runs (or resumes) `cfg.phase` to `cfg.steps` updates; returns the final train state."""
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, cfg.phase),
                                 keep_last=cfg.keep_checkpoints, best_metric=cfg.best_metric)
  try:  # waits for pending saves, on errors too: every save holds finite pre-failure state
    state, start = restore(cfg, ckpt, state, abstract_state, stepper)
    writer.rewind(cfg.phase, start)
    if start < cfg.steps:
      state = _steps(cfg, ckpt, writer, state, start, stepper)
  finally:
    ckpt.close()
  return state


def _steps(cfg: LoopConfig, ckpt: checkpoint.Checkpointer, writer: metrics_lib.MetricsWriter,
           state: Any, start: int, stepper: Stepper) -> Any:
  bar = metrics_lib.progress(cfg.steps, start, cfg.phase)
  log = _Log(cfg, writer, bar)
  try:
    return _step_range(cfg, ckpt, log, state, start, stepper)
  finally:
    bar.close()


def _step_range(cfg: LoopConfig, ckpt: checkpoint.Checkpointer, log: _Log, state: Any,
                start: int, stepper: Stepper) -> Any:
  pending = None
  for step in range(start, cfg.steps):
    state, m = stepper(state, step)
    if pending is not None:
      log(*pending)
    pending = (step, m)
    done, stop = step + 1, preemption.requested()
    if not cfg.pipelined or stop or save_due(done, cfg.checkpoint_every, cfg.steps):
      log(*pending)  # NaN stops here, before saving
      pending = None
    if stop or save_due(done, cfg.checkpoint_every, cfg.steps):
      check_finite_params(state.params, step, cfg.phase)
      best = None if cfg.best_metric is None else {cfg.best_metric: log.last[cfg.best_metric]}
      ckpt.save(done, state, extra={**stepper.host_state(), "step": done}, metrics=best,
                force=True)
    if stop:
      if jax.process_index() == 0:
        print(f"[realm-jax] {cfg.phase}: stopped by a signal after step {done} (saved); rerun "
              "the same command to resume", flush=True)
      raise preemption.Preempted(f"{cfg.phase} step {done}", preemption.exit_status())
  return state
