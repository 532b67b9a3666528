"""Building blocks: RoPE, RMSNorm, Linear, the SwiGLU MLP and the fp32 head matmul.

Axis legend as in `realm_jax.model` (B batch, T length, D model, N query heads,
H head dim, F MLP, V vocab). Hand-written backward passes (`rms_norm`, `matmul`,
behind the head and the mixed-precision projections) are tested against autodiff of
their formulas or against products of hand-rounded operands.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from realm_jax.model.config import ModelConfig


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
    x_MI = x.reshape(-1, x.shape[-1])
    y = project(x_MI, k, self.cfg.matmul_dtype)
    if self._adapted():
      y = y + self._lora(x_MI)
    y = y.reshape(*x.shape[:-1], self.features)
    if self.use_bias:
      b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                     (self.features,), _dt(self.cfg.param_dtype))
      y = y + b.astype(y.dtype)
    return y

  def _adapted(self) -> bool:
    """LoRA on this projection: configured, and its adapters present in the params (a
    params tree without them, e.g. the frozen base as RL's reference, runs plain)."""
    lora = self.cfg.lora
    return (lora is not None and self.name in lora.targets
            and (self.is_initializing() or self.has_variable("params", "lora_a")))

  def _lora(self, x_MI):
    """(alpha / r) (x A) B. A ~ U(+-1/sqrt(in)) (PEFT's default), B = 0: the adapted
    model starts as the base model."""
    lora, dt = self.cfg.lora, _dt(self.cfg.param_dtype)
    a_IR = self.param("lora_a", nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), (self.axes[0], None)),
        (x_MI.shape[-1], lora.rank), dt)
    b_RO = self.param("lora_b", nn.with_logical_partitioning(
        nn.initializers.zeros, (None, self.axes[1])), (lora.rank, self.features), dt)
    h_MR = project(x_MI, a_IR, self.cfg.matmul_dtype)
    return project(h_MR * jnp.asarray(lora.scale, x_MI.dtype), b_RO, self.cfg.matmul_dtype)


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    c = self.cfg
    gate_BTF = Linear(c.mlp_dim, ("embed", "mlp"), False, c, name="gate_proj")(x_BTD)
    up_BTF = Linear(c.mlp_dim, ("embed", "mlp"), False, c, name="up_proj")(x_BTD)
    h_BTF = constrain(nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp"))
    return Linear(c.d_model, ("mlp", "embed"), False, c, name="down_proj")(h_BTF)


def project(x_MI, w_IO, matmul_dtype: str | None):
  """x @ w in x's dtype. `matmul_dtype` (`ModelConfig.matmul_dtype`) other than x's:
  both operands rounded to it, fp32 accumulation (`matmul`); None: w cast to x's dtype."""
  if matmul_dtype is None or jnp.dtype(matmul_dtype) == x_MI.dtype:
    return jnp.dot(x_MI, w_IO.astype(x_MI.dtype))
  return matmul(x_MI, w_IO, matmul_dtype, x_MI.dtype.name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def matmul(x_MI, w, operand_dtype: str, out_dtype: str, w_transposed: bool = False):
  """x @ w ([I, O]; `w_transposed`: w is [O, I] and x @ w^T is taken) with both operands
  rounded to `operand_dtype`, accumulated in fp32, result in `out_dtype`. The backward
  rounds the cotangent g the same way: dx = g w^T and dw = x^T g (a contraction over
  tokens, `weight_grad`), both accumulated in fp32.

  This is the mixed precision of accelerators (bf16 operands on the MXU / tensor
  cores) made available to fp32 models: on a CPU with AMX or AVX512-BF16, XLA:CPU
  runs bf16 x bf16 -> fp32 dots several times faster than fp32 ones, while norms,
  softmax and the residual stream stay fp32. Its fast dots take row-major operands
  and a weight in either orientation: a weight transposed before its rounding (a
  tied head's embedding.T) is not one, and its dot would run in fp32, so such a
  weight is passed as stored, with `w_transposed`."""
  return _matmul_fwd(x_MI, w, operand_dtype, out_dtype, w_transposed)[0]


_CONTRACT_LAST = (((1,), (1,)), ((), ()))  # a [M, K] x b [N, K] -> [M, N]


def _matmul_fwd(x_MI, w, operand_dtype, out_dtype, w_transposed):
  xl, wl = x_MI.astype(operand_dtype), w.astype(operand_dtype)
  y = (jax.lax.dot_general(xl, wl, _CONTRACT_LAST, preferred_element_type=jnp.float32)
       if w_transposed else jnp.dot(xl, wl, preferred_element_type=jnp.float32))
  return y.astype(out_dtype), (x_MI, w)


def _matmul_bwd(operand_dtype, out_dtype, w_transposed, res, g_MO):
  x_MI, w = res
  g, wl = g_MO.astype(operand_dtype), w.astype(operand_dtype)
  dx_MI = (jnp.dot(g, wl, preferred_element_type=jnp.float32) if w_transposed else
           jax.lax.dot_general(g, wl, _CONTRACT_LAST, preferred_element_type=jnp.float32))
  dw_IO = weight_grad(x_MI.astype(operand_dtype), g,
                      copy_transpose=jax.default_backend() == "cpu")
  if w_transposed:  # kept apart: folded into the dot, XLA:CPU has no bf16 kernel for it
    dw_IO = jax.lax.optimization_barrier(dw_IO).T
  return dx_MI.astype(x_MI.dtype), dw_IO.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def transposed_copy(x_MN: jax.Array) -> jax.Array:
  """x^T laid out row-major in memory, not as a transposed view. The flat reshape fixes
  the element order and the barrier keeps XLA from folding it back into the dot."""
  M, N = x_MN.shape
  return jax.lax.optimization_barrier(x_MN.T.reshape(-1)).reshape(N, M)


def weight_grad(x_MD, g_MV, copy_transpose: bool):
  """dw = x^T g [D, V] in fp32, contracting the token axis M. `copy_transpose` (the
  CPU choice) multiplies an explicitly transposed copy of x instead: XLA:CPU runs a
  [D, M] x [M, V] product much faster than the transposed-operand form autodiff
  gives, and its fast low-precision dots take row-major operands only (otherwise
  they are run in fp32). In fp32 an optimization barrier on x^T is enough to keep
  the copy; lower precisions need the row-major layout forced (`transposed_copy`).
  Elsewhere: one dot contracting M, which GPU and TPU compilers lay out themselves."""
  if not copy_transpose:
    return jax.lax.dot_general(x_MD, g_MV, (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)
  if x_MD.dtype.itemsize >= 4:
    x_DM = jax.lax.optimization_barrier(x_MD.T)
  else:
    x_DM = transposed_copy(x_MD)
  return jnp.dot(x_DM, g_MV, preferred_element_type=jnp.float32)


def head_matmul(x_MD, w, matmul_dtype: str | None = None, w_transposed: bool = False):
  """fp32 logits x @ w (w [D, V]; `w_transposed`: a tied embedding [V, D], x @ w^T),
  operands in `matmul_dtype` (None: x's dtype); the weight gradient contracts over
  tokens as `weight_grad` does. Operands of x's own dtype take w^T as a plain
  [D, V] weight (the fp32 path, unchanged by the mixed one)."""
  dt = jnp.dtype(matmul_dtype or x_MD.dtype)
  if w_transposed and dt == x_MD.dtype:
    w, w_transposed = w.T, False
  return matmul(x_MD, w, dt.name, "float32", w_transposed)
