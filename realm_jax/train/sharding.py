"""Device mesh, logical-axis rules and the shardings of params, state and batches.

Mesh axes are ('data', 'fsdp', 'tensor'), all `AxisType.Auto` (the compiler
propagates shardings; `jit` in/out shardings and the model's
`with_logical_constraint` calls pin them at a few named points).

Logical names (declared next to the params in `model.py`) map to mesh axes
through `RULES`, a tuple of (logical, mesh axis) pairs. Flax resolves a spec
left to right and never uses one mesh axis twice in an array, so activations
[B, T, D] shard B over ('data', 'fsdp') and leave D whole, while params shard
D ('embed') over 'fsdp' (ZeRO-3 style):

  batch -> ('data', 'fsdp')      embed -> 'fsdp'
  q_heads, kv_heads, mlp, vocab -> 'tensor'
  layers, norm, head_dim, length -> replicated

Typical wiring (the training loop does this once):

  mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))
  check_divisibility(model_cfg, mesh, batch_size)
  p_sh = param_shardings(model_cfg, mesh)
  params = init_params_sharded(model_cfg, rng, mesh)
  with use_mesh(mesh):
    step = jax.jit(train_step, in_shardings=..., out_shardings=...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from realm_jax import model

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]
RULES: Rules = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("head_dim", None),
    ("length", None),
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the ('data', 'fsdp', 'tensor') mesh axes; -1 = all remaining devices.

  Checked against the device count only in `resolve` / `make_mesh`, so a config
  can be built before `jax.distributed` is initialised.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = self.sizes
    for name, size in zip(MESH_AXES, sizes):
      if size == 0 or size < -1:
        raise ValueError(f"MeshConfig.{name}={size}; use a positive size or -1 (all remaining devices)")
    if sizes.count(-1) > 1:
      raise ValueError(f"MeshConfig{sizes}: at most one axis may be -1 (all remaining devices)")

  @property
  def sizes(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)

  def resolve(self, device_count: int | None = None) -> tuple[int, int, int]:
    """Concrete axis sizes whose product is `device_count` (default: all devices)."""
    n = jax.device_count() if device_count is None else device_count
    fixed = math.prod(s for s in self.sizes if s != -1)
    if -1 in self.sizes:
      if n % fixed:
        raise ValueError(
            f"MeshConfig(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}): the fixed axes "
            f"multiply to {fixed}, which does not divide the {n} devices; pick sizes whose product "
            f"divides {n} (divisors: {_divisors(n)})")
      return tuple(n // fixed if s == -1 else s for s in self.sizes)
    if fixed != n:
      raise ValueError(
          f"MeshConfig(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) uses {fixed} devices "
          f"but {n} are present; make data*fsdp*tensor == {n} or set one axis to -1")
    return self.sizes


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh of Auto axes over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.resolve(len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = RULES) -> Iterator[Mesh]:
  """Activate `mesh` and the logical rules so `with_logical_constraint` binds.

  Enter it outside `jit` (around tracing/compiling the step functions). Inside
  it, arrays created with `jnp` are committed replicated on the mesh, so place
  inputs with `device_put(x, sharding)` (or pass numpy) before calling a jit
  whose in_shardings differ.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield mesh


def logical_sharding(mesh: Mesh, logical: P, rules: Rules = RULES) -> NamedSharding:
  """NamedSharding for one array given its logical PartitionSpec."""
  return nn.logical_to_mesh_sharding(logical, mesh, rules)


def param_shardings(model_cfg: model.ModelConfig, mesh: Mesh, rules: Rules = RULES) -> Any:
  """NamedSharding tree with the params' structure."""
  return nn.logical_to_mesh_sharding(model.logical_axes(model_cfg), mesh, rules)


def shard_params(params: Any, shardings: Any) -> Any:
  """Place an existing (host or device) params tree onto `shardings`."""
  return jax.device_put(params, shardings)


def init_params_sharded(model_cfg: model.ModelConfig, rng: jax.Array, mesh: Mesh,
                        rules: Rules = RULES) -> Any:
  """`model.init_params` compiled with out_shardings: never materialised whole."""
  shardings = param_shardings(model_cfg, mesh, rules)
  init = jax.jit(model.init_params, static_argnums=0, out_shardings=shardings)
  return init(model_cfg, rng)


