"""Causal self-attention: the cache-free path (training, scoring) by one of four
kernels, and the cached (decode) path over a KV cache.

Axis legend as in `realm_jax.model` (B batch, T query length, S key length,
K kv heads, g query heads per kv head, H head dim).

Masks, the same on every path: batches are left padded; the query in slot i
sees the valid key slots j <= i. Pad-slot queries are read by nobody; each
kernel gives them finite values of its own.

Cache-free kernels (`self_attention`; `ModelConfig.attention_impl`, "auto" by
backend): "tiled" `causal_attention`, tuned for XLA:CPU (the CPU default);
"xla" / "cudnn" `jax.nn.dot_product_attention` (cuDNN's fused kernel: the GPU
default for bf16/fp16); "splash" the Pallas TPU kernel (the TPU default;
interpreted elsewhere; `realm_jax.model.splash`, one shard per device on a
mesh). The cached path (decode, prefill into a cache) is one masked softmax on
every backend: it reads the decode cache in its own [B, K, H, S] / [B, K, S, H]
layouts, which a fused kernel would copy every step.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from realm_jax.model.config import ModelConfig
from realm_jax.model.layers import Linear, RMSNorm, _dt, apply_rope
from realm_jax.model.splash import splash_attention

ATTENTION_BLOCK_BYTES = 4 << 20  # CPU: fp32 logits of one attention tile (about an L2 cache)
ATTENTION_MIN_QUERY_BLOCK = 64    # CPU: shortest automatic query block
ATTENTION_ROW_CHAINS = 2          # CPU: independent row groups per block
ATTENTION_SAVE_BYTES = 16 << 20   # CPU: largest saved exp(logits - max) of one call


class AttentionTiling(NamedTuple):
  """How `causal_attention` splits its work; every choice gives the same numbers."""
  rows: int                 # batch rows per block; blocks run one after another (`lax.map`)
  parts: int = 1            # causal query blocks per sequence
  chains: int = 1           # independent row groups within a block
  save_probs: bool = False  # keep the forward's exp(logits - max) tiles for the backward


def _largest_divisor(n: int, at_most: int) -> int:
  d = max(1, min(at_most, n))
  while n % d:
    d -= 1
  return d


def attention_tiling(cfg: ModelConfig, batch: int, length: int,
                     backend: str | None = None) -> AttentionTiling:
  """The `AttentionTiling` of `causal_attention` over [batch, length] self-attention.

  Configured values win (clipped to divisors). Automatic on CPU: query blocks
  of at least ATTENTION_MIN_QUERY_BLOCK slots (at most 8 blocks); as many
  rows as keep the largest block's [rows, N, T / blocks, S] fp32 logits
  within ATTENTION_BLOCK_BYTES; ATTENTION_ROW_CHAINS row groups per block;
  and saved exp tiles when all of them (the whole batch's, per layer) fit in
  ATTENTION_SAVE_BYTES. Chains and saved tiles go together: on two cores the
  pair measured ~3% off the benchmark's training step (paired A/B; either
  alone, none). On accelerators: one block of the whole batch, recomputed
  (their fused attention kernels are the way to tile there; `backend`: the default one).
  """
  rows, parts = cfg.attention_block_rows, cfg.attention_query_blocks
  chains, save = cfg.attention_row_chains, cfg.attention_save_probs
  cpu = (backend or jax.default_backend()) == "cpu"
  if parts is None:
    parts = min(8, length // ATTENTION_MIN_QUERY_BLOCK) if cpu else 1
  parts = _largest_divisor(length, parts)
  if rows is None:
    per_row = 4 * cfg.num_heads * (length // parts) * length
    rows = max(1, ATTENTION_BLOCK_BYTES // per_row) if cpu else batch
  rows = _largest_divisor(batch, rows)
  chains = _largest_divisor(rows, (ATTENTION_ROW_CHAINS if cpu else 1) if chains is None else chains)
  if save is None:
    tiles = length * length * (parts + 1) // (2 * parts)  # (query, key) slots the blocks compute
    save = cpu and 4 * batch * cfg.num_heads * tiles <= ATTENTION_SAVE_BYTES
  return AttentionTiling(rows, parts, chains, bool(save))


def _by_blocks(fn, rows: int, chains: int, *xs):
  """fn over blocks of `rows` batch rows (`lax.map`), outputs re-joined along the batch;
  within a block, fn runs on `chains` groups of rows as independent computations.

  Block j holds rows j, j + n, j + 2n, ... (n = B / rows blocks): a batch
  sharded over devices keeps every block spread over all of them. Arguments
  and outputs are pytrees of arrays with the batch leading.
  """
  batch = jax.tree.leaves(xs)[0].shape[0]
  if chains > 1:
    fn = _in_chains(fn, chains)
  if rows >= batch:
    return fn(*xs)
  n = batch // rows
  split = lambda x: jnp.swapaxes(x.reshape(rows, n, *x.shape[1:]), 0, 1)
  join = lambda y: jnp.swapaxes(y, 0, 1).reshape(batch, *y.shape[2:])
  out = jax.lax.map(lambda blk: fn(*blk), jax.tree.map(split, xs))
  return jax.tree.map(join, out)


def _in_chains(fn, chains: int):
  """fn applied to `chains` contiguous groups of batch rows separately, outputs concatenated.

  The groups share no op, so XLA:CPU's executor runs their (mostly
  single-threaded, small) attention ops on different cores at once."""

  def chained(*xs):
    size = jax.tree.leaves(xs)[0].shape[0] // chains
    outs = [fn(*jax.tree.map(lambda x: x[i * size:(i + 1) * size], xs)) for i in range(chains)]
    return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=0), *outs)

  return chained


def _to_heads(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS):
  """Head-major operands, made once per block of rows: q * 1/sqrt(H) as [B, K, T, g, H],
  k and v as [B, K, S, H], and the mask as an additive fp32 bias [B, T, S] (measured
  faster here than a select over the logits). The query blocks slice these
  instead of each transposing its own prefix of k and v (forward+backward
  measured ~5% faster on 4 x 256 tokens and ~14% on 8 x 256 here, and ~14%
  on one core)."""
  scale = 1.0 / math.sqrt(q_BTKgH.shape[-1])
  q_BKTgH = (q_BTKgH * jnp.asarray(scale, q_BTKgH.dtype)).transpose(0, 2, 1, 3, 4)
  bias_BTS = jnp.where(allowed_BTS, 0.0, -1e30).astype(jnp.float32)
  return q_BKTgH, k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3), bias_BTS


def _logits(q_BKTgH, k_BKSH, bias_BTS):
  """Scaled q.k logits [B, K, T, g, S] (fp32) plus the mask bias."""
  logits_BKTgS = jnp.einsum("BKTgH,BKSH->BKTgS", q_BKTgH, k_BKSH,
                            preferred_element_type=jnp.float32)
  return logits_BKTgS + bias_BTS[:, None, :, None, :]


def _query_blocks(parts: int, length: int):
  """(query slice, key slice) of each causal query block: block i sees keys up to its end."""
  step = length // parts
  return [(slice(i * step, (i + 1) * step), slice(0, (i + 1) * step)) for i in range(parts)]


def _parts_fwd(parts: int, save: bool, q_BTKgH, k_BSKH, v_BSKH, allowed_BTS):
  """(out [B, K, T, g, H], stats) over `parts` causal query blocks (keys after
  a block's last slot are never allowed). stats: (row max, 1 / row sum of
  exp(logits - max)), or with `save` (the per-block exp(logits - max) tiles,
  1 / row sum)."""
  q_BKTgH, k_BKSH, v_BKSH, bias_BTS = _to_heads(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS)
  outs, maxes, unnorms, inv_sums = [], [], [], []
  for t, s in _query_blocks(parts, q_BTKgH.shape[1]):
    logits_BKTgS = _logits(q_BKTgH[:, :, t], k_BKSH[:, :, s], bias_BTS[:, t, s])
    max_BKTg = jnp.max(logits_BKTgS, axis=-1)
    unnorm_BKTgS = jnp.exp(logits_BKTgS - max_BKTg[..., None])
    inv_sum_BKTg = 1.0 / jnp.sum(unnorm_BKTgS, axis=-1)
    out_BKTgH = jnp.einsum("BKTgS,BKSH->BKTgH", unnorm_BKTgS.astype(v_BSKH.dtype),
                           v_BKSH[:, :, s], preferred_element_type=jnp.float32)
    outs.append((out_BKTgH * inv_sum_BKTg[..., None]).astype(v_BSKH.dtype))
    maxes.append(max_BKTg)
    unnorms.append(unnorm_BKTgS)
    inv_sums.append(inv_sum_BKTg)
  cat = lambda xs: jnp.concatenate(xs, axis=2)  # T is axis 2
  return cat(outs), ((tuple(unnorms) if save else cat(maxes)), cat(inv_sums))


def _parts_bwd(parts: int, save: bool, q_BTKgH, k_BSKH, v_BSKH, allowed_BTS, out_BKTgH, stats,
               dout_BKTgH):
  """(dq, dk, dv) of `_parts_fwd`, from the unnormalised exp(logits - max):
  the saved tiles, or recomputed with the saved row max. Every 1/sum factor is
  applied per row (to dout, or in the dlogits epilogue), never as a separate
  pass. dk and dv are summed over the blocks as [B, K, H, S], the dots'
  natural output order, and transposed once at the end."""
  dt = q_BTKgH.dtype
  S, H = k_BSKH.shape[1], q_BTKgH.shape[-1]
  saved_or_max, inv_sum_BKTg = stats
  q_BKTgH, k_BKSH, v_BKSH, bias_BTS = _to_heads(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS)
  dout32_BKTgH = dout_BKTgH.astype(jnp.float32)
  # Softmax backward p (dp - sum_S p dp), where sum_S p dp = sum_H dout * out.
  rowdot_BKTg = jnp.sum(dout32_BKTgH * out_BKTgH.astype(jnp.float32), axis=-1)
  # p = unnorm * inv_sum (per row), so dv = unnorm^T (dout * inv_sum).
  dout_n_BKTgH = (dout32_BKTgH * inv_sum_BKTg[..., None]).astype(dt)
  dqs, dk_BKHS, dv_BKHS = [], 0.0, 0.0
  for i, (t, s) in enumerate(_query_blocks(parts, q_BTKgH.shape[1])):
    if save:
      unnorm_BKTgS = saved_or_max[i]
    else:
      unnorm_BKTgS = jnp.exp(_logits(q_BKTgH[:, :, t], k_BKSH[:, :, s], bias_BTS[:, t, s])
                             - saved_or_max[:, :, t, :, None])
    dv = jnp.einsum("BKTgH,BKTgS->BKHS", dout_n_BKTgH[:, :, t], unnorm_BKTgS.astype(dt),
                    preferred_element_type=jnp.float32)
    dprobs_BKTgS = jnp.einsum("BKTgH,BKSH->BKTgS", dout_BKTgH[:, :, t], v_BKSH[:, :, s],
                              preferred_element_type=jnp.float32)
    # d(logits) with the logits taken as (q * scale) . k: the scale goes on dq only.
    dlogits_BKTgS = (unnorm_BKTgS * (dprobs_BKTgS - rowdot_BKTg[:, :, t, :, None])
                     * inv_sum_BKTg[:, :, t, :, None]).astype(dt)
    dqs.append(jnp.einsum("BKTgS,BKSH->BKTgH", dlogits_BKTgS, k_BKSH[:, :, s],
                          preferred_element_type=jnp.float32))
    dk = jnp.einsum("BKTgH,BKTgS->BKHS", q_BKTgH[:, :, t], dlogits_BKTgS,
                    preferred_element_type=jnp.float32)
    pad = ((0, 0), (0, 0), (0, 0), (0, S - s.stop))
    dk_BKHS = dk_BKHS + jnp.pad(dk, pad)
    dv_BKHS = dv_BKHS + jnp.pad(dv, pad)
  dq_BTKgH = (jnp.concatenate(dqs, axis=2) * (1.0 / math.sqrt(H))).transpose(0, 2, 1, 3, 4)
  return (dq_BTKgH.astype(dt), dk_BKHS.transpose(0, 3, 1, 2).astype(k_BSKH.dtype),
          dv_BKHS.transpose(0, 3, 1, 2).astype(v_BSKH.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS, tiling: AttentionTiling):
  """softmax(q.k / sqrt(H) over the allowed slots) . v, as [B, K, T, g, H].

  Flash-attention's algebra without its tiling: the forward keeps the output
  and the row statistics (max, 1/sum); the backward recomputes the
  probabilities from them and uses sum_S p dp = sum_H dout * out, so no
  [B, K, T, g, S] tensor is saved between the passes, unless
  `tiling.save_probs` keeps the forward's exp tiles (short sequences, where
  recomputing costs more than the memory). Both passes run `tiling.rows`
  batch rows at a time, each block as `tiling.chains` independent row groups
  (see `attention_tiling`), and, with `tiling.parts` > 1 (self-attention,
  T = S, `parts` dividing T), `parts` query blocks that skip the keys after
  their last slot: about (parts + 1) / (2 parts) of the work. A row without
  any allowed slot averages the values its block sees (such rows are
  padding, read by nobody).
  """
  return _causal_attention_fwd(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS, tiling)[0]


def _causal_attention_fwd(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS, tiling):
  fwd = functools.partial(_parts_fwd, tiling.parts, tiling.save_probs)
  out, stats = _by_blocks(fwd, tiling.rows, tiling.chains, q_BTKgH, k_BSKH, v_BSKH, allowed_BTS)
  return out, (q_BTKgH, k_BSKH, v_BSKH, allowed_BTS, out, stats)


def _causal_attention_bwd(tiling, res, dout_BKTgH):
  bwd = functools.partial(_parts_bwd, tiling.parts, tiling.save_probs)
  dq, dk, dv = _by_blocks(bwd, tiling.rows, tiling.chains, *res, dout_BKTgH)
  return dq, dk, dv, None


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def _cudnn_capable(cfg: ModelConfig) -> bool:
  """bf16/fp16, H a multiple of 8 up to 128, a CUDA GPU of compute capability >= 8.0."""
  if cfg.dtype not in ("bfloat16", "float16") or cfg.head_dim % 8 or cfg.head_dim > 128:
    return False
  try:
    return float(jax.devices()[0].compute_capability) >= 8.0
  except (AttributeError, TypeError, ValueError):  # not a CUDA device
    return False


def resolve_attention_impl(cfg: ModelConfig, backend: str | None = None) -> str:
  """cfg.attention_impl; "auto" by backend (default jax.default_backend()): CPU "tiled",
  TPU "splash", GPU "cudnn" where cuDNN takes the shapes (`_cudnn_capable`), else "xla"."""
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return "tiled"
  if backend == "tpu":
    return "splash"
  return "cudnn" if _cudnn_capable(cfg) else "xla"


def self_attention(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS, cfg: ModelConfig):
  """Causal self-attention (T = S) of a left-padded batch, [B, T, K, g, H], by the kernel
  `resolve_attention_impl(cfg)` names: the query in slot i sees the valid slots j <= i.
  Real slots get the same numbers from every kernel up to rounding."""
  impl = resolve_attention_impl(cfg)
  B, T = kv_mask_BS.shape
  if impl == "tiled":
    causal_TS = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
    allowed_BTS = causal_TS[None] & kv_mask_BS[:, None, :]
    out_BKTgH = causal_attention(q_BTKgH, k_BSKH, v_BSKH, allowed_BTS, attention_tiling(cfg, B, T))
    return out_BKTgH.transpose(0, 2, 1, 3, 4)
  if impl == "splash":
    return splash_attention(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS,
                            interpret=jax.default_backend() != "tpu")
  return dot_product_attention(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS, impl)


def dot_product_attention(q_BTKgH, k_BSKH, v_BSKH, kv_mask_BS, implementation: str):
  """`jax.nn.dot_product_attention` ("xla" or "cudnn"), causal, pad keys masked out.

  Its grouped heads are ours (query head n = kv head n // g). A pad query's row has
  no allowed key; both implementations mask with a large finite negative, so it
  stays finite (XLA averages all values)."""
  B, T, K, g, H = q_BTKgH.shape
  out_BTNH = jax.nn.dot_product_attention(
      q_BTKgH.reshape(B, T, K * g, H), k_BSKH, v_BSKH, mask=kv_mask_BS[:, None, None, :],
      is_causal=True, implementation=implementation)
  return out_BTNH.reshape(B, T, K, g, H)


def cached_attention(q_BTKgH, keys, values, kv_mask_BS, cache_index, per_layer: bool):
  """The T queries in slots [cache_index, cache_index + T) over the S cache slots,
  [B, T, K, g, H]: one masked softmax. keys, values: [B, S, K, H], or with
  `per_layer` the decode layouts [B, K, H, S] and [B, K, S, H].

  Both dots produce their natural [B, K, (T, g), .] order (q's (T, g) order
  kept): XLA:CPU then copies no big logits/probs tensor and keeps the dots in
  its fast library; the small output is transposed after."""
  T, H = q_BTKgH.shape[1], q_BTKgH.shape[-1]
  k_spec, v_spec = ("BKHS", "BKSH") if per_layer else ("BSKH", "BSKH")
  S = values.shape[2 if per_layer else 1]
  q_slot = cache_index + jnp.arange(T)
  allowed_BTS = (jnp.arange(S)[None, None, :] <= q_slot[None, :, None]) & kv_mask_BS[:, None, :]
  logits_BKTgS = jnp.einsum(f"BTKgH,{k_spec}->BKTgS", q_BTKgH, keys,
                            preferred_element_type=jnp.float32) / math.sqrt(H)
  logits_BKTgS = jnp.where(allowed_BTS[:, None, :, None], logits_BKTgS, -1e30)
  probs_BKTgS = jax.nn.softmax(logits_BKTgS, axis=-1).astype(q_BTKgH.dtype)
  return jnp.einsum(f"BKTgS,{v_spec}->BKTgH", probs_BKTgS, values).transpose(0, 2, 1, 3, 4)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, kv_mask_BS, inv_freq, layer, cache, cache_index):
    c = self.cfg
    B, T, _ = x_BTD.shape
    N, K, H = c.num_heads, c.num_kv_heads, c.head_dim
    q_BTNH = Linear(N * H, ("embed", "q_heads"), c.qkv_bias, c, name="q_proj")(x_BTD).reshape(B, T, N, H)
    k_BTKH = Linear(K * H, ("embed", "kv_heads"), c.qkv_bias, c, name="k_proj")(x_BTD).reshape(B, T, K, H)
    v_BTKH = Linear(K * H, ("embed", "kv_heads"), c.qkv_bias, c, name="v_proj")(x_BTD).reshape(B, T, K, H)
    if c.qk_norm:
      q_BTNH = RMSNorm(c.rms_eps, _dt(c.param_dtype), "head_dim", name="q_norm")(q_BTNH)
      k_BTKH = RMSNorm(c.rms_eps, _dt(c.param_dtype), "head_dim", name="k_norm")(k_BTKH)
    q_BTNH = apply_rope(q_BTNH, positions_BT, inv_freq)
    k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq)

    # Key/value layouts: [B, S, K, H] without a cache or with the stacked
    # [L, B, S, K, H] cache; the layer-list (decode) cache holds keys as
    # [B, K, H, S] and values as [B, K, S, H], so both attention dots read it
    # with their batch axes (B, K) leading and need no transposed copy.
    per_layer = cache is not None and cache["k"].ndim == 4
    if cache is None:
      keys, values = k_BTKH, v_BTKH
    else:
      # Write this call's T keys at slots [cache_index, cache_index + T), in
      # place: into this layer's buffers, or into layer `layer` of the
      # carried [L, B, S, K, H] buffers.
      cdt = cache["k"].dtype
      if per_layer:
        new_k, new_v = k_BTKH.transpose(0, 2, 3, 1), v_BTKH.transpose(0, 2, 1, 3)
        k_at, v_at = (0, 0, 0, cache_index), (0, 0, cache_index, 0)
      else:
        new_k, new_v = k_BTKH[None], v_BTKH[None]
        k_at = v_at = (layer, 0, cache_index, 0, 0)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], new_k.astype(cdt), k_at),
               "v": jax.lax.dynamic_update_slice(cache["v"], new_v.astype(cdt), v_at)}
      keys = cache["k"] if per_layer else cache["k"][layer]
      values = cache["v"] if per_layer else cache["v"][layer]
      keys, values = keys.astype(x_BTD.dtype), values.astype(x_BTD.dtype)
    q_BTKgH = q_BTNH.reshape(B, T, K, N // K, H)
    if cache is None:  # training / scoring: a fused kernel (`self_attention`)
      out_BTKgH = self_attention(q_BTKgH, keys, values, kv_mask_BS, c)
    else:
      out_BTKgH = cached_attention(q_BTKgH, keys, values, kv_mask_BS, cache_index, per_layer)
    out_BTD = Linear(c.d_model, ("q_heads", "embed"), False, c, name="o_proj")(
        out_BTKgH.reshape(B, T, N * H))
    return out_BTD, cache
