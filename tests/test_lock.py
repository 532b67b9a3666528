"""One live run per workdir: a second `realm-jax train` is refused naming the holder's PID; the
lock of a killed holder never blocks; unusable workdirs get their own message; a failed set-up
in a workdir the run created leaves no workdir behind.

The holder is a real `train.run` whose set-up (`train.prepare`) is held until the test kills
it: the lock must already be held during set-up, before anything of the run is recorded.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from realm_jax.cli import train
from realm_jax.train import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300

_HOLDER = textwrap.dedent("""
    import sys, time
    from realm_jax.cli import train

    WORKDIR = sys.argv[1]

    def held_prepare(*args, **kwargs):
      with open(WORKDIR + ".held", "w") as f:
        f.write("held\\n")
      while True:
        time.sleep(0.05)

    train.prepare = held_prepare
    train.run("demo", WORKDIR, ["mesh=1,1,1"])
    """)


def _env() -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), PYTHONUNBUFFERED="1")
  return env


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "realm_jax", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=TIMEOUT)


def _start_holder(wd: str) -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, wd], cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  t0 = time.monotonic()
  while not os.path.exists(wd + ".held"):
    if proc.poll() is not None:
      raise AssertionError(f"the holder exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    if time.monotonic() - t0 > TIMEOUT:
      os.killpg(proc.pid, signal.SIGKILL)
      raise AssertionError("timed out waiting for the holder's set-up")
    time.sleep(0.02)
  return proc


def test_second_run_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path):
  wd = str(tmp_path / "run")
  holder = _start_holder(wd)
  try:
    second = _cli("train", "demo", "--workdir", wd, "mesh=1,1,1")
  finally:
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(TIMEOUT)
  assert second.returncode == 1, second.stderr[-3000:]
  assert second.stderr == (f"realm-jax: error: --workdir {wd} is in use by another run (PID "
                           f"{holder.pid}); wait for it to finish or use another --workdir\n")
  assert not os.path.exists(os.path.join(wd, "run.json"))  # the held set-up recorded nothing
  # kill -9 left the lock file (with the dead PID) behind; the kernel released the lock.
  with open(os.path.join(wd, workdir.LOCK_NAME)) as f:
    assert f.read().strip() == str(holder.pid)
  again = _start_holder(wd)  # takes the lock at once
  os.killpg(again.pid, signal.SIGKILL)
  again.wait(TIMEOUT)


def test_lock_is_exclusive_and_released_in_process(tmp_path):
  with workdir.locked(str(tmp_path)):
    with pytest.raises(workdir.WorkdirLocked, match=rf"in use by another run \(PID {os.getpid()}\)"):
      with workdir.locked(str(tmp_path)):
        pass
  with workdir.locked(str(tmp_path)):  # released on exit
    pass


def test_a_workdir_that_is_a_file_or_under_a_file_gets_its_own_message(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(NotADirectoryError, match=rf"--workdir {f} is a file, not a directory"):
    train.run("demo", str(f), ["mesh=1,1,1"])
  with pytest.raises(NotADirectoryError, match=rf"cannot create --workdir {f}/run"):
    train.run("demo", str(f / "run"), ["mesh=1,1,1"])
  result = _cli("train", "demo", "--workdir", str(f), "mesh=1,1,1")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"realm-jax: error: --workdir {f} is a file, not a directory; pass a directory (it is "
      "created when missing)"], result.stderr


def test_an_unwritable_workdir_gets_its_own_message(tmp_path):
  if os.geteuid() == 0:  # root writes through permission bits, but not into procfs
    wd = "/proc/1"
    assert not os.access(wd, os.W_OK)
    with pytest.raises(PermissionError, match=rf"--workdir {wd} is not writable"):
      train.run("demo", wd, ["mesh=1,1,1"])
    return
  wd = tmp_path / "ro"
  wd.mkdir()
  wd.chmod(0o500)
  try:
    with pytest.raises(PermissionError, match=rf"--workdir {wd} is not writable"):
      train.run("demo", str(wd), ["mesh=1,1,1"])
  finally:
    wd.chmod(0o700)


def test_failed_block_removes_the_lock_and_directory_it_left_unused(tmp_path):
  wd = str(tmp_path / "new")
  assert workdir.ensure(wd) is True and workdir.ensure(wd) is False  # created once
  with pytest.raises(ValueError, match="set-up failed"):
    with workdir.locked(wd, remove_unused=True):
      raise ValueError("set-up failed")
  assert not os.path.exists(wd)
  os.mkdir(wd)  # something was written: the directory and its lock file stay
  with pytest.raises(ValueError):
    with workdir.locked(wd, remove_unused=True):
      open(os.path.join(wd, "run.json"), "w").close()
      raise ValueError("training failed")
  assert sorted(os.listdir(wd)) == [workdir.LOCK_NAME, "run.json"]
  with workdir.locked(wd, remove_unused=True):  # a block that ends well removes nothing
    os.remove(os.path.join(wd, "run.json"))
  assert os.listdir(wd) == [workdir.LOCK_NAME]


def test_failed_setup_removes_a_workdir_the_run_created_and_keeps_one_it_found(tmp_path):
  typo = ["mesh=1,1,1", "data.source=domain:tarif"]
  wd = tmp_path / "created"
  with pytest.raises(ValueError, match="unknown domain 'tarif'"):
    train.run("base_model", str(wd), typo)
  assert not wd.exists()
  found = tmp_path / "found"
  found.mkdir()
  with pytest.raises(ValueError, match="unknown domain 'tarif'"):
    train.run("base_model", str(found), typo)
  assert os.listdir(found) == [workdir.LOCK_NAME]  # the user's directory is left in place
