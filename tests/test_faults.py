"""Fault tolerance of `realm-jax train`: kill -9, SIGTERM, SIGINT, truncated checkpoints, NaN,
bad rewards.

Every run is a subprocess of the CLI (one drives `train.run` with a patched
reward) on a micro model (one CPU device, one bucket per length so each
function compiles once), sharing a persistent compilation cache so that only
the first run of each shape pays for XLA. Independent runs go concurrently:
most of a micro run is single-threaded start-up and tracing.

Resume is checked against an uninterrupted run of the same command: on CPU
the per-step metrics of the resumed run must equal the reference's bitwise
(every metric except wall-clock ones: `time_*`, `*_per_s`). A checkpoint holds
everything a step depends on (train state, data-iterator position, EAAI clock,
accuracy EMA); per-step randomness is keyed by (seed, step). After any stop and
resume, metrics.jsonl and the TensorBoard events hold exactly one row per step.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from realm_jax.train import checkpoint, loop, metrics
from tests.test_loop import _shown_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests/test_train.py's micro model and stages, with a single length bucket each.
MICRO = [
    "model.tiny.num_layers=1", "model.tiny.d_model=32", "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1", "model.tiny.head_dim=16", "model.tiny.mlp_dim=64",
    "data.num_train=48", "data.num_eval=8", "base.steps=2", "base.batch_size=4",
    "rl.batch_prompts=2", "rl.group_size=2", "rl.max_new_tokens=12",
    "data.prompt_buckets=320", "data.sft_buckets=384",
]
RL_STEPS = 10
SFT_STEPS = 12
TIMEOUT = 600  # seconds a subprocess may take: the CI machine is small and shared
# A preempted run gets ~30 s between SIGTERM and SIGKILL on a TPU VM; the step
# in flight plus one checkpoint must fit in it.
PREEMPT_GRACE = 30


def _env(cache: str) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _train_cmd(experiment: str, workdir: str, overrides: list[str]) -> list[str]:
  return [sys.executable, "-m", "realm_jax", "train", experiment, "--workdir", workdir, *overrides]


class Runner:
  """Starts CLI runs in their own process group, with their output in files next to the workdir."""

  def __init__(self, cache: str):
    self.env = _env(cache)

  def start(self, cmd: list[str], log: str) -> subprocess.Popen:
    out = open(log + ".out", "w")
    err = open(log + ".err", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=err,
                            start_new_session=True)

  def run(self, cmd: list[str], log: str, expect_ok: bool = True) -> tuple[int, str]:
    return self.run_all({log: cmd}, expect_ok)[log]

  def run_all(self, jobs: dict[str, list[str]], expect_ok: bool = True
              ) -> dict[str, tuple[int, str]]:
    """Runs {log: cmd} concurrently; returns {log: (exit status, stderr)}."""
    procs = {log: self.start(cmd, log) for log, cmd in jobs.items()}
    out = {}
    for log, proc in procs.items():
      try:
        rc = proc.wait(TIMEOUT)
      except subprocess.TimeoutExpired:
        for p in procs.values():
          if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        raise
      out[log] = rc, _read(log + ".err")
      if expect_ok:
        assert rc == 0, f"{' '.join(jobs[log][3:])} exited {rc}:\n{out[log][1][-3000:]}"
    return out


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


def _wait_until(proc: subprocess.Popen, cond, what: str, timeout: float = TIMEOUT) -> None:
  t0 = time.monotonic()
  while not _safely(cond):
    if proc.poll() is not None:
      raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
    if time.monotonic() - t0 > timeout:
      os.killpg(proc.pid, signal.SIGKILL)
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.01)


def _safely(cond) -> bool:
  """cond(), False while the run is mid-write (a metrics line without its end yet)."""
  try:
    return cond()
  except ValueError:
    return False


def _steps(workdir: str, phase: str) -> list[int]:
  """The step of every training-metrics line of `phase`, in file order (duplicates kept)."""
  return [r["step"] for r in metrics.read_metrics(workdir, phase) if "loss" in r]


def _ckpt_steps(workdir: str, phase: str) -> list[int]:
  return checkpoint.finalized_steps(checkpoint.checkpoint_dir(workdir, phase))


def _last_of_each_step(workdir: str, phase: str) -> dict[int, dict]:
  return {r["step"]: r for r in metrics.read_metrics(workdir, phase) if "loss" in r}


def _deterministic(row: dict) -> dict:
  return {k: v for k, v in row.items() if not k.startswith("time_") and not k.endswith("_per_s")}


def _same(a: float, b: float) -> bool:
  """Bitwise equality of two JSON numbers (NaN equals NaN: e.g. accuracy over no prompts)."""
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b


def _assert_one_row_per_step(wd: str) -> None:
  """Each (phase, step) once in metrics.jsonl; each step once per TensorBoard tag as shown."""
  keys = [(r["phase"], r["step"]) for r in metrics.read_metrics(wd)]
  assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
  tb = os.path.join(wd, "tb")
  for phase in os.listdir(tb):
    for tag, steps in _shown_steps(os.path.join(tb, phase)).items():
      assert len(steps) == len(set(steps)), (tag, steps)


def _assert_same_metrics(workdir: str, reference: str, phase: str, steps) -> None:
  got, want = _last_of_each_step(workdir, phase), _last_of_each_step(reference, phase)
  for step in steps:
    g, w = _deterministic(got[step]), _deterministic(want[step])
    assert g.keys() == w.keys(), (step, g.keys() ^ w.keys())
    diff = {k: (g[k], w[k]) for k in w if not _same(g[k], w[k])}
    assert not diff, f"{phase} step {step}: resumed != uninterrupted on {diff}"


# ---------------------------------------------------------------------------
# Shared runs.


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
  return Runner(str(tmp_path_factory.mktemp("xla_cache")))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("faults"))


def _sft_cmd(workdir: str) -> list[str]:
  """Base warm-up then guided distillation, both in this workdir (no init_from)."""
  return _train_cmd("sft", workdir, MICRO + [f"sft.steps={SFT_STEPS}", "sft.batch_size=4",
                                             "checkpoint_every=100"])


def _preempt(proc: subprocess.Popen, wd: str, phase: str, after: int = 1,
             held: bool = False, signum: int = signal.SIGTERM) -> list[int]:
  """Sends `signum` to `proc` after `after` `phase` steps (with `held`: once the run is held
  inside step `after`, see _HELD_RUN); checks it exits in time with the signal's status (0 for
  SIGTERM, 130 for SIGINT) and no traceback; returns its steps."""
  if held:
    _wait_until(proc, lambda: os.path.exists(wd + ".held"), f"the hold in {phase} step {after}")
  else:
    _wait_until(proc, lambda: len(_steps(wd, phase)) >= after, f"{after} {phase} metrics lines")
  os.kill(proc.pid, signum)
  try:
    rc = proc.wait(PREEMPT_GRACE)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"still running {PREEMPT_GRACE} s after {signum.name}")
  status = {signal.SIGTERM: 0, signal.SIGINT: 130}[signum]
  assert rc == status, f"{signum.name} exit status {rc}:\n{_read(wd + '.err')[-3000:]}"
  assert "Traceback" not in _read(wd + ".err"), _read(wd + ".err")[-3000:]
  return _steps(wd, phase)


@pytest.fixture(scope="module")
def sft_runs(runner, root):
  """(uninterrupted run, run SIGTERMed during SFT, its steps before the stop)."""
  ref, wd = os.path.join(root, "sft_reference"), os.path.join(root, "sft_sigterm")
  ref_proc = runner.start(_sft_cmd(ref), ref)
  done = _preempt(runner.start(_sft_cmd(wd), wd), wd, "sft")
  assert ref_proc.wait(TIMEOUT) == 0, _read(ref + ".err")[-3000:]
  return ref, wd, done


@pytest.fixture(scope="module")
def base(sft_runs):
  """Init for the RL runs: the finished SFT reference run."""
  return sft_runs[0]


def _rl_cmd(base: str, workdir: str, *extra: str) -> list[str]:
  """ReaLM-Zero (routes under EAAI, verification, route contrast), its schedule clock gated on
  the accuracy EMA (so clock != step: both are restored state); keeps every checkpoint."""
  return _train_cmd("realm_zero", workdir, MICRO + [
      f"init_from={base}", f"rl.steps={RL_STEPS}", "checkpoint_every=2",
      f"keep_checkpoints={RL_STEPS}", "rl.eaai.gate_threshold=0.5", *extra])


_HELD_RUN = textwrap.dedent("""
    import os, sys, time
    from realm_jax.train import metrics, preemption
    from realm_jax.rl import rewards
    from realm_jax.cli import train

    AFTER, WORKDIR = int(sys.argv[1]), sys.argv[2]
    real = rewards.default_scorers

    def scorers():
      out = real()
      fmt = out["format"]
      def held(prompts, completions, **columns):
        # The whole-batch call, once per step: hold the run once AFTER RL steps are logged
        # (their checkpoints finalise meanwhile in the background) until the test kills it
        # or sends SIGTERM, which lets the step finish and the run save and exit. On entering
        # the hold it writes WORKDIR.held: the test signals only after it sees that marker,
        # so the signal always lands inside step AFTER, never between steps.
        if len(completions) > 1:
          if sum("loss" in r for r in metrics.read_metrics(WORKDIR, "rl")) >= AFTER:
            with open(WORKDIR + ".held.tmp", "w") as f:
              f.write("held\\n")
            os.replace(WORKDIR + ".held.tmp", WORKDIR + ".held")
            while not preemption.requested():
              time.sleep(0.05)
        return fmt(prompts, completions, **columns)
      out["format"] = held
      return out

    rewards.default_scorers = scorers
    train.run(sys.argv[3], WORKDIR, sys.argv[4:])
    """)


@pytest.fixture(scope="module")
def rl_runs(runner, root, base):
  """(uninterrupted run, run SIGKILLed once two checkpoints were final, a pristine copy of it,
  its number of metrics lines)."""
  ref, wd = os.path.join(root, "rl_reference"), os.path.join(root, "rl_killed")
  ref_proc = runner.start(_rl_cmd(base, ref), ref)
  cmd = _rl_cmd(base, wd)  # [python, -m, realm_jax, train, EXPERIMENT, --workdir, WD, *overrides]
  # Held in step 4's reward until killed: its steps of a few tens of ms would
  # otherwise race the checkpoints' background finalisation to the end of the run.
  proc = runner.start([sys.executable, "-c", _HELD_RUN, "4", wd, cmd[4], *cmd[7:]], wd)
  _wait_until(proc, lambda: os.path.exists(wd + ".held") and len(_ckpt_steps(wd, "rl")) >= 2,
              "the hold in step 4 and two finalized checkpoints")
  os.killpg(proc.pid, signal.SIGKILL)
  assert proc.wait(TIMEOUT) == -signal.SIGKILL
  assert not os.path.exists(os.path.join(wd, "DONE")), "the run finished before it was killed"
  shutil.copytree(wd, wd + "_copy")
  assert ref_proc.wait(TIMEOUT) == 0, _read(ref + ".err")[-3000:]
  assert _steps(ref, "rl") == list(range(RL_STEPS))
  clock = [r["eaai_clock"] for r in metrics.read_metrics(ref, "rl")]
  assert clock[-1] < RL_STEPS - 1, f"the gate never held the clock: {clock}"
  return ref, wd, wd + "_copy", len(_steps(wd, "rl"))


@pytest.fixture(scope="module")
def resumed_rl(runner, base, rl_runs):
  """Reruns the killed run as is, and its copy with the latest checkpoint truncated on disk.

  Returns {workdir: (checkpoint steps before the rerun, rerun stderr, rerun stdout,
  rl metrics rows before the rerun)}.
  """
  _, wd, copy, _ = rl_runs
  before = {wd: _ckpt_steps(wd, "rl"), copy: _ckpt_steps(copy, "rl")}
  rows = {w: metrics.read_metrics(w, "rl") for w in (wd, copy)}
  _truncate_biggest_file(os.path.join(copy, "ckpt", "rl", str(before[copy][-1]), "state"))
  out = runner.run_all({w + ".resume": _rl_cmd(base, w) for w in (wd, copy)})
  return {w: (before[w], out[w + ".resume"][1], _read(w + ".resume.out"), rows[w])
          for w in (wd, copy)}


def _assert_resumed_at(wd: str, step: int, stdout: str, rows_before: list[dict]) -> None:
  """The rerun started at checkpoint `step`, not at 0 and not after it: it says so, the rows of
  earlier steps are the stopped run's own (wall-clock metrics included), and every step has
  exactly one row."""
  assert f"rl: resuming from checkpoint step {step}" in stdout, stdout[-3000:]
  assert _steps(wd, "rl") == list(range(RL_STEPS))
  kept = [r for r in metrics.read_metrics(wd, "rl") if r["step"] < step]
  assert kept == [r for r in rows_before if r["step"] < step]


# ---------------------------------------------------------------------------
# 1. kill -9 mid-way.


def test_kill9_resumes_from_last_checkpoint_with_identical_metrics(rl_runs, resumed_rl):
  reference, wd, _, lines_before = rl_runs
  steps, _, stdout, rows_before = resumed_rl[wd]
  restored = steps[-1]
  assert os.path.exists(os.path.join(wd, "DONE"))
  assert len(rows_before) == lines_before >= restored
  _assert_resumed_at(wd, restored, stdout, rows_before)
  _assert_one_row_per_step(wd)
  # Every step, whichever process ran it last, matches the uninterrupted run bitwise.
  _assert_same_metrics(wd, reference, "rl", range(RL_STEPS))


# ---------------------------------------------------------------------------
# 2. SIGTERM (preemption notice).


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_in_rl_saves_exits_with_its_status_and_resumes(runner, root, base, rl_runs, signum):
  reference = rl_runs[0]
  wd = os.path.join(root, f"rl_{signum.name.lower()}")
  cmd = _rl_cmd(base, wd)
  # Held in step 2's reward until the signal arrives (see _HELD_RUN), so it stops after step 3.
  held = runner.start([sys.executable, "-c", _HELD_RUN, "2", wd, cmd[4], *cmd[7:]], wd)
  done = _preempt(held, wd, "rl", after=2, held=True, signum=signum)
  stopped = done[-1] + 1
  assert done == list(range(stopped)) and stopped == 3
  # The step it stopped at was saved, though checkpoint_every=2 may not have asked for it.
  assert _ckpt_steps(wd, "rl")[-1] == stopped
  assert not os.path.exists(os.path.join(wd, "DONE"))
  runner.run(_rl_cmd(base, wd), wd + ".resume")
  assert _steps(wd, "rl") == list(range(RL_STEPS)), "steps before the checkpoint were redone"
  _assert_one_row_per_step(wd)
  _assert_same_metrics(wd, reference, "rl", range(RL_STEPS))


def test_sigterm_in_sft_after_base_saves_and_resumes(runner, sft_runs):
  ref, wd, done = sft_runs
  stopped = done[-1] + 1
  assert done == list(range(stopped)) and stopped < SFT_STEPS
  assert os.path.exists(os.path.join(wd, "params", "base"))  # base finished before the stop
  assert _ckpt_steps(wd, "sft") == [stopped]  # checkpoint_every=100: only the preemption save
  runner.run(_sft_cmd(wd), wd + ".resume")
  assert _steps(wd, "sft") == list(range(SFT_STEPS)), "steps before the checkpoint were redone"
  _assert_one_row_per_step(wd)
  _assert_same_metrics(wd, ref, "sft", range(SFT_STEPS))


BASE_STEPS = 6

_HELD_CLI = textwrap.dedent("""
    import os, sys, time
    from realm_jax.cli import main
    from realm_jax.train import metrics, preemption

    PHASE, AFTER, WORKDIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real = metrics.MetricsWriter.write

    def held(self, phase, step, row):
      # Once the row of step AFTER - 1 of PHASE is written, hold (marker WORKDIR.held) until
      # a signal asks to stop: it lands inside a step, which then finishes and is saved.
      real(self, phase, step, row)
      if phase == PHASE and step == AFTER - 1 and "loss" in row:
        with open(WORKDIR + ".held.tmp", "w") as f:
          f.write("held\\n")
        os.replace(WORKDIR + ".held.tmp", WORKDIR + ".held")
        while not preemption.requested():
          time.sleep(0.05)

    metrics.MetricsWriter.write = held
    main.main(sys.argv[4:])
    """)


def test_sigint_in_base_saves_exits_130_and_resumes_one_row_per_step(runner, root):
  """Ctrl-C in a supervised stage (the base warm-up) through the CLI entry point."""
  wd = os.path.join(root, "base_sigint")
  cmd = _train_cmd("base_model", wd, MICRO + [f"base.steps={BASE_STEPS}", "checkpoint_every=100"])
  held = runner.start([sys.executable, "-c", _HELD_CLI, "base", "2", wd, *cmd[3:]], wd)
  done = _preempt(held, wd, "base", after=2, held=True, signum=signal.SIGINT)
  stopped = done[-1] + 1
  assert done == list(range(stopped)) and 2 <= stopped < BASE_STEPS
  assert _ckpt_steps(wd, "base") == [stopped]  # checkpoint_every=100: only the stop's save
  assert not os.path.exists(os.path.join(wd, "params", "base"))
  assert not os.path.exists(os.path.join(wd, "DONE"))
  runner.run(cmd, wd + ".resume")
  assert f"base: resuming from checkpoint step {stopped}" in _read(wd + ".resume.out")
  assert _steps(wd, "base") == list(range(BASE_STEPS)), "steps before the checkpoint were redone"
  _assert_one_row_per_step(wd)
  assert os.path.exists(os.path.join(wd, "DONE"))


# ---------------------------------------------------------------------------
# 3. A truncated checkpoint.


def test_truncated_checkpoint_falls_back_to_previous(rl_runs, resumed_rl):
  reference, _, wd, lines_before = rl_runs
  steps, stderr, stdout, rows_before = resumed_rl[wd]
  latest, previous = steps[-1], steps[-2]
  assert f"checkpoint step {latest}" in stderr and "unreadable" in stderr, stderr[-3000:]
  assert os.path.exists(os.path.join(wd, "DONE"))
  # The killed run had logged steps past `previous`: the rerun redid them, each row once.
  assert len(rows_before) == lines_before > previous
  _assert_resumed_at(wd, previous, stdout, rows_before)
  _assert_one_row_per_step(wd)
  _assert_same_metrics(wd, reference, "rl", range(RL_STEPS))
  # The unreadable checkpoint was replaced by a good one when its step came round again
  # (keep_checkpoints keeps them all here).
  ckpt = checkpoint.Checkpointer(os.path.join(wd, "ckpt", "rl"), keep_last=None)
  try:
    assert ckpt.all_steps() == list(range(2, RL_STEPS + 1, 2))
    for step in ckpt.all_steps():
      ckpt.restore(step=step)
  finally:
    ckpt.close()


def _truncate_biggest_file(directory: str) -> None:
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def test_checkpointer_replaces_an_unreadable_step_when_saving_it_again(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep_last=None, async_save=False)
  try:
    for step in (1, 2):
      ckpt.save(step, {"w": np.full((64, 64), float(step), np.float32)}, extra={"step": step})
    _truncate_biggest_file(str(tmp_path / "ckpt" / "2" / "state"))
    with pytest.warns(UserWarning, match="checkpoint step 2 .* is unreadable"):
      state, extra = ckpt.restore()
    assert extra == {"step": 1} and np.all(np.asarray(state["w"]) == 1.0)
    assert ckpt.save(2, {"w": np.full((64, 64), 2.5, np.float32)}, extra={"step": 2})
    state, extra = ckpt.restore()
    assert extra == {"step": 2} and np.all(np.asarray(state["w"]) == 2.5)
  finally:
    ckpt.close()


# ---------------------------------------------------------------------------
# 4. NaN, 5. a raising reward: independent runs, started together.

NAN_LRS = {  # rl.lr -> the error expected
    # The params grow huge but finite: the next step's loss / grad norm is NaN.
    "1e30": r"metric '(loss|grad_norm|reward)' is (nan|inf|-inf)",
    # Inf in fp32: the first update itself leaves Inf/NaN in the params, its metrics are finite.
    "1e39": r"the updated params hold NaN/Inf",
}

_FLAKY_SCORER = textwrap.dedent("""
    import json, sys
    from realm_jax.rl import rewards
    from realm_jax.cli import train

    LOG = sys.argv[1]
    real = rewards.default_scorers

    def scorers():
      out = real()
      fmt = out["format"]
      def flaky(prompts, completions, **columns):
        if len(completions) > 1:  # the whole-batch call, once per step
          with open(LOG, "a") as f:
            f.write(json.dumps(completions) + "\\n")
        if any(len(c) % 3 == 0 for c in completions):
          raise ValueError("strange completion")
        return fmt(prompts, completions, **columns)
      out["format"] = flaky
      return out

    rewards.default_scorers = scorers
    train.run(sys.argv[2], sys.argv[3], sys.argv[4:])
    """)


@pytest.fixture(scope="module")
def side_runs(runner, root, base):
  """{name: (workdir, exit status, stderr)} for 'nan_<lr>' and 'flaky_reward'."""
  jobs = {}
  for lr in NAN_LRS:
    wd = os.path.join(root, f"rl_nan_{lr}")
    jobs[wd] = _rl_cmd(base, wd, f"rl.lr={lr}", "rl.grad_clip=1e30", "rl.warmup=0",
                       "checkpoint_every=1")
  wd = os.path.join(root, "rl_flaky_reward")
  cmd = _rl_cmd(base, wd)  # [python, -m, realm_jax, train, EXPERIMENT, --workdir, WD, *overrides]
  jobs[wd] = [sys.executable, "-c", _FLAKY_SCORER, wd + ".completions", cmd[4], wd, *cmd[7:]]
  out = runner.run_all(jobs, expect_ok=False)
  return {os.path.basename(wd)[3:]: (wd, *res) for wd, res in out.items()}


@pytest.mark.parametrize("lr", list(NAN_LRS))
def test_nan_stops_naming_step_and_metric_and_saves_nothing_bad(side_runs, lr):
  wd, rc, stderr = side_runs[f"nan_{lr}"]
  assert rc == 1, stderr[-3000:]  # an uncaught error, not a crash
  found = re.search(r"NonFiniteError: rl step (\d+): " + NAN_LRS[lr], stderr)
  assert found, stderr[-3000:]
  bad = int(found.group(1))
  assert not os.path.exists(os.path.join(wd, "params", "rl"))
  # Checkpoint s holds the state after s updates: none may include the failing step's update,
  # none is left half-written, and every one holds finite numbers.
  ckpt_dir = os.path.join(wd, "ckpt", "rl")
  saved = _ckpt_steps(wd, "rl")
  assert all(s <= bad for s in saved), (bad, saved)
  assert sorted(os.listdir(ckpt_dir)) == sorted(map(str, saved)), os.listdir(ckpt_dir)
  ckpt = checkpoint.Checkpointer(ckpt_dir, keep_last=None)
  try:
    for s in saved:
      state, _ = ckpt.restore(step=s)
      for x in jax.tree.leaves(state):
        assert np.isfinite(np.asarray(x)).all(), f"checkpoint {s} holds NaN/Inf"
  finally:
    ckpt.close()


def test_finite_params_check_names_phase_and_step():
  loop.check_finite_params({"a": np.ones(3, np.float32), "b": np.zeros((), np.int32)}, 0, "rl")
  for bad in (np.inf, -np.inf, np.nan):
    params = {"a": np.ones(3, np.float32), "b": {"c": np.array([0.0, bad], np.float32)}}
    with pytest.raises(metrics.NonFiniteError, match=r"sft step 7: the updated params hold"):
      loop.check_finite_params(params, 7, "sft")


def test_raising_reward_scores_zero_counts_and_training_goes_on(side_runs):
  wd, rc, stderr = side_runs["flaky_reward"]
  assert rc == 0, stderr[-3000:]
  rows = metrics.read_metrics(wd, "rl")
  assert [r["step"] for r in rows] == list(range(RL_STEPS))
  with open(wd + ".completions") as f:
    batches = [json.loads(line) for line in f]
  assert len(batches) == RL_STEPS
  strange = [sum(len(c) % 3 == 0 for c in b) for b in batches]
  assert any(strange), "no completion of this run hit the raising branch"
  assert [r["reward/format_errors"] for r in rows] == strange
  for r in rows:
    assert math.isfinite(r["loss"]) and r["reward/answer_errors"] == 0
