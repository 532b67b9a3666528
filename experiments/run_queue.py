"""Running a reproduction's CLI calls: one subprocess per call (a shared XLA compilation
cache, optionally pinned to CPUs), and a scheduler that runs tasks after the ones they start
from, a few at a time. Shared by `experiments.reproduce`, `variant` and `group_signal`."""

from __future__ import annotations

import concurrent.futures as futures
import os
import subprocess
import sys


def run_call(args: list[str], log, cache: str, run_cli=None, cpus: set[int] | None = None
             ) -> None:
  """One CLI call: a `python -m realm_jax` subprocess logged to `log`, sharing the XLA
  compilation cache `cache` and pinned to `cpus` when given (or `run_cli(args)` here)."""
  if run_cli is not None:
    run_cli(args)
    return
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  cmd = [sys.executable, "-m", "realm_jax", *args]
  log.write(f"$ {' '.join(cmd)}\n")
  log.flush()
  pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
  subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, env=env,
                 preexec_fn=pin)


def require_done(workdir: str) -> None:
  """A train call that returns without DONE was stopped (SIGTERM saves and exits 0): its
  eval would measure an unfinished run, so the run stops here and a rerun resumes it."""
  if not os.path.exists(os.path.join(workdir, "DONE")):
    raise RuntimeError(f"{workdir}: training stopped before its last step (no DONE); "
                       "rerun the same command to resume it")


def cpu_slots(jobs: int) -> list[set[int]]:
  """This process's CPUs dealt into `jobs` disjoint sets, one per concurrent run: XLA's
  thread pools of two unpinned runs on the same cores slow both far more than 2x. One job
  (or fewer CPUs than jobs): no pinning."""
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if jobs <= 1 or len(cpus) < jobs:
    return []
  return [set(cpus[i::jobs]) for i in range(jobs)]


def schedule_runs(tasks: list[tuple[int, str]], start_of, jobs: int, work, on_done=None
                  ) -> dict[tuple[int, str], str]:
  """Runs `work(task)` for every task, at most `jobs` at once, a task only after the one it
  starts from (`start_of(task)`, or None) finished. A failure fails the tasks that start
  from it, directly or not; the rest run. Returns {task: "ok" | error line}."""
  status: dict[tuple[int, str], str] = {}
  pending = list(tasks)
  with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    running: dict[futures.Future, tuple[int, str]] = {}
    while pending or running:
      for t in list(pending):
        dep = start_of(t)
        if dep is not None and dep in status and status[dep] != "ok":
          status[t] = f"not run: {dep[1]} (seed {dep[0]}) failed"
          pending.remove(t)
        elif (dep is None or status.get(dep) == "ok") and len(running) < jobs:
          running[pool.submit(work, t)] = t
          pending.remove(t)
      if not running:
        continue
      done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
      for fut in done:
        t = running.pop(fut)
        err = fut.exception()
        status[t] = "ok" if err is None else f"{type(err).__name__}: {err}"
        if on_done is not None:
          on_done(t, status[t])
  return status
