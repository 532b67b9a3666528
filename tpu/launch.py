#!/usr/bin/env python3
"""Run realm_jax on a Cloud TPU VM or pod slice through `gcloud`.

Every step is one or more shell commands; `--dry-run` prints them (one per
line, exactly as they would run) and runs nothing. See tpu/README.md.

  python tpu/launch.py create  --name N --zone Z --accelerator-type v4-8 --version tpu-ubuntu2204-base
  python tpu/launch.py install --name N --zone Z [--repo URL --ref REV]
  python tpu/launch.py launch  --name N --zone Z demo --workdir gs://B/runs/demo [key=value ...]
  python tpu/launch.py run     --name N --zone Z demo --workdir W [key=value ...]   (blocks)
  python tpu/launch.py logs    --name N --zone Z [--no-follow]
  python tpu/launch.py fetch   --name N --zone Z --workdir W --dest runs/demo
  python tpu/launch.py delete  --name N --zone Z
  python tpu/launch.py up      ... (create + install + launch)

Only the standard library is used, so it runs from any Python 3.10+.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REMOTE_DIR = "realm_jax"                 # checkout on each worker, under $HOME
REMOTE_BIN = "~/.local/bin/realm-jax"    # `pip install --user` entry point
REMOTE_LOG = "~/realm_jax_train.log"
TARBALL = "/tmp/realm_jax-src.tar.gz"
EXCLUDES = (".venv", ".git", "runs", "workdirs", "__pycache__", "*.egg-info", ".pytest_cache")


def _scope(a: argparse.Namespace) -> list[str]:
  return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def ssh(a: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, *_scope(a),
          f"--worker={worker}", f"--command={command}"]


def create_cmds(a: argparse.Namespace) -> list[list[str]]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *_scope(a),
         f"--accelerator-type={a.accelerator_type}", f"--version={a.version}"]
  return [cmd + (["--spot"] if a.spot else [])]


def install_cmds(a: argparse.Namespace) -> list[list[str]]:
  pip = "python3 -m pip install --user -q"
  setup = f"cd ~/{REMOTE_DIR} && {pip} -U pip && {pip} -e '.[tpu]'"
  if a.repo:
    fetch = (f"rm -rf ~/{REMOTE_DIR} && git clone -q {shlex.quote(a.repo)} ~/{REMOTE_DIR} && "
             f"git -C ~/{REMOTE_DIR} checkout -q {shlex.quote(a.ref)}")
    return [ssh(a, f"{fetch} && {setup}")]
  excludes = [f"--exclude={e}" for e in EXCLUDES]
  pack = ["tar", "-czf", TARBALL, *excludes, "-C", str(a.source), "."]
  copy = ["gcloud", "compute", "tpus", "tpu-vm", "scp", TARBALL,
          f"{a.name}:{Path(TARBALL).name}", *_scope(a), "--worker=all"]
  unpack = (f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && "
            f"tar -xzf ~/{Path(TARBALL).name} -C ~/{REMOTE_DIR}")
  return [pack, copy, ssh(a, f"{unpack} && {setup}")]


def _train(a: argparse.Namespace) -> str:
  args = ["train", a.experiment, "--workdir", a.workdir, *a.overrides]
  # Every worker joins one JAX job (distributed.maybe_initialize, auto-detection).
  cmd = f"cd ~/{REMOTE_DIR} && REALM_DISTRIBUTED_AUTO=1 {REMOTE_BIN} {shlex.join(args)}"
  if a.eval:
    cmd += f" && REALM_DISTRIBUTED_AUTO=1 {REMOTE_BIN} eval --workdir {shlex.quote(a.workdir)}"
  return cmd


def launch_cmds(a: argparse.Namespace) -> list[list[str]]:
  """Start training on all workers in the background; output to REMOTE_LOG."""
  return [ssh(a, f"nohup sh -c {shlex.quote(_train(a))} > {REMOTE_LOG} 2>&1 < /dev/null &")]


def run_cmds(a: argparse.Namespace) -> list[list[str]]:
  """Train on all workers in the foreground (returns when training ends)."""
  return [ssh(a, f"set -o pipefail; ({_train(a)}) 2>&1 | tee {REMOTE_LOG}")]


def logs_cmds(a: argparse.Namespace) -> list[list[str]]:
  tail = f"tail -n 200 {REMOTE_LOG}" if a.no_follow else f"tail -n +1 -F {REMOTE_LOG}"
  return [ssh(a, tail, worker=str(a.worker))]


def fetch_cmds(a: argparse.Namespace) -> list[list[str]]:
  """Copy a run's workdir into --dest: rsync from GCS, or a tar stream from worker 0."""
  mkdir = ["mkdir", "-p", a.dest]
  if a.workdir.startswith("gs://"):
    return [mkdir, ["gcloud", "storage", "rsync", "--recursive", a.workdir, a.dest]]
  remote = a.workdir if a.workdir.startswith(("/", "~")) else f"~/{REMOTE_DIR}/{a.workdir}"
  pack = shlex.join(ssh(a, f"tar -czf - -C {remote} .", worker="0"))
  return [mkdir, ["sh", "-c", f"{pack} | tar -xzf - -C {shlex.quote(a.dest)}"]]


