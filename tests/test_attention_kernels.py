"""Cache-free attention kernels (model.attention.self_attention) against the tiled path.

The tiled `causal_attention` is itself checked against the softmax formula in
test_model; here `jax.nn.dot_product_attention` (its "xla" implementation, the
one CPU runs) and the Pallas splash kernel (interpreted on CPU) must give the
same real-slot values and q/k/v gradients on left-padded GQA batches, the
same model logits, and cached decoding equal to their full recompute.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import model
from realm_jax.model import attention

VALUE_TOL = 2e-6  # fp32 attention outputs, as test_model's tiled-vs-formula check
GRAD_TOL = 1e-5   # fp32 q/k/v gradients (sums over up to T slots), likewise
LOGIT_TOL = 1e-4  # fp32 logits policy (test_model.ATOL)
FUSED = ("xla", "splash")

CFG = model.ModelConfig(vocab_size=53, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=48, qkv_bias=True, qk_norm=True, init_std=0.2)
PARAMS = model.init_params(CFG, jax.random.key(0))
MASK = np.array([[1] * 9, [0] * 3 + [1] * 6, [0] * 8 + [1]], bool)  # one row with 1 real token
TOKENS = np.where(MASK, np.arange(1, 10)[None] + 10 * np.arange(3)[:, None], 0)


def _cfg(impl, base=CFG):
  return dataclasses.replace(base, attention_impl=impl)


def _qkv_mask(T, B=4, K=2, g=3, H=16):
  kq, kk, kv = jax.random.split(jax.random.key(T), 3)
  q = 2 * jax.random.normal(kq, (B, T, K, g, H))  # large logits: the max shift matters
  k, v = jax.random.normal(kk, (B, T, K, H)), jax.random.normal(kv, (B, T, K, H))
  mask = np.ones((B, T), bool)
  mask[1, :5] = mask[2, :T - 1] = mask[3, :T // 2] = False  # left padding; row 2: 1 real token
  return q, k, v, mask


@pytest.mark.parametrize("impl,T", [("xla", 16), ("xla", 100), ("splash", 128), ("splash", 100)])
def test_kernel_values_and_grads_equal_tiled_attention(impl, T):
  """GQA (N = 6 query heads over K = 2), left padding; T = 100 runs splash on 128 slots."""
  q, k, v, mask = _qkv_mask(T)
  cfg = dataclasses.replace(CFG, num_heads=6, num_kv_heads=2, head_dim=16)
  real = mask[:, :, None, None, None]  # pad-slot queries are read by nobody
  w = jnp.where(real, jax.random.normal(jax.random.key(7), q.shape), 0.0)
  attend = lambda c: jax.jit(lambda q, k, v: attention.self_attention(q, k, v, mask, c))
  tiled, fused = attend(_cfg("tiled", cfg)), attend(_cfg(impl, cfg))
  out, want = np.asarray(fused(q, k, v)), np.asarray(tiled(q, k, v))
  assert out.shape == want.shape == q.shape and np.isfinite(out).all()
  sel = np.broadcast_to(real, out.shape)
  np.testing.assert_allclose(out[sel], want[sel], atol=VALUE_TOL, rtol=0)
  grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(grads(fused), grads(tiled)):
    assert float(jnp.abs(b).max()) > 1e-2
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=GRAD_TOL, rtol=0)


@pytest.mark.parametrize("impl", FUSED)
def test_kernel_masks_pad_keys_and_future_slots(impl):
  """Changing a row's pad keys/values or its future keys changes no real query's output."""
  q, k, v, mask = _qkv_mask(16)
  cfg = dataclasses.replace(CFG, num_heads=6, num_kv_heads=2, head_dim=16)
  f = jax.jit(lambda q, k, v: attention.self_attention(q, k, v, mask, _cfg(impl, cfg)))
  base = np.asarray(f(q, k, v))
  noise = 5 * jax.random.normal(jax.random.key(9), k.shape)
  pads = jnp.asarray(~mask)[:, :, None, None]
  np.testing.assert_allclose(np.asarray(f(q, k + noise * pads, v + noise * pads))[mask],
                             base[mask], atol=VALUE_TOL, rtol=0)
  later = (jnp.arange(16) >= 10)[None, :, None, None]  # keys from slot 10 on
  got = np.asarray(f(q, k + noise * later, v + noise * later))
  np.testing.assert_allclose(got[:, :10][mask[:, :10]], base[:, :10][mask[:, :10]],
                             atol=VALUE_TOL, rtol=0)


_apply = jax.jit(lambda p, tok, m, cfg: model.apply(p, cfg, tok, m)[0], static_argnums=3)


def _loss(params, cfg):
  """Mean NLL of the real tokens predicted from real slots (a row's last pad slot
  predicts its first token from a pad query: each kernel's own value)."""
  lp = jax.nn.log_softmax(model.apply(params, cfg, TOKENS, MASK)[0][:, :-1])
  nll = -jnp.take_along_axis(lp, TOKENS[:, 1:, None], -1)[..., 0]
  read = MASK[:, :-1] & MASK[:, 1:]
  return jnp.sum(nll * read) / read.sum()


_grad = jax.jit(jax.grad(_loss), static_argnums=1)


@functools.lru_cache(maxsize=None)
def _tiled_logits_and_grads():
  return np.asarray(_apply(PARAMS, TOKENS, MASK, _cfg("tiled"))), _grad(PARAMS, _cfg("tiled"))


@pytest.mark.parametrize("impl", FUSED)
def test_model_logits_and_grads_equal_across_impls(impl):
  want, want_grads = _tiled_logits_and_grads()
  got = np.asarray(_apply(PARAMS, TOKENS, MASK, _cfg(impl)))
  np.testing.assert_allclose(got[MASK], want[MASK], atol=LOGIT_TOL, rtol=0)
  # fp32 param grads, as test_model's remat check
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5,
                                                       rtol=1e-5),
               _grad(PARAMS, _cfg(impl)), want_grads)


