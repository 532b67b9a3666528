"""Checkpoints of a run: orbax manager, retention, corruption fallback, resume plan.

Layout: `WORKDIR/checkpoints/<step>/{state, extra}`. `state` is any pytree of
(possibly sharded, possibly multi-host) arrays, written by orbax's PyTree
handler (OCDBT + zarr, as `StandardSave` writes, but partial restore works);
`extra` is one JSON object (data-iterator state, EAAI clock, host rng,
reference-model id, config) written by process 0 only.

Conventions
- `step` counts completed optimizer updates (when to save is
  `train.loop.save_due`, a function of the step alone).
- Saves are asynchronous: the arrays are copied off the device before `save`
  returns (so the step may donate them), the files are written in the
  background; `wait()` blocks.
- Multi-host: every process calls `save`/`restore`/`wait` with the same
  arguments; orbax writes each host's shards and process 0 writes the JSON.
- Restore onto a different mesh by passing an abstract target: a tree of
  `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`.
- `restore(step=None)` takes the newest checkpoint that reads cleanly; an
  unreadable one (truncated/corrupted files) is skipped with a warning.
- Resume: each training stage keeps its own checkpoints (`checkpoint_dir`)
  and restarts from the newest one that reads cleanly; where a stage with none
  starts from is `train.initial_params` (another run's final params, then
  pretrained weights, then random init).
"""

from __future__ import annotations

import os
import json
import logging
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)

SUBDIR = "ckpt"
BEST_MODES = ("max", "min")


def checkpoint_dir(workdir: str | epath.PathLike, stage: str) -> epath.Path:
  """Where a run keeps one training stage's checkpoints: WORKDIR/ckpt/STAGE."""
  return epath.Path(workdir) / SUBDIR / stage


def _check_json(extra: dict[str, Any]) -> None:
  for key, value in extra.items():
    try:
      json.dumps(value)
    except (TypeError, ValueError) as e:
      raise TypeError(
          f"checkpoint extra[{key!r}] is not JSON-serialisable ({e}); store arrays in the state "
          f"pytree and bytes as str (e.g. .decode() or base64)") from e


def _default_device(abstract: Any) -> Any:
  """ShapeDtypeStructs without a sharding land on the first local device."""
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def fill(x):
    if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one)
    return x
  return jax.tree.map(fill, abstract)


