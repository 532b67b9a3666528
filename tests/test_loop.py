"""The loop skeleton alone, with a fake step: resume == uninterrupted, stops save, retention.

The fake stage: params w (a float32 vector), a host-side data iterator over a
fixed list (its position is the checkpointed host state), and the update
w <- 0.5 * w + data[pos] + step, which depends on everything a checkpoint must
hold (params, iterator position, step). Its loss is sum(w).
"""

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