@pytest.mark.parametrize("impl", ("tiled",) + FUSED)
def test_cached_decode_equals_full_recompute_with_each_impl(impl):
  """Prefill 5 slots into a cache, then one token at a time: the full pass's logits."""
  cfg = _cfg(impl)
  full = np.asarray(_apply(PARAMS, TOKENS, MASK, cfg))
  B, T = TOKENS.shape
  cache = model.init_cache(cfg, B, T + 2)
  kv_mask = np.concatenate([MASK, np.ones((B, 2), bool)], 1)  # unwritten: causality hides them
  pos = np.asarray(model.positions_from_mask(MASK))
  step = jax.jit(lambda tok, p, c, i: model.apply(PARAMS, cfg, tok, positions_BT=p, cache=c,
                                                  cache_index=i, kv_mask_BS=kv_mask))
  got = []
  for a in [0] + list(range(5, T)):
    b = 5 if a == 0 else a + 1
    out, cache = step(TOKENS[:, a:b], pos[:, a:b], cache, a)
    got.append(np.asarray(out))
  np.testing.assert_allclose(np.concatenate(got, 1)[MASK], full[MASK], atol=LOGIT_TOL, rtol=0)


def test_auto_impl_by_backend_and_overrides():
  assert attention.resolve_attention_impl(CFG, "cpu") == "tiled"
  assert attention.resolve_attention_impl(CFG, "tpu") == "splash"
  # cuDNN's fused kernel takes bf16/fp16 only: an fp32 model on a GPU runs XLA's.
  assert attention.resolve_attention_impl(CFG, "gpu") == "xla"
  if jax.default_backend() == "cpu":  # CPU devices have no CUDA compute capability
    bf16 = dataclasses.replace(CFG, dtype="bfloat16", param_dtype="bfloat16")
    assert attention.resolve_attention_impl(bf16, "gpu") == "xla"
  for impl in ("tiled", "xla", "cudnn", "splash"):
    assert attention.resolve_attention_impl(_cfg(impl), "tpu") == impl
  with pytest.raises(ValueError, match="ModelConfig.attention_impl='flash'"):
    _cfg("flash")


def test_attention_tiling_off_cpu_is_one_recomputed_block():
  """The CPU heuristics (query blocks, row chains, saved exp tiles) stay on CPU."""
  cfg = dataclasses.replace(CFG, num_heads=8, num_kv_heads=4)
  for backend in ("gpu", "tpu"):
    assert attention.attention_tiling(cfg, 4, 256, backend) == (4, 1, 1, False)
  assert attention.attention_tiling(cfg, 4, 256, "cpu") == (4, 4, 2, True)  # test_model's numbers
