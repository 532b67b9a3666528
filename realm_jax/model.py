"""Decoder-only transformer for the Llama / Qwen2 / Qwen3 families (Flax Linen).

Pure init/apply: `init_params(config, rng)` returns a plain params pytree and
`apply(params, config, ...)` is a pure function of it; nothing stateful is held
by the training step.

Axis legend (used in tensor names and einsum strings):
  B batch, T query length, S key length (cache slots), D model, N query heads,
  K kv heads, g query heads per kv head (N = K * g), H head dim, F MLP,
  V vocab, L layers.

Conventions
- Batches are left padded. `positions_BT` are the real token positions (for
  RoPE) and `kv_mask_BS` marks valid key slots. Attention is causal in *slot*
  space: the query in slot i sees key slots j <= i that are valid.
- Layers are stacked on a leading axis L (`nn.scan`) and optionally remat'd.
- Decode layout (for compiled sampling loops): `unstack_layers(params)` and
  `unstack_cache(cache)` give one buffer per layer (`model/layers_{l}/...`,
  cache {'k': (L x [B, K, H, S]), 'v': (L x [B, K, S, H])}). With a layer-list
  cache, `apply` runs the layers unrolled and updates each layer's buffers in
  place, so a while-loop carry holds no stacked array that would be sliced
  (copied) every step, and both attention dots read the buffers with their
  batch axes (B, K) leading, so XLA makes no transposed copy of the cache.
- Parameter paths mirror Hugging Face names: `model/layers/self_attn/q_proj/
  kernel` is HF `model.layers.{i}.self_attn.q_proj.weight` transposed and
  stacked over i; norms keep HF's `weight`; embeddings are `embedding`.
- Params may be fp32 or bf16; compute dtype is configurable; logits, softmax
  and RMSNorm statistics are always fp32.
- Logical axis names on params and activations let `sharding.py` map them to a
  mesh; without active rules every constraint is a no-op.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any
KVCache = dict  # {'k': [L, B, S, K, H], 'v': [L, B, S, K, H]}

FAMILIES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent RoPE scaling."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  family: str = "llama"
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  max_seq_len: int = 2048
  param_dtype: str = "float32"
  dtype: str = "float32"
  cache_dtype: str | None = None  # None: same as `dtype`
  remat: bool = False
  # Run the layers under `nn.scan` (compile time independent of depth) or as
  # an unrolled Python loop over the same stacked params (no stacked residual
  # buffers to fill and slice in the backward pass: faster for shallow models).
  scan_layers: bool = True
  # Tiling of the cache-free (training / scoring) attention, `causal_attention`:
  # batch rows per block and query blocks per sequence (each skips the keys
  # after its end). None: automatic (`attention_tiling`). Any value gives the
  # same numbers.
  attention_block_rows: int | None = None
  attention_query_blocks: int | None = None
  # Independent row groups per block (XLA:CPU runs them side by side), and
  # whether the forward keeps its exp(logits - max) tiles for the backward
  # instead of recomputing them. None: automatic (`attention_tiling`).
  attention_row_chains: int | None = None
  attention_save_probs: bool | None = None
  init_std: float = 0.02

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"ModelConfig.family={self.family!r}; expected one of {FAMILIES}")
    for name in ("vocab_size", "num_layers", "d_model", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
    for name in ("attention_block_rows", "attention_query_blocks", "attention_row_chains"):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"ModelConfig.{name} must be positive or None (automatic), "
                         f"got {getattr(self, name)}")
    for name in ("param_dtype", "dtype") + (("cache_dtype",) if self.cache_dtype else ()):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; use float32, bfloat16 or float16")

  @property
  def num_params(self) -> int:
    D, N, K, H, F, V = (self.d_model, self.num_heads, self.num_kv_heads,
                        self.head_dim, self.mlp_dim, self.vocab_size)
    attn = D * N * H * 2 + D * K * H * 2 + (N * H + 2 * K * H if self.qkv_bias else 0)
    layer = attn + 3 * D * F + 2 * D + (2 * H if self.qk_norm else 0)
    return V * D * (1 if self.tie_embeddings else 2) + self.num_layers * layer + D


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """inv_freq[i] = theta^(-2i/H), optionally Llama-3 scaled (as in HF)."""
  H = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
  s = cfg.rope_scaling
  if s is None:
    return inv
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > low_wavelen, inv / s.factor, inv)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotate-half RoPE (HF convention): x*cos + rotate_half(x)*sin, in fp32."""
  ang_BTh = positions_BT[..., None].astype(jnp.float32) * inv_freq
  cos = jnp.cos(ang_BTh)[:, :, None, :]
  sin = jnp.sin(ang_BTh)[:, :, None, :]
  x = x_BTNH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def _dt(name: str):
  return jnp.dtype(name)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """Logical sharding constraint; a no-op unless `sharding.py` set rules."""
  return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
  eps: float
  param_dtype: Any
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                   (x.shape[-1],), self.param_dtype)
    return rms_norm(x, w, self.eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x, w, eps: float):
  """w * x / sqrt(mean(x^2) + eps) over the last axis, statistics in fp32.

  The backward keeps only x and the per-row 1/rms: dx = r (g - n mean(g n)),
  with n = x r and g = dy w; dw = sum over rows of dy n.
  """
  return _rms_norm_fwd(x, w, eps)[0]


