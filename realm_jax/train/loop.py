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
  validate   with `eval_every` N > 0, the stage's `validate(params) -> metrics`
             after N, 2N, ... updates and after the last; its metrics join that
             step's row, and the step is saved;
  save       `save_due(done, every, total)`: every `checkpoint_every` steps
             (0: never periodically), at the last step, at a validation and on a
             stop, keeping `keep_checkpoints`, plus the best (`Best`) by `best_metric`;
  plateau    with `patience` p > 0, p measurements of `best_metric` in a row without
             a gain of `min_delta` stop the phase early (saved; a resume of a stopped
             phase runs no step); `select='best'` returns the best checkpoint's state;
  stop       SIGTERM / SIGINT (`preemption`): the step in flight finishes, is
             saved, and `Preempted` exits with the signal's status.

Conventions: `step` is the 0-based index of the update being run; checkpoint
`done` holds the state after `done` updates, so a resume from it runs step
`done` next. Per-step randomness is keyed by (seed, step) inside the steppers.
The loop's own host state (`Best`: best value and step, measurements since the
last gain) is saved with every checkpoint under `extra["loop"]`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

from realm_jax.train import checkpoint, metrics as metrics_lib, preemption
from realm_jax.train import step as train_step
from realm_jax.train.config import check_convergence


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
  eval_every: int = 0  # validate after every N updates and after the last (0: never)
  patience: int = 0  # stop after this many measurements without a min_delta gain (0: never)
  min_delta: float = 0.0  # the smallest gain of best_metric that counts as an improvement
  select: str = "last"  # 'best': the phase ends with the best checkpoint's state

  def __post_init__(self):
    if self.checkpoint_every < 0:
      raise ValueError(f"checkpoint_every={self.checkpoint_every}; use 0 to save only at the end")
    if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
      raise ValueError(f"keep_checkpoints={self.keep_checkpoints}; keep at least 1")
    check_convergence(self, self.phase)
    if (self.patience or self.select == "best") and self.best_metric is None:
      raise ValueError(f"{self.phase}: patience and select='best' need a best_metric")


RANK = "best_rank"  # what the Checkpointer ranks saves by (see `Best.observe`)
TOLERANCE = 1e-9  # rounding slack in `min_delta` comparisons (accuracies are k/n)


@dataclasses.dataclass
class Best:
  """The best value of `best_metric` so far, where it was saved, and the plateau since.

  A measurement improves when it beats the best by more than 0 and by at least
  `min_delta`: only then do `value`/`step` move (the earliest checkpoint wins ties)
  and `since` restart at 0; otherwise `since` counts one more. The first finite
  measurement improves; NaN/Inf ones are not measurements.
  """
  value: float | None = None
  step: int | None = None  # updates done at the best checkpoint
  since: int = 0  # measurements since the last improvement
  gains: int = 0  # improvements so far

  def observe(self, value: float | None, done: int, min_delta: float) -> int:
    """Takes the measurement saved at `done` (None: not measured there); returns the save's
    rank for the Checkpointer: `gains` after an improvement, else 0, so its best-1 policy
    keeps exactly `step`."""
    if value is None or not math.isfinite(value):
      return 0
    if self.value is not None and not (value > self.value
                                       and value - self.value >= min_delta - TOLERANCE):
      self.since += 1
      return 0
    self.value, self.step, self.since, self.gains = float(value), done, 0, self.gains + 1
    return self.gains

  def load(self, saved: dict[str, Any] | None) -> None:
    """Back to what `dataclasses.asdict` saved (None: a checkpoint from before: fresh)."""
    fresh = Best(**(saved or {}))
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(fresh, f.name))

  def plateau(self, patience: int) -> bool:
    return patience > 0 and self.since >= patience


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
            stepper: Stepper, best: Best | None = None) -> tuple[Any, int]:
  """(state, first step to run): the newest readable checkpoint's, else (state, 0).

  Its host state goes back into `stepper`, the loop's into `best`."""
  if ckpt.latest_step() is None:
    return state, 0
  saved, extra = ckpt.restore(abstract_state=train_step.checkpointed(abstract_state))
  state = train_step.restored(saved, state)
  stepper.load_host_state(extra)
  if best is not None:
    best.load(extra.get("loop"))
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


Validate = Callable[[Any], dict[str, float]]
VALID_METRIC = "valid_accuracy"  # what the stages' `validate` returns and they select by


def convergence(cfg: Any, validating: bool) -> dict[str, Any]:
  """The `LoopConfig` fields for a stage config's eval_every/patience/min_delta/select: set
  when the stage validates, the plain fixed-steps loop (last params) otherwise."""
  if not (validating and cfg.eval_every):
    return {}
  return {"eval_every": cfg.eval_every, "patience": cfg.patience, "min_delta": cfg.min_delta,
          "select": cfg.select, "best_metric": VALID_METRIC}


