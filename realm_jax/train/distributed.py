"""Multi-process start-up: one JAX process per host, joined before any device query.

`maybe_initialize` must run before anything touches `jax.devices()` (the CLI
calls it first). It decides, in this order:

1. explicit arguments or the environment
     REALM_COORDINATOR=host:port  REALM_NUM_PROCESSES=N  REALM_PROCESS_ID=i
   -> `jax.distributed.initialize(host:port, N, i)` (GPU clusters, CPU tests);
2. a Cloud TPU pod slice: `REALM_DISTRIBUTED_AUTO=1` (set by `tpu/launch.py`
   on every worker) or `TPU_WORKER_HOSTNAMES` listing several hosts
   -> `jax.distributed.initialize()` with no arguments; JAX discovers the
   coordinator, process count and id from the TPU metadata;
3. otherwise a single process: nothing to do.

Every process then runs the same program; `is_main_process()` guards the host
side effects that must happen once (logs, metrics files, plots). Orbax
coordinates multi-host checkpoint writes itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping

import jax
from orbax.checkpoint import multihost as ocp_multihost

log = logging.getLogger(__name__)

ENV_COORDINATOR = "REALM_COORDINATOR"
ENV_NUM_PROCESSES = "REALM_NUM_PROCESSES"
ENV_PROCESS_ID = "REALM_PROCESS_ID"
ENV_AUTO = "REALM_DISTRIBUTED_AUTO"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
  """What `maybe_initialize` will do. mode: 'single', 'explicit' or 'auto'."""
  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int_or_none(value: str | int | None, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def plan_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None,
                    env: Mapping[str, str] | None = None) -> DistributedPlan:
  """Pure decision from arguments and environment (arguments win over env)."""
  env = os.environ if env is None else env
  coord = coordinator_address or env.get(ENV_COORDINATOR) or None
  n = num_processes if num_processes is not None else _int_or_none(
      env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _int_or_none(
      env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
  if coord or n is not None or pid is not None:
    missing = [name for name, v in ((ENV_COORDINATOR, coord), (ENV_NUM_PROCESSES, n),
                                    (ENV_PROCESS_ID, pid)) if v is None]
    if missing:
      raise ValueError(f"multi-process run needs coordinator, process count and id; missing "
                       f"{', '.join(missing)} (flags or environment)")
    if ":" not in coord:
      raise ValueError(f"{ENV_COORDINATOR}={coord!r} must be host:port")
    if n < 1 or not 0 <= pid < n:
      raise ValueError(f"process_id={pid} must lie in [0, num_processes={n})")
    if n == 1:
      return DistributedPlan("single")
    return DistributedPlan("explicit", coord, n, pid)
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if env.get(ENV_AUTO, "") not in ("", "0") or len(hosts) > 1:
    return DistributedPlan("auto")
  return DistributedPlan("single")


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> DistributedPlan:
  """Join the multi-process job if one is configured; return what was done.

  Safe to call twice (the second call is a no-op).
  """
  plan = plan_initialize(coordinator_address, num_processes, process_id)
  if plan.mode == "single" or jax.distributed.is_initialized():
    return plan
  if plan.mode == "explicit":
    log.info("joining %d processes at %s as process %d", plan.num_processes,
             plan.coordinator_address, plan.process_id)
    host = plan.coordinator_address.rsplit(":", 1)[0].strip("[]")
    # A loopback coordinator listens on loopback only (JAX's default binds every interface).
    bind = plan.coordinator_address if host in LOOPBACK else None
    jax.distributed.initialize(plan.coordinator_address, plan.num_processes, plan.process_id,
                               coordinator_bind_address=bind)
  else:
    log.info("joining the TPU pod slice (jax.distributed auto-detection)")
    jax.distributed.initialize()
  return plan


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, metrics and plots."""
  return jax.process_index() == 0


_BARRIER_TIMEOUT_S = 30 * 60  # process 0 may train the tokenizer meanwhile
_barriers: dict[str, int] = {}


def barrier(name: str) -> None:
  """Waits until every process reaches this point (a no-op in a single process).

  The wait goes through the coordination service (no device computation), so it
  holds for any skew between processes up to 30 minutes and creates no
  collective context while one process is still busy on the host. A name may be
  reused: each use waits at its own key.
  """
  if jax.process_count() == 1:
    return
  count = _barriers[name] = _barriers.get(name, 0) + 1
  sync = ocp_multihost.get_barrier_sync_fn()
  sync(key=f"realm_jax:{name}:{count}", timeout_ms=_BARRIER_TIMEOUT_S * 1000)