def _rms_norm_fwd(x, w, eps):
  x32 = x.astype(jnp.float32)
  r = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (w.astype(jnp.float32) * (x32 * r)).astype(x.dtype), (x, w, r)


def _rms_norm_bwd(eps, res, dy):
  x, w, r = res
  n = x.astype(jnp.float32) * r
  dy32 = dy.astype(jnp.float32)
  g = dy32 * w.astype(jnp.float32)
  dx = r * (g - n * jnp.mean(g * n, axis=-1, keepdims=True))
  dw = jnp.sum((dy32 * n).reshape(-1, n.shape[-1]), axis=0)
  return dx.astype(x.dtype), dw.astype(w.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class Linear(nn.Module):
  """y = x @ kernel (+ bias); kernel is HF's weight transposed, shape [in, out].

  Leading axes are flattened so the matmul (and its autodiff weight gradient,
  a contraction over one token axis) is 2-D: with [B, T, in] operands XLA:CPU
  materialises transposed copies of the activation gradients for the weight
  gradient, which dominated the training step.
  """
  features: int
  axes: tuple[str, str]
  use_bias: bool
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.normal(self.cfg.init_std)
    k = self.param("kernel", nn.with_logical_partitioning(init, self.axes),
                   (x.shape[-1], self.features), _dt(self.cfg.param_dtype))
    y = jnp.dot(x.reshape(-1, x.shape[-1]), k.astype(x.dtype))
    y = y.reshape(*x.shape[:-1], self.features)
    if self.use_bias:
      b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                     (self.features,), _dt(self.cfg.param_dtype))
      y = y + b.astype(y.dtype)
    return y


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