def abstract_params(model_cfg: model.ModelConfig, shardings: Any | None = None) -> Any:
  """ShapeDtypeStruct tree of the params, carrying `shardings` when given."""
  shapes = jax.eval_shape(lambda: model.init_params(model_cfg, jax.random.key(0)))
  return shapes if shardings is None else with_shardings(shapes, shardings)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """Attach a sharding tree to a ShapeDtypeStruct tree (restore targets, lowering)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_params_tree: Any,
                        params_shardings: Any) -> Any:
  """Sharding tree for `optimizer.init(params)`.

  Leaves that optax itself marks as param-shaped (moments, traces) take their
  param's sharding; everything else (step counts, scalars, factored stats)
  is replicated.
  """
  mesh = jax.tree.leaves(params_shardings)[0].mesh
  state = jax.eval_shape(optimizer.init, abstract_params_tree)

  def per_param(leaf, param, sharding):
    same = getattr(leaf, "shape", None) == param.shape
    return sharding if same else replicated(mesh)

  return optax.tree_map_params(
      optimizer, per_param, state, abstract_params_tree, params_shardings,
      transform_non_params=lambda _: replicated(mesh))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = RULES) -> NamedSharding:
  """Sharding of a batch-major array ([B], [B, T], [B, T, ...]): B over data+fsdp."""
  return logical_sharding(mesh, P("batch", *([None] * (ndim - 1))), rules)


def _divisors(n: int) -> tuple[int, ...]:
  return tuple(d for d in range(1, n + 1) if n % d == 0)


def check_divisibility(model_cfg: model.ModelConfig, mesh: Mesh, batch_size: int) -> None:
  """Raise one message listing every dimension the mesh cannot split evenly.

  Checked per mesh axis against every dimension `RULES` shards over it; the
  suggestion lists sizes that divide all of them.
  """
  c = model_cfg
  dims = {
      "tensor": [("num_heads", c.num_heads), ("num_kv_heads", c.num_kv_heads),
                 ("mlp_dim", c.mlp_dim), ("vocab_size", c.vocab_size)],
      "fsdp": [("d_model", c.d_model)],
  }
  shape = dict(mesh.shape)
  problems = []
  for axis, named in dims.items():
    size = shape.get(axis, 1)
    bad = [(n, v) for n, v in named if v % size]
    if bad:
      ok = _divisors(math.gcd(*(v for _, v in named)))
      for name, value in bad:
        problems.append(f"{name}={value} is not divisible by mesh {axis}={size}; "
                        f"choose {axis} in {ok}")
  batch_shards = shape.get("data", 1) * shape.get("fsdp", 1)
  if batch_size % batch_shards:
    problems.append(f"batch_size={batch_size} is not divisible by mesh data*fsdp={batch_shards}; "
                    f"use a multiple of {batch_shards} or shrink data/fsdp")
  if problems:
    raise ValueError("Model/mesh mismatch:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------
# Compiled memory estimate.


def compiled_memory_estimate(jitted_fn: Any, *args: Any, **kwargs: Any) -> dict[str, int]:
  """Per-device bytes of a jitted function, from XLA's compiled memory analysis.

  Args may be real arrays or ShapeDtypeStructs (with shardings), so the estimate
  costs a compile, not an allocation. total = arguments + outputs + temps -
  aliased (donated buffers reused as outputs).
  """
  ma = jitted_fn.lower(*args, **kwargs).compile().memory_analysis()
  if ma is None:
    raise RuntimeError(f"the {jax.default_backend()} backend returned no memory analysis")
  out = {
      "argument_bytes": int(ma.argument_size_in_bytes),
      "output_bytes": int(ma.output_size_in_bytes),
      "temp_bytes": int(ma.temp_size_in_bytes),
      "alias_bytes": int(ma.alias_size_in_bytes),
      "generated_code_bytes": int(ma.generated_code_size_in_bytes),
  }
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                        - out["alias_bytes"])
  return out


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
  """The device's memory limit from `memory_stats()`; for CPU devices, which report none,
  the host's memory (its cgroup limit when lower), the most one CPU device can use (fake
  CPU devices share it: a mesh over several is checked leniently); None when unknown."""
  device = jax.local_devices()[0] if device is None else device
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    return host_memory_bytes()
  return None


def host_memory_bytes() -> int | None:
  """Physical memory, or the cgroup's memory.max when that is lower (None when unknown)."""
  try:
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
  except (ValueError, OSError, AttributeError):
    limits = []
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      value = f.read().strip()
    if value.isdigit():
      limits.append(int(value))
  except OSError:
    pass
  return min(limits) if limits else None


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def check_fits(estimate: dict[str, int], device_memory: int | None = None,
               fraction: float = 1.0) -> bool:
  """Raise MemoryError if `estimate['total_bytes']` exceeds fraction * device memory.

  Returns True when checked and it fits, False when the device reports no
  memory limit (the check is skipped with a logged note).
  """
  limit = device_memory_bytes() if device_memory is None else device_memory
  if limit is None:
    log.info("check_fits: %s reports no memory limit; skipping the fit check (estimate %s)",
             jax.local_devices()[0].device_kind, _gib(estimate["total_bytes"]))
    return False
  budget = fraction * limit
  if estimate["total_bytes"] > budget:
    raise MemoryError(
        f"estimated {_gib(estimate['total_bytes'])} per device (arguments "
        f"{_gib(estimate['argument_bytes'])}, outputs {_gib(estimate['output_bytes'])}, temps "
        f"{_gib(estimate['temp_bytes'])}, donated {_gib(estimate['alias_bytes'])}) exceeds "
        f"{fraction:.0%} of the device memory {_gib(limit)}; shrink the batch, raise the stage's "
        f"microbatches, enable model.remat, or shard more (fsdp/tensor)")
  return True


def host_array_to_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Assemble a global array from each process's slice of the batch axis.

  `x` holds this process's rows (global rows / process_count); single-process
  this is `device_put`.
  """
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_process_local_data(sharding, x)


def put(x: Any, sharding: NamedSharding) -> jax.Array:
  """Place `x` with `sharding`: host values must be identical on every process.

  A jax.Array is resharded (`device_put`); a host array becomes a global
  array whose addressable shards each process fills from its own copy.
  """
  if isinstance(x, jax.Array):
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(x: Any) -> np.ndarray:
  """A global array's full value on this host (all-gathered across processes if needed)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def leading_axis_sharding(mesh: Mesh, rules: Rules = RULES) -> NamedSharding:
  """Shards only the leading (batch) axis of arrays of any rank, for batch dicts."""
  return logical_sharding(mesh, P("batch"), rules)