def delete_cmds(a: argparse.Namespace) -> list[list[str]]:
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_scope(a), "--quiet"]]


def up_cmds(a: argparse.Namespace) -> list[list[str]]:
  return create_cmds(a) + install_cmds(a) + launch_cmds(a)


COMMANDS = {"create": create_cmds, "install": install_cmds, "launch": launch_cmds,
            "run": run_cmds, "logs": logs_cmds, "fetch": fetch_cmds, "delete": delete_cmds,
            "up": up_cmds}


def parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", required=True, help="TPU VM / pod slice name")
  common.add_argument("--zone", required=True, help="e.g. us-central2-b")
  common.add_argument("--project", default=None, help="GCP project (default: gcloud config)")
  common.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                      help="print the commands, run nothing")

  create = argparse.ArgumentParser(add_help=False)
  create.add_argument("--accelerator-type", required=True, help="e.g. v4-8, v5litepod-16")
  create.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime image")
  create.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")

  install = argparse.ArgumentParser(add_help=False)
  install.add_argument("--repo", default=None, help="git URL to clone (default: copy --source)")
  install.add_argument("--ref", default="main", help="git ref checked out with --repo")
  install.add_argument("--source", default=str(ROOT), help="local checkout to copy")

  train = argparse.ArgumentParser(add_help=False)
  train.add_argument("experiment", help="experiment name, as for `realm-jax train`")
  train.add_argument("--workdir", required=True, help="gs://BUCKET/... (required for pods) or a path")
  train.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
  train.add_argument("--eval", action="store_true", help="then `realm-jax eval` the workdir")

  p = argparse.ArgumentParser(prog="tpu/launch.py", description=__doc__.split("\n")[0])
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("create", parents=[common, create])
  sub.add_parser("install", parents=[common, install])
  sub.add_parser("launch", parents=[common, train])
  sub.add_parser("run", parents=[common, train])
  logs = sub.add_parser("logs", parents=[common])
  logs.add_argument("--worker", default="0", help="worker whose log to show")
  logs.add_argument("--no-follow", action="store_true", help="print the last lines and exit")
  fetch = sub.add_parser("fetch", parents=[common])
  fetch.add_argument("--workdir", required=True)
  fetch.add_argument("--dest", required=True, help="local directory to copy the run into")
  sub.add_parser("delete", parents=[common])
  sub.add_parser("up", parents=[common, create, install, train])
  return p


def main(argv: list[str] | None = None) -> int:
  p = parser()
  a, rest = p.parse_known_args(argv)  # overrides may follow --workdir
  if rest and not (hasattr(a, "overrides") and all("=" in r and not r.startswith("-") for r in rest)):
    p.error(f"unrecognized arguments: {' '.join(rest)}")
  if rest:
    a.overrides = a.overrides + rest
  for cmd in COMMANDS[a.command](a):
    print(shlex.join(cmd), flush=True)
    if not a.dry_run:
      rc = subprocess.run(cmd, check=False).returncode
      if rc:
        print(f"tpu/launch.py: command failed with exit code {rc}: {shlex.join(cmd)}",
              file=sys.stderr)
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
