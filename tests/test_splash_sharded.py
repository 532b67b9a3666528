"""The splash kernel under shard_map (model.splash) on 8 fake CPU devices, interpreted.

Sharded == unsharded == `jax.nn.dot_product_attention` ("xla") on left-padded
GQA batches, values and q/k/v gradients, with test_attention_kernels'
tolerances; the compiled sharded call gathers nothing (while the bare kernel
call on the same mesh does); the model's logits with splash on a mesh equal
the tiled path's without one.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from realm_jax import model
from realm_jax.model import attention, splash
from realm_jax.train import sharding as sh
from tests.test_attention_kernels import GRAD_TOL, LOGIT_TOL, VALUE_TOL

BATCH = ("data", "fsdp")
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def _qkv_mask(K, B=8, T=128, g=2, H=16):
  """Large logits (the max shift matters); left padding of 5, T - 1 (one real token),
  T / 2 and 100 slots in rows 1, 2, 5 and 6."""
  kq, kk, kv, kw = jax.random.split(jax.random.key(K), 4)
  q = 2 * jax.random.normal(kq, (B, T, K, g, H))
  k, v = jax.random.normal(kk, (B, T, K, H)), jax.random.normal(kv, (B, T, K, H))
  mask = np.ones((B, T), bool)
  mask[1, :5] = mask[2, :T - 1] = mask[5, :T // 2] = mask[6, :100] = False
  w = jnp.where(mask[:, :, None, None, None], jax.random.normal(kw, q.shape), 0.0)
  return q, k, v, mask, w  # w: a cotangent that reads no pad-slot query


def _splash(q, k, v, mask):
  return splash.splash_attention(q, k, v, mask, interpret=True)


def _xla(q, k, v, mask):
  return attention.dot_product_attention(q, k, v, mask, "xla")


def _value_and_grads(f, mask, w):
  """(f(q, k, v), d/d(q, k, v) of sum(f * w)) as one function of (q, k, v)."""
  def fn(q, k, v):
    out, vjp = jax.vjp(lambda q, k, v: f(q, k, v, mask), q, k, v)
    return out, vjp(w)
  return fn


def test_splash_specs_follow_the_logical_rules():
  """Rows over the batch axes, kv heads over tensor, each as far as it divides; no mesh,
  no rules or one device: None (the direct call)."""
  assert splash.splash_specs(8, 2) is None
  with sh.use_mesh(sh.make_mesh(sh.MeshConfig(2, 2, 2))):
    assert splash.splash_specs(8, 2) == (P(BATCH, None, "tensor", None, None),
                                         P(BATCH, None, "tensor", None), P(BATCH, None))
    assert splash.splash_specs(8, 1)[0] == P(BATCH, None, None, None, None)  # K = 1: replicated
    assert splash.splash_specs(2, 2)[0] == P(("data",), None, "tensor", None, None)
    assert splash.splash_specs(1, 1) is None  # nothing splits
  with sh.use_mesh(sh.make_mesh(sh.MeshConfig(8, 1, 1))):
    assert splash.splash_specs(8, 2)[0] == P(BATCH, None, "tensor", None, None)
  with jax.set_mesh(sh.make_mesh(sh.MeshConfig(8, 1, 1))):  # a mesh without logical rules
    assert splash.splash_specs(8, 2) is None
  with sh.use_mesh(sh.make_mesh(sh.MeshConfig(1, 1, 1), jax.devices()[:1])):
    assert splash.splash_specs(8, 2) is None


@pytest.mark.parametrize("shape,K", [((2, 2, 2), 2), ((8, 1, 1), 2), ((2, 2, 2), 1)])
def test_sharded_splash_equals_unsharded_and_xla(shape, K):
  """Values and q/k/v gradients; inputs sharded as the model's activations are (rows
  over data x fsdp, heads over tensor). The compiled forward and backward gather
  nothing; with K = 1 (kv heads do not split over tensor = 2) the backward sums the
  tensor-replicated gradients, the forward still runs no collective."""
  q, k, v, mask, w = _qkv_mask(K)
  f = _value_and_grads(_splash, mask, w)
  want, want_grads = jax.jit(f)(q, k, v)
  xla, xla_grads = jax.jit(_value_and_grads(_xla, mask, w))(q, k, v)

  mesh = sh.make_mesh(sh.MeshConfig(*shape))
  heads = "tensor" if K % mesh.shape["tensor"] == 0 else None
  q_sh = NamedSharding(mesh, P(BATCH, None, heads, None, None))
  kv_sh = NamedSharding(mesh, P(BATCH, None, heads, None))
  args = jax.device_put((q, k, v), (q_sh, kv_sh, kv_sh))
  with sh.use_mesh(mesh):
    fwd = jax.jit(lambda q, k, v: _splash(q, k, v, mask), out_shardings=q_sh)
    fwd_hlo = fwd.lower(*args).compile().as_text()
    both = jax.jit(f).lower(*args).compile()
    got, got_grads = both(*args)
    bare = jax.jit(lambda q, k, v: splash._splash_local(q, k, v, mask, True), out_shardings=q_sh)
    bare_hlo = bare.lower(*args).compile().as_text()
  assert got.sharding.is_equivalent_to(q_sh, q.ndim)
  assert not [c for c in COLLECTIVES if c in fwd_hlo]
  assert "all-gather" not in both.as_text()
  assert (heads is None) == ("all-reduce" in both.as_text())
  assert "all-gather" in bare_hlo  # the kernel outside shard_map gathers its operands

  real = np.broadcast_to(mask[:, :, None, None, None], q.shape)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=VALUE_TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(xla)[real], atol=VALUE_TOL, rtol=0)
  for a, b, c in zip(got_grads, want_grads, xla_grads):
    assert float(jnp.abs(c).max()) > 1e-2
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=GRAD_TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=GRAD_TOL, rtol=0)


# Every dimension the (2, 2, 2) mesh shards divides: heads 4 and kv heads 2 over
# tensor, d_model 32 over fsdp, vocab 64 over tensor, batch 8 over data x fsdp.
CFG = model.ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=48, qkv_bias=True, qk_norm=True, init_std=0.2)


def test_model_logits_with_sharded_splash_equal_tiled():
  rng = np.random.default_rng(0)
  lengths = np.array([12, 7, 12, 1, 9, 12, 5, 11])
  mask = np.arange(12)[None, :] >= (12 - lengths)[:, None]  # left padded; row 3: 1 token
  tokens = np.where(mask, rng.integers(1, CFG.vocab_size, (8, 12)), 0).astype(np.int32)
  params = model.init_params(CFG, jax.random.key(0))
  apply = lambda cfg: jax.jit(lambda p, t, m: model.apply(p, cfg, t, m)[0])
  want = np.asarray(apply(dataclasses.replace(CFG, attention_impl="tiled"))(params, tokens, mask))

  mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
  sh.check_divisibility(CFG, mesh, batch_size=8)
  p = sh.shard_params(params, sh.param_shardings(CFG, mesh))
  t, m = jax.device_put((tokens, mask), sh.batch_sharding(mesh))
  with sh.use_mesh(mesh):
    splash_cfg = dataclasses.replace(CFG, attention_impl="splash")
    assert attention.resolve_attention_impl(splash_cfg) == "splash"
    got = np.asarray(apply(splash_cfg)(p, t, m))
  np.testing.assert_allclose(got[mask], want[mask], atol=LOGIT_TOL, rtol=0)
