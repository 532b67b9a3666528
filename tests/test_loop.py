"""The loop skeleton alone, with a fake step: resume == uninterrupted, stops save, retention.

The fake stage: params w (a float32 vector), a host-side data iterator over a
fixed list (its position is the checkpointed host state), and the update
w <- 0.5 * w + data[pos] + step, which depends on everything a checkpoint must
hold (params, iterator position, step). Its loss is sum(w).
"""

import dataclasses
import json
import os
import signal
import struct

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.train import checkpoint, loop, metrics, preemption

DATA = [3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0, 6.0]
STEPS = 6


@flax.struct.dataclass
class State:
  params: jax.Array


class Crash(RuntimeError):
  pass


class FakeStepper:
  def __init__(self, crash_at=None, signal_at=None, signum=signal.SIGTERM):
    self.pos, self.crash_at, self.signal_at, self.signum = 0, crash_at, signal_at, signum

  def __call__(self, state, step):
    if step == self.crash_at:
      raise Crash(f"crash in step {step}")
    if step == self.signal_at:  # the signal arrives while the step runs
      preemption.request(self.signum)
    w = 0.5 * state.params + DATA[self.pos % len(DATA)] + step
    self.pos += 1
    return State(params=w), {"loss": jnp.sum(w), "pos": self.pos}

  def host_state(self):
    return {"pos": self.pos}

  def load_host_state(self, extra):
    self.pos = extra["pos"]


def _init():
  return State(params=jnp.zeros((4,), jnp.float32))


def _by_hand(steps=STEPS):
  w = np.zeros(4, np.float32)
  for step in range(steps):
    w = np.float32(0.5) * w + np.float32(DATA[step] + step)
  return w


def _run(wd, stepper, **kw):
  cfg = loop.LoopConfig(phase="fake", steps=STEPS, **kw)
  writer = metrics.MetricsWriter(str(wd))
  try:
    state = loop.run_loop(cfg, str(wd), writer, _init(), jax.eval_shape(_init), stepper)
  finally:
    writer.close()
  return np.asarray(state.params)


def _rows(wd):
  return [r for r in metrics.read_metrics(str(wd), "fake")]


@pytest.fixture(autouse=True)
def _no_pending_signal():
  preemption.reset()
  yield
  preemption.reset()


@pytest.mark.parametrize("done,every,total,expected", [
    (0, 10, 100, False),   # never at 0
    (1, 10, 100, False),
    (9, 10, 100, False),
    (10, 10, 100, True),
    (20, 10, 100, True),
    (25, 10, 25, True),    # the last step saves off-period
    (99, 10, 100, False),
    (100, 10, 100, True),
    (7, 0, 10, False),     # every=0 disables the periodic part ...
    (10, 0, 10, True),     # ... but not the last step
    (1, 1, 5, True),
])
def test_save_due_boundaries(done, every, total, expected):
  assert loop.save_due(done, every, total) is expected


def test_uninterrupted_matches_the_update_by_hand(tmp_path):
  w = _run(tmp_path, FakeStepper(), checkpoint_every=2, keep_checkpoints=None)
  np.testing.assert_array_equal(w, _by_hand())
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == list(range(STEPS))
  assert [r["pos"] for r in rows] == list(range(1, STEPS + 1))
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(tmp_path, "fake")) == [2, 4, 6]


@pytest.mark.parametrize("pipelined", [True, False])
def test_resume_after_a_crash_equals_uninterrupted_with_one_row_per_step(tmp_path, pipelined):
  ref = _run(tmp_path / "ref", FakeStepper(), checkpoint_every=2, pipelined=pipelined)
  wd = tmp_path / "crashed"
  with pytest.raises(Crash):
    _run(wd, FakeStepper(crash_at=3), checkpoint_every=2, pipelined=pipelined)
  # Unpipelined, step 2 was logged after the checkpoint of 2 steps: the resume redoes it.
  assert [r["step"] for r in _rows(wd)] == ([0, 1] if pipelined else [0, 1, 2])
  w = _run(wd, FakeStepper(), checkpoint_every=2, pipelined=pipelined)
  np.testing.assert_array_equal(w, ref)
  assert _rows(wd) == _rows(tmp_path / "ref")  # each step once, values as uninterrupted


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_in_flight_and_exits_with_its_status(tmp_path, signum, status):
  ref = _run(tmp_path / "ref", FakeStepper(), checkpoint_every=0)
  wd = tmp_path / "stopped"
  with pytest.raises(preemption.Preempted) as stop:
    _run(wd, FakeStepper(signal_at=2, signum=signum), checkpoint_every=0)
  assert stop.value.code == status and stop.value.where == "fake step 3"
  # checkpoint_every=0 saves nothing periodically: the only checkpoint is the stop's.
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(wd, "fake")) == [3]
  assert [r["step"] for r in _rows(wd)] == [0, 1, 2]
  preemption.reset()
  w = _run(wd, FakeStepper(), checkpoint_every=0)
  np.testing.assert_array_equal(w, ref)
  assert _rows(wd) == _rows(tmp_path / "ref")
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(wd, "fake")) == [3, 6]


