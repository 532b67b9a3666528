"""Multi-host path: two CPU processes on 127.0.0.1 train exactly like one process.

Both runs use the same (data=2) mesh: one process owning 2 devices, or two
processes owning one each. The global batches, the rollouts and the updates
are the same computation, so every logged metric (timings aside) must agree.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

from tests.test_train import MICRO

WORKER = textwrap.dedent("""
    import functools, sys
    from jax._src import xla_bridge
    # Cross-process CPU collectives (gloo) listen on loopback only.
    xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
        xla_bridge._jax.make_gloo_tcp_collectives, hostname="127.0.0.1")
    import os, time
    from realm_jax.cli import train
    from realm_jax.rl import corpus
    if os.environ.get("REALM_PROCESS_ID") == "1":  # a late process, after the joint start-up:
      build = corpus.build_run_data                 # process 0 may have written the run's
      def late(cfg):                                # tokenizer before this one looks for it
        time.sleep(8)
        return build(cfg)
      corpus.build_run_data = late
    train.run("grpo", sys.argv[1], sys.argv[2:])
    print("worker done", flush=True)
""")

OVERRIDES = [o for o in MICRO if not o.startswith("mesh=")] + [
    "mesh=-1,1,1", "rl.steps=3", "base.steps=2", "base.batch_size=4"]


def _port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(script, workdir, num_processes, devices_per_process) -> list[subprocess.Popen]:
  coordinator = f"127.0.0.1:{_port()}"
  procs = []
  for pid in range(num_processes):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()  # the suite's, less its devices
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
        [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"]))
    for k in ("REALM_COORDINATOR", "REALM_NUM_PROCESSES", "REALM_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
      env.pop(k, None)
    if num_processes > 1:
      env.update(REALM_COORDINATOR=coordinator, REALM_NUM_PROCESSES=str(num_processes),
                 REALM_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, str(script), str(workdir), *OVERRIDES], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def _wait(procs: list[subprocess.Popen]) -> None:
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for pid, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and "worker done" in out, f"process {pid}:\n{out[-4000:]}"


def _metrics(workdir):
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      rows[(r["phase"], r["step"])] = {k: v for k, v in r.items()
                                       if not k.startswith("time_") and not k.endswith("_per_s")}
  return rows


def test_two_processes_match_one(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  one, two = tmp_path / "one", tmp_path / "two"
  # The one-process run and the two-process run go side by side (each is mostly
  # single-threaded start-up and compilation).
  _wait(_launch(script, one, 1, 2) + _launch(script, two, 2, 1))
  a, b = _metrics(one), _metrics(two)
  assert a.keys() == b.keys() and ("rl", 2) in a
  for key in a:
    for name, va in a[key].items():
      vb = b[key][name]
      if isinstance(va, float) and isinstance(vb, float):
        # Same mesh, same programs: only cross-process reduction order may differ.
        assert abs(va - vb) <= 1e-5 * max(1.0, abs(va)) or (va != va and vb != vb), (key, name, va, vb)
      else:
        assert va == vb, (key, name, va, vb)
  assert os.path.exists(two / "params" / "rl") and os.path.exists(two / "DONE")