def attention_tiling(cfg: ModelConfig, batch: int, length: int) -> AttentionTiling:
  """The `AttentionTiling` of `causal_attention` over [batch, length] self-attention.

  Configured values win (clipped to divisors). Automatic on CPU: query blocks
  of at least ATTENTION_MIN_QUERY_BLOCK slots (at most 8 blocks); as many
  rows as keep the largest block's [rows, N, T / blocks, S] fp32 logits
  within ATTENTION_BLOCK_BYTES; ATTENTION_ROW_CHAINS row groups per block;
  and saved exp tiles when all of them (the whole batch's, per layer) fit in
  ATTENTION_SAVE_BYTES. Chains and saved tiles go together: on two cores the
  pair measured ~3% off the benchmark's training step (paired A/B; either
  alone, none). On accelerators: one block of the whole batch, recomputed
  (their fused attention kernels are the way to tile there).
  """
  rows, parts = cfg.attention_block_rows, cfg.attention_query_blocks
  chains, save = cfg.attention_row_chains, cfg.attention_save_probs
  cpu = jax.default_backend() == "cpu"
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
      q_slot = jnp.arange(T)
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
      q_slot = cache_index + jnp.arange(T)
    k_spec, v_spec = ("BKHS", "BKSH") if per_layer else ("BSKH", "BSKH")
    S = values.shape[2 if per_layer else 1]
    allowed_BTS = (jnp.arange(S)[None, None, :] <= q_slot[None, :, None]) & kv_mask_BS[:, None, :]

    g = N // K
    q_BTKgH = q_BTNH.reshape(B, T, K, g, H)
    if cache is None:  # training / scoring: tiled, with a fused backward (`causal_attention`)
      out_BKTgH = causal_attention(q_BTKgH, keys, values, allowed_BTS,
                                   attention_tiling(c, B, T))
    else:
      # Both dots produce their natural [B, K, (T, g), .] order (q's (T, g)
      # order kept): XLA:CPU then copies no big logits/probs tensor and keeps
      # the dots in its fast library; the small output is transposed after.
      logits_BKTgS = jnp.einsum(f"BTKgH,{k_spec}->BKTgS", q_BTKgH, keys,
                                preferred_element_type=jnp.float32) / math.sqrt(H)
      logits_BKTgS = jnp.where(allowed_BTS[:, None, :, None], logits_BKTgS, -1e30)
      probs_BKTgS = jax.nn.softmax(logits_BKTgS, axis=-1).astype(x_BTD.dtype)
      out_BKTgH = jnp.einsum(f"BKTgS,{v_spec}->BKTgH", probs_BKTgS, values)
    out_BTKgH = out_BKTgH.transpose(0, 2, 1, 3, 4)
    out_BTD = Linear(c.d_model, ("q_heads", "embed"), False, c, name="o_proj")(
        out_BTKgH.reshape(B, T, N * H))
    return out_BTD, cache


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    c = self.cfg
    gate_BTF = Linear(c.mlp_dim, ("embed", "mlp"), False, c, name="gate_proj")(x_BTD)
    up_BTF = Linear(c.mlp_dim, ("embed", "mlp"), False, c, name="up_proj")(x_BTD)
    h_BTF = constrain(nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
    return Linear(c.d_model, ("mlp", "embed"), False, c, name="down_proj")(h_BTF)


class DecoderLayer(nn.Module):
  """One pre-norm block; scanned over L with carry (x, cache)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, carry, layer, positions_BT, kv_mask_BS, inv_freq, cache_index):
    x_BTD, cache = carry
    c = self.cfg
    h = RMSNorm(c.rms_eps, _dt(c.param_dtype), name="input_layernorm")(x_BTD)
    attn, cache = Attention(c, name="self_attn")(h, positions_BT, kv_mask_BS, inv_freq,
                                                 layer, cache, cache_index)
    x_BTD = x_BTD + attn
    h = RMSNorm(c.rms_eps, _dt(c.param_dtype), name="post_attention_layernorm")(x_BTD)
    x_BTD = constrain(x_BTD + MLP(c, name="mlp")(h), ("batch", "length", "embed"))
    return (x_BTD, cache), None


class Model(nn.Module):
  """HF `model.*`: embeddings, stacked layers, final norm.

  `unrolled`: one `layers_{l}` module per layer and a layer-list cache (the
  decode layout, see the module docstring) instead of `nn.scan` over `layers`.
  """
  cfg: ModelConfig
  unrolled: bool = False

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, kv_mask_BS, cache, cache_index):
    c = self.cfg
    embed = nn.Embed(c.vocab_size, c.d_model, param_dtype=_dt(c.param_dtype),
                     dtype=_dt(c.dtype), name="embed_tokens",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(c.init_std), ("vocab", "embed")))
    x_BTD = constrain(embed(tokens_BT), ("batch", "length", "embed"))
    layer_cls = DecoderLayer
    if c.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False,
                           policy=jax.checkpoint_policies.nothing_saveable)
    inv_freq = rope_inv_freq(c)
    if self.unrolled:
      ks, vs = [], []
      for l in range(c.num_layers):
        layer_cache = None if cache is None else {"k": cache["k"][l], "v": cache["v"][l]}
        (x_BTD, layer_cache), _ = layer_cls(c, name=f"layers_{l}")(
            (x_BTD, layer_cache), l, positions_BT, kv_mask_BS, inv_freq, cache_index)
        if layer_cache is not None:
          ks.append(layer_cache["k"])
          vs.append(layer_cache["v"])
      if cache is not None:
        cache = {"k": tuple(ks), "v": tuple(vs)}
    else:
      layers = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                       length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      (x_BTD, cache), _ = layers(c, name="layers")(
          (x_BTD, cache), jnp.arange(c.num_layers), positions_BT, kv_mask_BS, inv_freq, cache_index)
    x_BTD = RMSNorm(c.rms_eps, _dt(c.param_dtype), name="norm")(x_BTD)
    return x_BTD, embed, cache


@jax.custom_vjp
def head_matmul(x_MD, w_DV):
  """fp32 logits x @ w. Its weight gradient contracts over tokens from an
  explicitly transposed x (a small copy): XLA:CPU runs that [D, M] x [M, V]
  product much faster than the transposed-operand form autodiff gives."""
  return jnp.dot(x_MD, w_DV, preferred_element_type=jnp.float32)


def _head_matmul_fwd(x_MD, w_DV):
  return head_matmul(x_MD, w_DV), (x_MD, w_DV)


def _head_matmul_bwd(res, dlogits_MV):
  x_MD, w_DV = res
  dlogits = dlogits_MV.astype(x_MD.dtype)
  dx_MD = jax.lax.dot_general(dlogits, w_DV, (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
  x_DM = jax.lax.optimization_barrier(x_MD.T)  # keeps the transpose a real copy
  dw_DV = jnp.dot(x_DM, dlogits, preferred_element_type=jnp.float32)
  return dx_MD.astype(x_MD.dtype), dw_DV.astype(w_DV.dtype)


head_matmul.defvjp(_head_matmul_fwd, _head_matmul_bwd)


class Transformer(nn.Module):
  """HF `*ForCausalLM`: fp32 logits [B, T, V] and the updated cache.

  The untied head sits at HF's path `lm_head/kernel`. `last_only` computes
  logits for the last position only ([B, 1, V]); `logits_from=s` for
  positions s.. only ([B, T-s, V]): the head and its softmax are skipped where
  nobody reads them (prompt positions in RL).
  """
  cfg: ModelConfig
  unrolled: bool = False

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, kv_mask_BS, cache=None, cache_index=0,
               last_only=False, logits_from=0):
    c = self.cfg
    x_BTD, embed, cache = Model(c, self.unrolled, name="model")(
        tokens_BT, positions_BT, kv_mask_BS, cache, cache_index)
    if last_only:
      x_BTD = x_BTD[:, -1:]
    elif logits_from:
      x_BTD = x_BTD[:, logits_from:]
    if c.tie_embeddings:
      w_DV = embed.embedding.T
    else:
      w_DV = LMHead(c, name="lm_head")()
    B, T, D = x_BTD.shape  # 2-D matmul, as in `Linear`
    logits_BTV = head_matmul(x_BTD.reshape(B * T, D), w_DV.astype(x_BTD.dtype)).reshape(B, T, -1)
    return constrain(logits_BTV, ("batch", "length", "vocab")), cache


class LMHead(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self):
    c = self.cfg
    return self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(c.init_std), ("embed", "vocab")),
        (c.d_model, c.vocab_size), _dt(c.param_dtype))


# ----------------------------------------------------------------------------
# Pure functional interface.


def init_boxed(cfg: ModelConfig, rng: jax.Array) -> Params:
  """Params with their logical-axis metadata (`nn.Partitioned` boxes)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  # A 1-token dummy batch: no activation constraints (they need divisible batches).
  with nn.logical_axis_rules(()):
    return Transformer(cfg).init(rng, tokens, tokens, jnp.ones((1, 1), bool))["params"]


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
  """Plain params pytree (HF-named), unboxed."""
  return nn.unbox(init_boxed(cfg, rng))


def logical_axes(cfg: ModelConfig) -> Params:
  """Tree of logical-axis PartitionSpecs with the same structure as params."""
  abstract = jax.eval_shape(lambda: init_boxed(cfg, jax.random.key(0)))
  return nn.get_partition_spec(abstract)


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
  """Real positions of left-padded tokens: cumsum(mask) - 1, clipped at 0."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def apply(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array | None = None,
          *, positions_BT: jax.Array | None = None, cache: KVCache | None = None,
          cache_index: jax.Array | int = 0, kv_mask_BS: jax.Array | None = None,
          last_only: bool = False, logits_from: int = 0):
  """Forward pass. Returns (fp32 logits [B, T, V], updated cache or None).

  Without a cache, `mask_BT` marks real tokens of a left-padded batch. With a
  cache, the T tokens are written at slots [cache_index, cache_index + T) and
  `kv_mask_BS` (required) marks which of the S slots hold real tokens. A
  layer-list cache (`unstack_cache`) runs the unrolled decode layout and comes
  back as a layer-list; params may then be stacked or `unstack_layers`'d.
  `last_only=True` returns logits of the last position only, [B, 1, V];
  `logits_from=s` (a Python int) those of positions s.. only, [B, T-s, V].
  """
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  if mask_BT is None:
    mask_BT = jnp.ones(tokens_BT.shape, bool)
  mask_BT = jnp.asarray(mask_BT).astype(bool)
  if positions_BT is None:
    positions_BT = positions_from_mask(mask_BT)
  if cache is None:
    kv_mask_BS = mask_BT
  elif kv_mask_BS is None:
    raise ValueError("apply(..., cache=...) needs kv_mask_BS marking valid cache slots")
  unrolled = cache is not None and isinstance(cache["k"], (tuple, list))
  if cache is None and not cfg.scan_layers:
    unrolled = True  # a cache-free pass over per-layer slices of the stacked params
  if unrolled and "layers" in params["model"]:
    params = unstack_layers(params)
  elif not unrolled and "layers" not in params["model"]:
    raise ValueError("params from unstack_layers need a layer-list cache (unstack_cache); "
                     "use the stacked params otherwise")
  return Transformer(cfg, unrolled).apply({"params": params}, tokens_BT, positions_BT,
                                          kv_mask_BS, cache, cache_index, last_only,
                                          int(logits_from))


def forward(params: Params, tokens: jax.Array, config: ModelConfig) -> jax.Array:
  """fp32 logits [B, T, V] for an unpadded int32 batch [B, T]."""
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"forward expects int32 tokens [B, T], got shape {tokens.shape}")
  return apply(params, config, tokens)[0]


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
  """Zeroed KV cache [L, B, S, K, H] in the cache dtype."""
  dt = _dt(cfg.cache_dtype or cfg.dtype)
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def unstack_cache(cache: KVCache) -> KVCache:
  """Stacked {'k', 'v': [L, B, S, K, H]} -> the layer-list decode layout:
  {'k': (L x [B, K, H, S]), 'v': (L x [B, K, S, H])}."""
  return {"k": tuple(jnp.transpose(cache["k"], (0, 1, 3, 4, 2))),
          "v": tuple(jnp.transpose(cache["v"], (0, 1, 3, 2, 4)))}


def grow_cache(cache: KVCache, max_len: int) -> KVCache:
  """Layer-list decode cache with S slots -> `max_len` >= S slots (new slots zero)."""
  S = cache["v"][0].shape[2]
  if max_len < S:
    raise ValueError(f"grow_cache: cache already has {S} slots > max_len={max_len}")
  if max_len == S:
    return cache
  pad_k = lambda k: jnp.pad(k, ((0, 0), (0, 0), (0, 0), (0, max_len - S)))
  pad_v = lambda v: jnp.pad(v, ((0, 0), (0, 0), (0, max_len - S), (0, 0)))
  return {"k": tuple(map(pad_k, cache["k"])), "v": tuple(map(pad_v, cache["v"]))}


def stack_cache(cache: KVCache) -> KVCache:
  """Layer-list decode layout -> stacked {'k', 'v': [L, B, S, K, H]}."""
  return {"k": jnp.transpose(jnp.stack(cache["k"]), (0, 1, 4, 2, 3)),
          "v": jnp.transpose(jnp.stack(cache["v"]), (0, 1, 3, 2, 4))}


def unstack_layers(params: Params) -> Params:
  """Stacked `model/layers/...` [L, ...] -> one subtree per layer, `model/layers_{l}/...`.

  Slice once, outside a decode loop, so the loop body reads each layer's
  weights in place instead of slicing the stacked arrays every step.
  """
  model = dict(params["model"])
  layers = model.pop("layers")
  L = jax.tree.leaves(layers)[0].shape[0]
  for l in range(L):
    model[f"layers_{l}"] = jax.tree.map(lambda x, l=l: x[l], layers)
  return {**params, "model": model}


def stack_layers(params: Params) -> Params:
  """Inverse of `unstack_layers`: `model/layers_{l}/...` subtrees -> stacked `model/layers/...`."""
  model = dict(params["model"])
  L = sum(1 for k in model if k.startswith("layers_"))
  layers = [model.pop(f"layers_{l}") for l in range(L)]
  model["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return {**params, "model": model}


def cast_params(params: Params, dtype: str) -> Params:
  return jax.tree.map(lambda x: x.astype(_dt(dtype)), params)
