"""The Pallas splash attention kernel (TPU; interpreted elsewhere), one shard per device.

Axis legend as in `realm_jax.model` (B batch, T query length, S key length,
K kv heads, g query heads per kv head, H head dim).

A pallas_call is opaque to XLA's partitioner: on a mesh it would gather its
operands and run the whole batch on every device. So under an active mesh of
more than one device (`jax.set_mesh`, with flax's logical axis rules, as
`train.sharding.use_mesh` sets both) the kernel runs inside `jax.shard_map`:
B split over the mesh axes the logical "batch" axis maps to, K over those of
"kv_heads", each only as far as it divides; T and H whole. Rows and kv heads
attend independently, so every device runs the kernel on its own rows and
heads and the forward needs no collective. Without a mesh (or rules) the
kernel is called directly.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

SPLASH_BLOCKS = (512, 256, 128)   # splash tiles: multiples of the TPU's 128 lanes


def _splash_kernel(heads: int, length: int, interpret: bool):
  """Causal splash MQA kernel ([heads, length, H] queries over one kv head), tiles of the
  largest of SPLASH_BLOCKS dividing `length`. Built in each trace: its mask tables are
  that trace's values (jax caches the mask processing itself)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b = next(b for b in SPLASH_BLOCKS if length % b == 0)
  sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                        block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length))] * heads)
  return sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def _split_axes(size: int, axes, mesh) -> tuple[str, ...]:
  """The leading mesh axes of a logical axis's `axes` (a name, a tuple, or None) whose
  sizes multiply to a divisor of `size`: the dimension splits over those only."""
  kept, n = [], 1
  for axis in (axes,) if isinstance(axes, str) else (axes or ()):
    if axis not in mesh.shape or size % (n * mesh.shape[axis]):
      break
    kept.append(axis)
    n *= mesh.shape[axis]
  return tuple(kept)


def splash_specs(batch: int, kv_heads: int) -> tuple[P, P, P] | None:
  """(q [B, T, K, g, H], k / v [B, S, K, H], kv mask [B, S]) PartitionSpecs of the
  per-device splash call on the active mesh, or None (no mesh of more than one
  device, or nothing splits: call the kernel directly)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  logical = nn.logical_to_mesh_axes(("batch", "kv_heads"))  # flax's active rules
  b_axes, k_axes = (_split_axes(n, a, mesh) for n, a in zip((batch, kv_heads), logical))
  if math.prod(mesh.shape[a] for a in b_axes + k_axes) == 1:
    return None
  b, k = b_axes or None, k_axes or None
  return P(b, None, k, None, None), P(b, None, k, None), P(b, None)


def splash_attention(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS, interpret: bool = False):
  """The Pallas splash kernel, q pre-scaled by 1/sqrt(H) (it scales nothing), a kv head's
  g query heads as one MQA call (vmapped over B and K). Left padding as segment ids (pad
  0, real 1; and-ed with the causal mask): a real query sees no pad key, a pad query the
  pads up to itself, so no row is empty. T is rounded up to a multiple of 128 with pad
  slots on the right (causality hides them from every real slot), cut off after.

  On a mesh, under `jax.shard_map` with the `splash_specs` split (rows over the batch
  axes, kv heads over the tensor axis): each device runs the kernel on its own rows
  and heads, gathers nothing. `check_vma=False`: the kernel's output types carry no
  varying-axes annotation (the splitting makes every output vary like its inputs)."""
  specs = splash_specs(q_BTKgH.shape[0], q_BTKgH.shape[2])
  local = lambda q, k, v, m: _splash_local(q, k, v, m, interpret)
  if specs is None:
    return local(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS)
  q_spec, kv_spec, mask_spec = specs
  sharded = jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(),
                          in_specs=(q_spec, kv_spec, kv_spec, mask_spec), out_specs=q_spec,
                          check_vma=False)
  return sharded(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS)


def _splash_local(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS, interpret: bool):
  """`splash_attention` on one device's operands (the whole batch without a mesh)."""
  from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds
  B, T, K, g, H = q_BTKgH.shape
  Tp = -(-T // SPLASH_BLOCKS[-1]) * SPLASH_BLOCKS[-1]
  kernel = _splash_kernel(g, Tp, interpret)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T)) + ((0, 0),) * (x.ndim - 2))
  scale = jnp.asarray(1.0 / math.sqrt(H), q_BTKgH.dtype)
  q_BKgTH = pad(q_BTKgH * scale).transpose(0, 2, 3, 1, 4)
  k_BKSH, v_BKSH = pad(k_BSKH).transpose(0, 2, 1, 3), pad(v_BSKH).transpose(0, 2, 1, 3)
  seg_BS = pad(kv_mask_BS).astype(jnp.int32)
  one = lambda q, k, v, seg: kernel(q, k, v, segment_ids=SegmentIds(q=seg, kv=seg))
  out_BKgTH = jax.vmap(jax.vmap(one, (0, 0, 0, None)))(q_BKgTH, k_BKSH, v_BKSH, seg_BS)
  return out_BKgTH.transpose(0, 3, 1, 2, 4)[:, :T]