def test_keep_checkpoints_and_a_finished_phase_runs_no_step(tmp_path):
  _run(tmp_path, FakeStepper(), checkpoint_every=1, keep_checkpoints=3)
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(tmp_path, "fake")) == [4, 5, 6]
  w = _run(tmp_path, FakeStepper(crash_at=0), checkpoint_every=1, keep_checkpoints=3)
  np.testing.assert_array_equal(w, _by_hand())
  assert [r["step"] for r in _rows(tmp_path)] == list(range(STEPS))


def test_non_finite_params_are_never_saved(tmp_path):
  class Overflow(FakeStepper):
    def __call__(self, state, step):
      state, m = super().__call__(state, step)
      if step == 2:  # finite metrics, Inf params: only the params check catches it
        state = State(params=state.params.at[0].set(jnp.inf))
      return state, m

  with pytest.raises(metrics.NonFiniteError, match="fake step 2: the updated params hold"):
    _run(tmp_path, Overflow(), checkpoint_every=1)
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(tmp_path, "fake")) == [1, 2]


def test_bad_loop_config_is_refused():
  with pytest.raises(ValueError, match="checkpoint_every=-1"):
    loop.LoopConfig(phase="x", steps=1, checkpoint_every=-1)
  with pytest.raises(ValueError, match="keep_checkpoints=0"):
    loop.LoopConfig(phase="x", steps=1, keep_checkpoints=0)


# ---------------------------------------------------------------------------
# TensorBoard: events as TensorBoard shows them (its purge rule applied).


def _records(path):
  """The payloads of a TFRecord file: [len u64][crc u32][data][crc u32] each (CRCs unchecked)."""
  with open(path, "rb") as f:
    blob = f.read()
  out, i = [], 0
  while i + 12 <= len(blob):
    (n,) = struct.unpack("<Q", blob[i:i + 8])
    if i + 12 + n + 4 > len(blob):  # the tail a killed writer left half-written
      break
    out.append(blob[i + 12:i + 12 + n])
    i += 12 + n + 4
  return out


def _shown_steps(logdir):
  """{tag: [step, ...]} as TensorBoard shows a run directory: files in name order; a
  SessionLog START at step s hides every event read before it with step >= s."""
  from tensorboardX.proto import event_pb2
  events = []
  for name in sorted(os.listdir(logdir)):
    for payload in _records(os.path.join(logdir, name)):
      e = event_pb2.Event()
      e.ParseFromString(payload)
      if e.HasField("session_log") and e.session_log.status == e.session_log.START:
        events = [x for x in events if x[1] < e.step]
      for v in e.summary.value:
        events.append((v.tag, e.step))
  shown = {}
  for tag, step in events:
    shown.setdefault(tag, []).append(step)
  return shown


def test_tensorboard_shows_one_event_per_step_after_a_resume(tmp_path):
  with pytest.raises(Crash):
    _run(tmp_path, FakeStepper(crash_at=3), checkpoint_every=2, pipelined=False)
  _run(tmp_path, FakeStepper(), checkpoint_every=2, pipelined=False)
  shown = _shown_steps(tmp_path / "tb" / "fake")
  assert shown["fake/loss"] == list(range(STEPS)), shown
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == list(range(STEPS))


def test_dynamic_sampling_draws_fresh_prompts_from_the_run_stream():
  from realm_jax.rl import stage
  batches = iter([[1, 2], [3, 4], [5, 6]])
  assert stage._draw(batches, 3) == [1, 2, 3]  # whole batches, the last one cut
  assert stage._draw(batches, 2) == [5, 6]     # the stream goes on where it stopped


# ---------------------------------------------------------------------------
# Validation, best checkpoint, plateau stop: a scripted validation accuracy.


