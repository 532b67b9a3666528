"""Typed batches between the stages of an RL step.

Axis legend of the fields (each array field declares its axes once, in
`array(...)`; row slicing, shardings and the abstract batch of the memory
estimate are all read from that declaration):
  B prompts, G samples per prompt, N = B * G completion rows (prompt-major:
  rows b*G .. b*G+G-1 are prompt b's), P prompt tokens (a left-padded bucket),
  T tokens of a row (prompt bucket then the completion slots), L = T - 1 log-prob
  slots (`logp[:, t]` scores token t+1), R reward terms, K route slots per prompt,
  BK = B * K route rows (prompt-major), S tokens of a route row.

The leading axis of every array is its *row axis* (N, B or BK). Taking whole
groups b of a batch (`take_groups`) takes rows b of B-rows, rows b*G + g of
N-rows and rows b*K + k of BK-rows. On a mesh every field is split on its
leading axis (`shardings`). The sampler's output is `model.sampling.Rollout`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# The row axes: N rows come G per prompt, B rows one per prompt, BK rows K per prompt.
ROW_AXES = ("N", "B", "BK")


def array(*axes: str, dtype: Any, default: Any = dataclasses.MISSING):
  """A pytree field holding a `dtype` array with these axes (the first is its row axis)."""
  if axes[0] not in ROW_AXES:
    raise ValueError(f"row axis {axes[0]!r} not in {ROW_AXES}")
  return flax.struct.field(metadata={"axes": axes, "dtype": dtype}, default=default)


def nested(cls: type, default: Any = None):
  """A pytree field holding another batch type (None when absent)."""
  return flax.struct.field(metadata={"batch": cls}, default=default)


def static(rows: str | None = None, **kwargs):
  """Host-side values that are not arrays (not traced); `rows`: a list with one entry per
  row of that axis (sliced and concatenated like the arrays)."""
  return flax.struct.field(pytree_node=False, metadata={"rows": rows}, **kwargs)


@flax.struct.dataclass
class PromptBatch:
  """The prompts of one step (host side): EAAI decisions, MRPV routes, tokens.

  `texts[b]` is prompt b, `route_texts[b]` the routes it shows (labels[b, :k]
  their labels, route_mask[b, :k] True), `examples[b]` its question.
  """
  tokens: np.ndarray = array("B", "P", dtype=jnp.int32)
  mask: np.ndarray = array("B", "P", dtype=jnp.int32)
  show: np.ndarray = array("B", dtype=jnp.bool_)  # carries routes
  labels: np.ndarray = array("B", "K", dtype=jnp.bool_)
  route_mask: np.ndarray = array("B", "K", dtype=jnp.bool_)
  texts: list = static("B", default=())
  route_texts: list = static("B", default=())
  examples: list = static("B", default=())
  num_routes: int = static(default=0)  # EAAI's route count this step
  prefix_fraction: float = static(default=1.0)
  too_long: int = static(default=0)  # prompts cut to the largest bucket


@flax.struct.dataclass
class Completions:
  """A rollout on the host (all-gathered across processes) with its decoded texts.

  `logp` is what the sampler recorded for each token: log q, q the distribution
  it sampled from (see `rl.step`); 0 outside the completion.
  """
  tokens: np.ndarray = array("N", "T", dtype=jnp.int32)
  mask: np.ndarray = array("N", "T", dtype=jnp.bool_)
  completion_mask: np.ndarray = array("N", "T", dtype=jnp.bool_)
  logp: np.ndarray = array("N", "T", dtype=jnp.float32)
  lengths: np.ndarray = array("N", dtype=jnp.int32)
  truncated: np.ndarray = array("N", dtype=jnp.bool_)
  texts: list = static("N", default=())


@flax.struct.dataclass
class RouteBatch:
  """Teacher-forced routes of the MRPV contrast term (question context, then one route)."""
  tokens: jax.Array = array("BK", "S", dtype=jnp.int32)
  mask: jax.Array = array("BK", "S", dtype=jnp.int32)
  loss_mask: jax.Array = array("BK", "S", dtype=jnp.int32)  # 1 on the route's own tokens
  ref_logp: jax.Array = array("B", "K", dtype=jnp.float32)  # reference sequence log-likelihoods
  labels: jax.Array = array("B", "K", dtype=jnp.bool_)  # route is positive
  valid: jax.Array = array("B", "K", dtype=jnp.bool_)  # slot holds a shown route


@flax.struct.dataclass
class UpdateBatch:
  """What the jitted update reads: one minibatch of rollouts and their scores.

  `completion_mask` is the loss mask (generated tokens of the rows that count).
  `old_logp` is present when a rollout feeds several updates (else the current
  log-probs, stop-gradient, are the old ones); `route` when the contrast term trains.
  """
  tokens: jax.Array = array("N", "T", dtype=jnp.int32)
  mask: jax.Array = array("N", "T", dtype=jnp.bool_)
  completion_mask: jax.Array = array("N", "T", dtype=jnp.int32)
  adv: jax.Array = array("N", dtype=jnp.float32)
  ref_logp: jax.Array = array("N", "L", dtype=jnp.float32)
  sampler_logp: jax.Array | None = array("N", "L", dtype=jnp.float32, default=None)
  old_logp: jax.Array | None = array("N", "L", dtype=jnp.float32, default=None)
  route: RouteBatch | None = nested(RouteBatch)


@flax.struct.dataclass
class ScoredBatch:
  """Host-side scores of a rollout (numpy).

  rewards_NR[:, r] is reward `names[r]` (unweighted); reward_N the weighted
  sum (minus the KL penalty under `kl_in_reward`); adv_N the advantages; keep_N
  the rows that enter the loss (zero-variance filtering, truncation masking).
  """
  rewards_NR: np.ndarray = array("N", "R", dtype=jnp.float32)
  reward_N: np.ndarray = array("N", dtype=jnp.float32)
  adv_N: np.ndarray = array("N", dtype=jnp.float32)
  keep_N: np.ndarray = array("N", dtype=jnp.bool_)
  names: tuple[str, ...] = static(default=())
  metrics: dict = static(default_factory=dict)


def _arrays(cls: type):
  return [f for f in dataclasses.fields(cls) if "axes" in f.metadata or "batch" in f.metadata]


def _row_lists(cls: type):
  return [f for f in dataclasses.fields(cls) if f.metadata.get("rows")]


def take_groups(batch: Any, groups_b: np.ndarray, G: int, K: int) -> Any:
  """The rows of prompts `groups_b` (in that order) of every field, by its row axis."""
  groups_b = np.asarray(groups_b, np.int64)
  per = {"N": G, "B": 1, "BK": K}
  rows = lambda axis: (groups_b[:, None] * per[axis] + np.arange(per[axis])).reshape(-1)
  out = {}
  for f in _arrays(type(batch)):
    v = getattr(batch, f.name)
    if v is None:
      out[f.name] = None
    elif "batch" in f.metadata:
      out[f.name] = take_groups(v, groups_b, G, K)
    else:
      out[f.name] = v[rows(f.metadata["axes"][0])]
  for f in _row_lists(type(batch)):
    v = getattr(batch, f.name)
    out[f.name] = [v[i] for i in rows(f.metadata["rows"])]
  return batch.replace(**out)


def concat(batches: Sequence[Any]) -> Any:
  """Row-wise concatenation of host batches of one type (row lists too).

  Arrays whose second axis is P or T (left-padded token axes) are first padded
  on the left with zeros to the longest; other static values come from the first.
  """
  first, out = batches[0], {}
  for f in _arrays(type(first)):
    vs = [getattr(b, f.name) for b in batches]
    if vs[0] is None or "batch" in f.metadata:
      out[f.name] = None if vs[0] is None else concat(vs)
      continue
    if f.metadata["axes"][1:2] in (("P",), ("T",)):
      width = max(v.shape[1] for v in vs)
      vs = [np.pad(v, ((0, 0), (width - v.shape[1], 0))) for v in vs]
    out[f.name] = np.concatenate(vs, axis=0)
  for f in _row_lists(type(first)):
    out[f.name] = [x for b in batches for x in getattr(b, f.name)]
  return first.replace(**out)


def shardings(batch: Any, row_sharding: Any) -> Any:
  """A tree like `batch` with each array's sharding: every declared array is split on its
  row axis (`row_sharding`, a leading-axis sharding of the mesh's batch axes)."""
  out = {}
  for f in _arrays(type(batch)):
    v = getattr(batch, f.name)
    out[f.name] = (None if v is None else shardings(v, row_sharding) if "batch" in f.metadata
                   else row_sharding)
  return batch.replace(**out)


def abstract(cls: type, dims: dict[str, int], sharding: Any = None,
             absent: Sequence[str] = ()) -> Any:
  """`cls` of ShapeDtypeStructs with the shapes its fields declare over `dims`.

  Fields named in `absent` (and nested batches named there) are None.
  """
  out = {}
  for f in _arrays(cls):
    if f.name in absent:
      out[f.name] = None
    elif "batch" in f.metadata:
      out[f.name] = abstract(f.metadata["batch"], dims, sharding)
    else:
      shape = tuple(dims[a] for a in f.metadata["axes"])
      out[f.name] = jax.ShapeDtypeStruct(shape, f.metadata["dtype"], sharding=sharding)
  return cls(**out)


def check_shapes(batch: Any, dims: dict[str, int] | None = None) -> dict[str, int]:
  """Checks that every array agrees with the sizes of its declared axes; returns them."""
  dims = dict(dims or {})
  for f in _arrays(type(batch)):
    v = getattr(batch, f.name)
    if v is None:
      continue
    if "batch" in f.metadata:
      dims = check_shapes(v, dims)
      continue
    axes = f.metadata["axes"]
    if len(axes) != np.ndim(v):
      raise ValueError(f"{type(batch).__name__}.{f.name}: expected axes {axes}, got shape "
                       f"{np.shape(v)}")
    for a, n in zip(axes, np.shape(v)):
      if dims.setdefault(a, n) != n:
        raise ValueError(f"{type(batch).__name__}.{f.name}: axis {a} has {n} entries, other "
                         f"fields have {dims[a]}")
  return dims
