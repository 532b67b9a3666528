"""tpu/launch.py: the exact gcloud commands (dry run) and that a real run executes them."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "tpu" / "launch.py"
SCOPE = ["--name", "rl-pod", "--zone", "us-central2-b", "--project", "my-proj"]
Z = "--zone=us-central2-b --project=my-proj"


def _dry(*args):
  out = subprocess.run([sys.executable, str(LAUNCH), "--dry-run", *args], check=True,
                       capture_output=True, text=True).stdout
  return [shlex.split(line) for line in out.strip().splitlines()]


def _ssh(worker, command):
  return shlex.split(f"gcloud compute tpus tpu-vm ssh rl-pod {Z} --worker={worker}") + [
      f"--command={command}"]


def test_create():
  assert _dry("create", *SCOPE, "--accelerator-type", "v4-16", "--spot") == [shlex.split(
      f"gcloud compute tpus tpu-vm create rl-pod {Z} --accelerator-type=v4-16 "
      f"--version=tpu-ubuntu2204-base --spot")]
  assert _dry("create", *SCOPE, "--accelerator-type", "v5litepod-8", "--version", "v2-alpha-tpuv5-lite") == [
      shlex.split(f"gcloud compute tpus tpu-vm create rl-pod {Z} --accelerator-type=v5litepod-8 "
                  f"--version=v2-alpha-tpuv5-lite")]


SETUP = ("cd ~/realm_jax && python3 -m pip install --user -q -U pip && "
         "python3 -m pip install --user -q -e '.[tpu]'")


def test_install_copies_local_source_to_every_worker():
  cmds = _dry("install", *SCOPE, "--source", "/src/realm")
  assert cmds[0][:3] == ["tar", "-czf", "/tmp/realm_jax-src.tar.gz"]
  assert "--exclude=.venv" in cmds[0] and "--exclude=.git" in cmds[0]
  assert cmds[0][-3:] == ["-C", "/src/realm", "."]
  assert cmds[1] == shlex.split(f"gcloud compute tpus tpu-vm scp /tmp/realm_jax-src.tar.gz "
                                f"rl-pod:realm_jax-src.tar.gz {Z} --worker=all")
  assert cmds[2] == _ssh("all", "rm -rf ~/realm_jax && mkdir -p ~/realm_jax && "
                                "tar -xzf ~/realm_jax-src.tar.gz -C ~/realm_jax && " + SETUP)
  assert len(cmds) == 3


def test_install_from_git():
  assert _dry("install", *SCOPE, "--repo", "https://example.org/realm_jax.git", "--ref", "v0.1") == [
      _ssh("all", "rm -rf ~/realm_jax && git clone -q https://example.org/realm_jax.git ~/realm_jax"
                  " && git -C ~/realm_jax checkout -q v0.1 && " + SETUP)]


TRAIN = ("cd ~/realm_jax && REALM_DISTRIBUTED_AUTO=1 ~/.local/bin/realm-jax train demo "
         "--workdir gs://bucket/runs/demo rl.kl_coef=0.05 'name=a b'")


def test_launch_runs_in_background_on_all_workers():
  cmds = _dry("launch", *SCOPE, "demo", "--workdir", "gs://bucket/runs/demo",
              "rl.kl_coef=0.05", "name=a b")
  assert cmds == [_ssh("all", f"nohup sh -c {shlex.quote(TRAIN)} > ~/realm_jax_train.log 2>&1 "
                              f"< /dev/null &")]


def test_run_blocks_and_tees_the_log():
  cmds = _dry("run", *SCOPE, "demo", "--workdir", "gs://bucket/runs/demo", "rl.kl_coef=0.05",
              "name=a b")
  assert cmds == [_ssh("all", f"set -o pipefail; ({TRAIN}) 2>&1 | tee ~/realm_jax_train.log")]


def test_run_then_eval():
  cmds = _dry("run", *SCOPE, "--eval", "demo", "--workdir", "gs://bucket/runs/demo",
              "rl.kl_coef=0.05", "name=a b")
  evaluate = ("REALM_DISTRIBUTED_AUTO=1 ~/.local/bin/realm-jax eval --workdir "
              "gs://bucket/runs/demo")
  assert cmds == [_ssh("all", f"set -o pipefail; ({TRAIN} && {evaluate}) 2>&1 | tee "
                              f"~/realm_jax_train.log")]


def test_logs_fetch_delete():
  assert _dry("logs", *SCOPE) == [_ssh("0", "tail -n +1 -F ~/realm_jax_train.log")]
  assert _dry("logs", *SCOPE, "--worker", "1", "--no-follow") == [
      _ssh("1", "tail -n 200 ~/realm_jax_train.log")]
  assert _dry("fetch", *SCOPE, "--workdir", "gs://bucket/runs/demo", "--dest", "out/demo") == [
      ["mkdir", "-p", "out/demo"],
      shlex.split("gcloud storage rsync --recursive gs://bucket/runs/demo out/demo")]
  pack = shlex.join(_ssh("0", "tar -czf - -C ~/realm_jax/runs/demo ."))
  assert _dry("fetch", *SCOPE, "--workdir", "runs/demo", "--dest", "out/demo") == [
      ["mkdir", "-p", "out/demo"], ["sh", "-c", f"{pack} | tar -xzf - -C out/demo"]]
  assert _dry("delete", *SCOPE) == [
      shlex.split(f"gcloud compute tpus tpu-vm delete rl-pod {Z} --quiet")]


def test_up_is_create_install_launch():
  up = _dry("up", *SCOPE, "--accelerator-type", "v4-8", "--source", "/src/realm", "demo",
            "--workdir", "gs://bucket/runs/demo", "rl.kl_coef=0.05", "name=a b")
  assert up == (_dry("create", *SCOPE, "--accelerator-type", "v4-8")
                + _dry("install", *SCOPE, "--source", "/src/realm")
                + _dry("launch", *SCOPE, "demo", "--workdir", "gs://bucket/runs/demo",
                       "rl.kl_coef=0.05", "name=a b"))


def test_unknown_flags_are_rejected():
  r = subprocess.run([sys.executable, str(LAUNCH), "delete", *SCOPE, "--bogus"],
                     capture_output=True, text=True)
  assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


@pytest.mark.parametrize("exit_code", [0, 3])
def test_without_dry_run_the_commands_execute(tmp_path, exit_code):
  """A stand-in `gcloud` on PATH records its argv; its exit code is propagated."""
  log = tmp_path / "calls"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit {exit_code}\n')
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
  r = subprocess.run([sys.executable, str(LAUNCH), "delete", *SCOPE], env=env,
                     capture_output=True, text=True)
  assert r.returncode == exit_code
  assert log.read_text().split() == shlex.split(
      f"compute tpus tpu-vm delete rl-pod {Z} --quiet")