def _by_hand_mod(steps):
  w = np.zeros(4, np.float32)
  for step in range(steps):
    w = np.float32(0.5) * w + np.float32(DATA[step % len(DATA)] + step)
  return w


def _run_valid(wd, script, steps=20, crash_at=None, signal_at=None, **kw):
  """The fake stage validated every `eval_every` updates: evaluation i (1-based, at
  i * eval_every updates done) scores script[i - 1] (a dict: script[updates done]).
  Returns (final params, the updates done at each validate call)."""
  stepper, calls = FakeStepper(crash_at=crash_at, signal_at=signal_at), []
  every = kw.setdefault("eval_every", 2)

  def validate(params):
    calls.append(stepper.pos)  # the updates done: the stepper's checkpointed position
    i = stepper.pos if isinstance(script, dict) else stepper.pos // every - 1
    return {"valid_accuracy": script[i]}
  cfg = loop.LoopConfig(phase="fake", steps=steps, best_metric="valid_accuracy", **kw)
  writer = metrics.MetricsWriter(str(wd))
  try:
    state = loop.run_loop(cfg, str(wd), writer, _init(), jax.eval_shape(_init), stepper, validate)
  finally:
    writer.close()
  return np.asarray(state.params), calls


def _valid_rows(wd):
  return [(r["step"], r["valid_accuracy"]) for r in _rows(wd) if "valid_accuracy" in r]


PLATEAU = [0.1, 0.3, 0.3, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]


@pytest.mark.parametrize("select", ["best", "last"])
def test_a_plateau_stops_after_patience_validations_and_keeps_the_best(tmp_path, select):
  # eval_every=2, patience=2: 0.1 (2 done, best), 0.3 (4, best), 0.3 (6, 1 without gain),
  # 0.3 (8, 2 without gain): stop after 8 of the 20 updates; the best is the checkpoint of 4
  # (the earliest of equals).
  w, calls = _run_valid(tmp_path, PLATEAU, patience=2, select=select, keep_checkpoints=1)
  assert calls == [2, 4, 6, 8]
  assert [r["step"] for r in _rows(tmp_path)] == list(range(8))
  assert _valid_rows(tmp_path) == [(1, 0.1), (3, 0.3), (5, 0.3), (7, 0.3)]
  np.testing.assert_array_equal(w, _by_hand_mod(4 if select == "best" else 8))
  # keep_checkpoints=1 keeps the latest, and the best beside it.
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(tmp_path, "fake")) == [4, 8]


def test_min_delta_ignores_small_gains_and_without_patience_all_steps_run(tmp_path):
  script = [0.1, 0.3, 0.35, 0.36, 0.36, 0.36, 0.36, 0.36]
  # min_delta=0.1: 0.35 and 0.36 gain < 0.1 over 0.3 -> stop after 8 updates, best = 4.
  w, calls = _run_valid(tmp_path / "delta", script, patience=2, min_delta=0.1, select="best")
  assert calls == [2, 4, 6, 8]
  np.testing.assert_array_equal(w, _by_hand_mod(4))
  # 0.3 - 0.1 is 0.19999999999999998 in floats: a gain of exactly min_delta=0.2 still counts.
  w, calls = _run_valid(tmp_path / "exact", [0.1, 0.3, 0.3, 0.3, 0.3], steps=10, patience=3,
                        min_delta=0.2, select="best")
  assert calls == [2, 4, 6, 8, 10] and [r["step"] for r in _rows(tmp_path / "exact")][-1] == 9
  np.testing.assert_array_equal(w, _by_hand_mod(4))
  # min_delta=0: every strict gain counts; 0.36 at 8 is the best; ties after it: stop at 12.
  w, calls = _run_valid(tmp_path / "zero", script, patience=2, select="best")
  assert calls == [2, 4, 6, 8, 10, 12]
  np.testing.assert_array_equal(w, _by_hand_mod(8))
  # patience=0: no early stop; the last params unless select=best.
  w, calls = _run_valid(tmp_path / "off", script[:5], steps=10, select="last")
  assert calls == [2, 4, 6, 8, 10] and [r["step"] for r in _rows(tmp_path / "off")] == list(
      range(10))
  np.testing.assert_array_equal(w, _by_hand_mod(10))