class Checkpointer:
  """One run's checkpoints.

  Args:
    directory: the checkpoint directory (usually `checkpoint_dir(workdir, stage)`).
    keep_last: keep this many most recent checkpoints (None: all).
    best_metric: also keep the `keep_best` checkpoints best by this metric
      (a key of the `metrics` passed to `save`); None disables.
    best_mode: 'max' or 'min'.
    keep_best: how many best checkpoints to keep.
    async_save: write in a background thread.
  """

  def __init__(self, directory: str | epath.PathLike, *, keep_last: int | None = 3,
               best_metric: str | None = None, best_mode: str = "max", keep_best: int = 1,
               async_save: bool = True):
    if best_mode not in BEST_MODES:
      raise ValueError(f"Checkpointer best_mode={best_mode!r}; expected one of {BEST_MODES}")
    if keep_last is not None and keep_last < 1:
      raise ValueError(f"Checkpointer keep_last={keep_last}; keep at least 1 (None keeps all)")
    if best_metric is not None and keep_best < 1:
      raise ValueError(f"Checkpointer keep_best={keep_best}; must be >= 1 with best_metric")
    # orbax needs absolute paths; remote ones (gs://...) already are.
    directory = str(directory)
    self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    self.best_metric = best_metric
    self._unreadable: set[int] = set()  # steps `restore` skipped; `save` replaces them
    policies: list[ocm.PreservationPolicy] = [ocm.LatestN(n=keep_last)]
    best_fn = None
    if best_metric is not None:
      best_fn = lambda metrics: float(metrics[best_metric])
      policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=keep_best,
                                keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode, enable_async_checkpointing=async_save,
        preservation_policy=ocm.AnyPreservationPolicy(policies), create=True)
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_names=("state", "extra"))

  def save(self, step: int, state: Any, extra: dict[str, Any] | None = None,
           metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    """Start writing `state` and `extra` at `step`; False if that step exists already.

    A step `restore` found unreadable is deleted and written afresh.

    With `best_metric` set, `metrics` must carry it (a clear error otherwise).
    `force` is passed to orbax (saves even if its interval policy says no).
    """
    extra = dict(extra or {})
    _check_json(extra)
    if self.best_metric is not None and (metrics is None or self.best_metric not in metrics):
      raise KeyError(f"Checkpointer keeps the best by {self.best_metric!r} but save(step={step}) "
                     f"got metrics={sorted(metrics or {})}")
    if step in self._unreadable:
      log.warning("replacing unreadable checkpoint step %d in %s", step, self.directory)
      self._mgr.delete(step)
      self._unreadable.discard(step)
    if step in self._mgr.all_steps():
      log.info("checkpoint step %d already saved in %s; skipping", step, self.directory)
      return False
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), extra=ocp.args.JsonSave(extra))
    return bool(self._mgr.save(step, args=args, metrics=metrics, force=force))

  def wait(self) -> None:
    """Block until pending asynchronous saves are on disk."""
    self._mgr.wait_until_finished()

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def best_step(self) -> int | None:
    return self._mgr.best_step() if self.best_metric is not None else None

  def metrics(self, step: int) -> dict[str, float] | None:
    return self._mgr.metrics(step)

  def _restore_one(self, step: int, abstract_state: Any, partial: bool):
    if abstract_state is None:
      state_args = ocp.args.PyTreeRestore()
    else:
      abstract_state = _default_device(abstract_state)
      state_args = ocp.args.PyTreeRestore(
          item=abstract_state, partial_restore=partial,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
    out = self._mgr.restore(step, args=ocp.args.Composite(state=state_args,
                                                          extra=ocp.args.JsonRestore()))
    return out.state, dict(out.extra or {})

  def restore(self, step: int | None = None, abstract_state: Any = None,
              partial: bool = False) -> tuple[Any, dict[str, Any]]:
    """Return (state, extra) of `step`, or of the newest readable checkpoint.

    abstract_state: target tree of `jax.ShapeDtypeStruct` with shardings (or
      arrays); arrays land with those shardings whatever mesh wrote them.
      Structs without a sharding (plain `jax.eval_shape` output) land on the
      first local device, a single-process convenience. None restores the
      saved shardings, which only works on the same topology.
    partial: restore only the subtree present in `abstract_state` (e.g. just
      {'params': ...} out of a checkpoint that also holds optimizer state).

    An explicit `step` that fails raises; with `step=None` an unreadable
    checkpoint is skipped with a warning and the previous one is tried.
    """
    self.wait()
    if step is not None:
      return self._restore_one(step, abstract_state, partial)
    steps = sorted(self._mgr.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
    errors = []
    for s in steps:
      try:
        result = self._restore_one(s, abstract_state, partial)
      except Exception as e:  # noqa: BLE001 -- any read failure means "unreadable"
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
        self._unreadable.add(s)
        warnings.warn(f"checkpoint step {s} in {self.directory} is unreadable "
                      f"({type(e).__name__}: {str(e)[:200]}); trying an older one", stacklevel=2)
        continue
      if errors:
        log.warning("restored step %d after skipping unreadable checkpoints: %s", s, errors)
      return result
    raise RuntimeError(f"no readable checkpoint in {self.directory}:\n  " + "\n  ".join(errors))

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ----------------------------------------------------------------------------
# Resume precedence.

def finalized_steps(directory: str | epath.PathLike) -> list[int]:
  """Steps with a complete checkpoint under `directory` (temporaries excluded)."""
  d = epath.Path(directory)
  return sorted(ocp.step.checkpoint_steps(d)) if d.exists() else []