def run_loop(cfg: LoopConfig, workdir: str, writer: metrics_lib.MetricsWriter, state: Any,
             abstract_state: Any, stepper: Stepper, validate: Validate | None = None) -> Any:
  """Runs (or resumes) `cfg.phase` to `cfg.steps` updates or a plateau; returns the final train
  state: the last one, or with `select='best'` the best checkpoint's (when one was measured).

  `validate(params) -> {name: float}` runs when `cfg.eval_every` says (required then)."""
  if cfg.eval_every and validate is None:
    raise ValueError(f"{cfg.phase}: eval_every={cfg.eval_every} needs a validate function")
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, cfg.phase),
                                 keep_last=cfg.keep_checkpoints,
                                 best_metric=None if cfg.best_metric is None else RANK)
  best = Best()
  try:  # waits for pending saves, on errors too: every save holds finite pre-failure state
    state, done = restore(cfg, ckpt, state, abstract_state, stepper, best)
    writer.rewind(cfg.phase, done)
    if done < cfg.steps and not best.plateau(cfg.patience):
      state, done = _steps(cfg, ckpt, writer, state, done, stepper, best, validate)
    if cfg.select == "best" and best.step is not None and best.step != done:
      if jax.process_index() == 0:
        print(f"[realm-jax] {cfg.phase}: ends with the best checkpoint, step {best.step} "
              f"({cfg.best_metric}={best.value:.4f})", flush=True)
      saved, _ = ckpt.restore(step=best.step,
                              abstract_state=train_step.checkpointed(abstract_state))
      state = train_step.restored(saved, state)
  finally:
    ckpt.close()
  return state


def _steps(cfg: LoopConfig, ckpt: checkpoint.Checkpointer, writer: metrics_lib.MetricsWriter,
           state: Any, start: int, stepper: Stepper, best: Best, validate: Validate | None
           ) -> tuple[Any, int]:
  bar = metrics_lib.progress(cfg.steps, start, cfg.phase)
  log = _Log(cfg, writer, bar)
  try:
    return _step_range(cfg, ckpt, log, state, start, stepper, best, validate)
  finally:
    bar.close()


def _step_range(cfg: LoopConfig, ckpt: checkpoint.Checkpointer, log: _Log, state: Any,
                start: int, stepper: Stepper, best: Best, validate: Validate | None
                ) -> tuple[Any, int]:
  pending, done = None, start
  for step in range(start, cfg.steps):
    state, m = stepper(state, step)
    if pending is not None:
      log(*pending)
    pending = (step, m)
    done, stop = step + 1, preemption.requested()
    measure = cfg.eval_every > 0 and save_due(done, cfg.eval_every, cfg.steps)
    if measure:  # before the next step: it donates this state's buffers
      pending = (step, {**m, **validate(state.params)})
    save = stop or measure or save_due(done, cfg.checkpoint_every, cfg.steps)
    if not cfg.pipelined or save:
      log(*pending)  # NaN stops here, before saving
      pending = None
    if save:
      check_finite_params(state.params, step, cfg.phase)
      # best_metric is measured at validations, or (none configured) at every save.
      value = log.last.get(cfg.best_metric) if measure or not cfg.eval_every else None
      _save(cfg, ckpt, state, done, stepper, best, value)
    if stop:
      if jax.process_index() == 0:
        print(f"[realm-jax] {cfg.phase}: stopped by a signal after step {done} (saved); rerun "
              "the same command to resume", flush=True)
      raise preemption.Preempted(f"{cfg.phase} step {done}", preemption.exit_status())
    if best.plateau(cfg.patience):
      if jax.process_index() == 0:
        print(f"[realm-jax] {cfg.phase}: stopped early after step {done}: {cfg.patience} "
              f"validations without a gain of {cfg.min_delta} in {cfg.best_metric} (best "
              f"{best.value:.4f} at step {best.step})", flush=True)
      break
  return state, done


def _save(cfg: LoopConfig, ckpt: checkpoint.Checkpointer, state: Any, done: int,
          stepper: Stepper, best: Best, value: float | None) -> None:
  """Checkpoint `done`, with the loop's state after this step's measurement `value` (if any)."""
  metrics = None
  if cfg.best_metric is not None:
    metrics = {RANK: best.observe(value, done, cfg.min_delta)}
    if value is not None and math.isfinite(value):
      metrics[cfg.best_metric] = value
  ckpt.save(done, train_step.checkpointed(state), extra={**stepper.host_state(), "step": done,
                                "loop": dataclasses.asdict(best)}, metrics=metrics, force=True)