def test_validation_runs_at_the_last_step_too_and_rows_are_saved(tmp_path):
  # 7 updates, eval_every=3: validations at 3, 6 and 7 (the last); each one is a checkpoint.
  w, calls = _run_valid(tmp_path, {3: 0.2, 6: 0.1, 7: 0.4}, steps=7, eval_every=3,
                        checkpoint_every=0,
                        keep_checkpoints=None)
  assert calls == [3, 6, 7]
  assert _valid_rows(tmp_path) == [(2, 0.2), (5, 0.1), (6, 0.4)]
  assert checkpoint.finalized_steps(checkpoint.checkpoint_dir(tmp_path, "fake")) == [3, 6, 7]
  np.testing.assert_array_equal(w, _by_hand_mod(7))  # select=last by default


@pytest.mark.parametrize("crash_at", [5, 6, 7])
def test_a_resume_mid_plateau_stops_where_the_uninterrupted_run_stops(tmp_path, crash_at):
  ref, _ = _run_valid(tmp_path / "ref", PLATEAU, patience=2, select="best")
  wd = tmp_path / "crashed"
  with pytest.raises(Crash):
    _run_valid(wd, PLATEAU, patience=2, select="best", crash_at=crash_at, checkpoint_every=100)
  # The checkpoint of 6 updates holds one validation without a gain (0.3 after 0.3); a resume
  # that forgot it would stop at 10 instead of 8.
  w, calls = _run_valid(wd, PLATEAU, patience=2, select="best", checkpoint_every=100)
  assert calls == ([6, 8] if crash_at == 5 else [8])
  np.testing.assert_array_equal(w, ref)
  np.testing.assert_array_equal(w, _by_hand_mod(4))
  assert _rows(wd) == _rows(tmp_path / "ref")


def test_a_stopped_phase_reruns_no_step_and_still_ends_with_the_best(tmp_path):
  _run_valid(tmp_path, PLATEAU, patience=2, select="best")
  # A rerun (e.g. killed before the stage's params were written) restores the stop's
  # checkpoint, sees the plateau and runs nothing: crash_at=0 would raise.
  w, calls = _run_valid(tmp_path, PLATEAU, patience=2, select="best", crash_at=0)
  assert calls == [] and [r["step"] for r in _rows(tmp_path)] == list(range(8))
  np.testing.assert_array_equal(w, _by_hand_mod(4))


def test_a_signal_mid_plateau_saves_and_the_resume_stops_at_the_same_step(tmp_path):
  with pytest.raises(preemption.Preempted):
    _run_valid(tmp_path, PLATEAU, patience=2, select="best", signal_at=4)  # saved at 5
  preemption.reset()
  w, calls = _run_valid(tmp_path, PLATEAU, patience=2, select="best")
  assert calls == [6, 8]  # the stop's save at 5 updates is no validation
  np.testing.assert_array_equal(w, _by_hand_mod(4))
  assert _valid_rows(tmp_path) == [(1, 0.1), (3, 0.3), (5, 0.3), (7, 0.3)]


def test_best_tracks_gains_with_patience_by_hand():
  best = loop.Best()
  ranks = [best.observe(v, done, 0.0) for v, done in
           [(None, 1), (0.1, 2), (float("nan"), 3), (0.3, 4), (0.3, 6), (0.2, 8), (0.4, 10)]]
  assert ranks == [0, 1, 0, 2, 0, 0, 3]  # unmeasured and NaN are no measurements
  assert (best.value, best.step, best.since, best.gains) == (0.4, 10, 0, 3)
  best.observe(0.4, 12, 0.0)
  assert best.since == 1 and not best.plateau(2) and best.plateau(1) and not best.plateau(0)
  restored = loop.Best()
  restored.load(json.loads(json.dumps(dataclasses.asdict(best))))
  assert restored == best


def test_bad_convergence_settings_are_refused():
  with pytest.raises(ValueError, match="x.patience=2 counts validations: set x.eval_every"):
    loop.LoopConfig(phase="x", steps=1, patience=2, best_metric="m")
  with pytest.raises(ValueError, match="x.select='top'; choose best or last"):
    loop.LoopConfig(phase="x", steps=1, select="top")
  with pytest.raises(ValueError, match="x.min_delta=-0.1 must be >= 0"):
    loop.LoopConfig(phase="x", steps=1, min_delta=-0.1)
  with pytest.raises(ValueError, match="need a best_metric"):
    loop.LoopConfig(phase="x", steps=1, select="best")
  with pytest.raises(ValueError, match="eval_every=2 needs a validate function"):
    loop.run_loop(loop.LoopConfig(phase="x", steps=1, eval_every=2), "/nonexistent", None,
                  None, None, None)
