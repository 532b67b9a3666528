"""Multi-process start-up: the env/flag decision, and two real CPU processes on loopback."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from realm_jax.train import distributed as dist

# Runs in each of two processes (2 CPU devices each, 4 global).
WORKER = textwrap.dedent("""
    import functools
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax._src import xla_bridge
    from jax.experimental import multihost_utils

    # Cross-process CPU collectives (gloo) listen on loopback only.
    xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
        xla_bridge._jax.make_gloo_tcp_collectives, hostname="127.0.0.1")

    from realm_jax.train import distributed, sharding as sh

    plan = distributed.maybe_initialize()
    assert plan.mode == "explicit", plan
    pid = jax.process_index()
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)

    # The barrier waits for the slow process (here: 3 s of host work before it),
    # and a name may be used twice.
    import os, sys, time
    marker = os.path.join(sys.argv[1], "written-by-0")
    for i in range(2):
      if pid == 0:
        time.sleep(3)
        open(f"{marker}{i}", "w").close()
      distributed.barrier("marker")
      assert os.path.exists(f"{marker}{i}"), f"process {pid} passed barrier {i} early"
    assert distributed.is_main_process() == (pid == 0)

    mesh = sh.make_mesh(sh.MeshConfig(data=-1))
    rows = sh.batch_sharding(mesh, ndim=2)
    local = np.arange(1, 9, dtype=np.float32).reshape(4, 2)[2 * pid: 2 * pid + 2]  # my rows
    x = sh.host_array_to_global(local, rows)
    assert x.shape == (4, 2) and not x.is_fully_addressable

    total = jax.jit(jnp.sum, out_shardings=sh.replicated(mesh))(x)  # all-reduce across processes
    psum = jax.jit(jax.shard_map(lambda b: jax.lax.psum(b.sum(), ("data", "fsdp")),
                                 mesh=mesh, in_specs=rows.spec, out_specs=jax.P()))(x)
    gathered = multihost_utils.process_allgather(x, tiled=True)
    np.testing.assert_array_equal(gathered, np.arange(1, 9).reshape(4, 2))
    assert float(total) == 36.0 and float(psum) == 36.0, (total, psum)
    print(f"process {pid} ok: total={float(total)}", flush=True)
    jax.distributed.shutdown()
""")


def _free_loopback_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_cpu_processes_on_loopback(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  coordinator = f"127.0.0.1:{_free_loopback_port()}"
  procs = []
  for pid in range(2):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()  # the suite's, less its devices
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=2"]),
               REALM_COORDINATOR=coordinator, REALM_NUM_PROCESSES="2", REALM_PROCESS_ID=str(pid))
    env.pop("TPU_WORKER_HOSTNAMES", None)
    procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=120)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for pid, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {pid} failed:\n{out[-3000:]}"
    assert f"process {pid} ok: total=36.0" in out


@pytest.mark.parametrize("env,expected", [
    ({}, dist.DistributedPlan("single")),
    ({"REALM_COORDINATOR": "10.0.0.2:1234", "REALM_NUM_PROCESSES": "4", "REALM_PROCESS_ID": "3"},
     dist.DistributedPlan("explicit", "10.0.0.2:1234", 4, 3)),
    ({"REALM_COORDINATOR": "127.0.0.1:99", "REALM_NUM_PROCESSES": "1", "REALM_PROCESS_ID": "0"},
     dist.DistributedPlan("single")),
    ({"REALM_DISTRIBUTED_AUTO": "1"}, dist.DistributedPlan("auto")),
    ({"REALM_DISTRIBUTED_AUTO": "0"}, dist.DistributedPlan("single")),
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, dist.DistributedPlan("auto")),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, dist.DistributedPlan("single")),
])
def test_plan_from_environment(env, expected):
  assert dist.plan_initialize(env=env) == expected


def test_flags_override_environment():
  env = {"REALM_COORDINATOR": "10.0.0.2:1234", "REALM_NUM_PROCESSES": "4", "REALM_PROCESS_ID": "3"}
  plan = dist.plan_initialize("10.0.0.9:55", 2, 1, env=env)
  assert plan == dist.DistributedPlan("explicit", "10.0.0.9:55", 2, 1)


@pytest.mark.parametrize("env,message", [
    ({"REALM_COORDINATOR": "10.0.0.2:1234"}, "missing REALM_NUM_PROCESSES, REALM_PROCESS_ID"),
    ({"REALM_COORDINATOR": "10.0.0.2", "REALM_NUM_PROCESSES": "2", "REALM_PROCESS_ID": "0"},
     "must be host:port"),
    ({"REALM_COORDINATOR": "h:1", "REALM_NUM_PROCESSES": "2", "REALM_PROCESS_ID": "2"},
     r"process_id=2 must lie in \[0, num_processes=2\)"),
    ({"REALM_COORDINATOR": "h:1", "REALM_NUM_PROCESSES": "two", "REALM_PROCESS_ID": "0"},
     "REALM_NUM_PROCESSES='two' is not an integer"),
])
def test_plan_errors_are_actionable(env, message):
  with pytest.raises(ValueError, match=message):
    dist.plan_initialize(env=env)


def test_single_process_is_a_no_op(monkeypatch):
  for name in ("REALM_COORDINATOR", "REALM_NUM_PROCESSES", "REALM_PROCESS_ID",
               "REALM_DISTRIBUTED_AUTO", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert dist.maybe_initialize() == dist.DistributedPlan("single")
  assert dist.is_main_process()
