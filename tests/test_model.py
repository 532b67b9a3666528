"""Model invariances (no reference implementation needed; see test_hf_import for that)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import model

ATOL = 1e-4  # fp32 logits policy

CFG = model.ModelConfig(vocab_size=53, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=48, qkv_bias=True, qk_norm=True, init_std=0.2,
                        rope_scaling=model.RopeScaling(factor=4.0, original_max_position_embeddings=16))
PARAMS = model.init_params(CFG, jax.random.key(0))
# Left-padded batch with distinct tokens 1..9 per row; pad token 0 appears nowhere else.
MASK = np.array([[1] * 9, [0] * 3 + [1] * 6, [0] * 7 + [1] * 2], bool)
TOKENS = np.where(MASK, np.arange(1, 10)[None] + 10 * np.arange(3)[:, None], 0)


_apply = jax.jit(lambda p, tok, m, cfg: model.apply(p, cfg, tok, m)[0], static_argnums=3)


def logits(params=PARAMS, cfg=CFG, tokens=TOKENS, mask=MASK):
  return np.asarray(_apply(params, tokens, mask, cfg))


def test_cached_decode_equals_full_recompute():
  full = logits()
  B, T = TOKENS.shape
  cache = model.init_cache(CFG, B, T + 2)
  kv_mask = np.concatenate([MASK, np.ones((B, 2), bool)], 1)  # unwritten slots: causality hides them
  pos = np.asarray(model.positions_from_mask(MASK))
  step = jax.jit(lambda tok, p, c, i: model.apply(PARAMS, CFG, tok, positions_BT=p, cache=c,
                                                  cache_index=i, kv_mask_BS=kv_mask))
  got = []
  for a, b in [(0, 5), (5, 6), (6, 7), (7, 9)]:
    out, cache = step(TOKENS[:, a:b], pos[:, a:b], cache, a)
    got.append(np.asarray(out))
  np.testing.assert_allclose(np.concatenate(got, 1)[MASK], full[MASK], atol=ATOL, rtol=0)


def test_left_padding_does_not_change_real_token_logits():
  """Row 0 has no pads; 4 more pads on every row (other pad values) change nothing."""
  full = logits()
  more = np.concatenate([np.full((3, 4), 52), np.where(MASK, TOKENS, 7)], 1)
  more_mask = np.concatenate([np.zeros((3, 4), bool), MASK], 1)
  np.testing.assert_allclose(logits(tokens=more, mask=more_mask)[more_mask], full[MASK],
                             atol=ATOL, rtol=0)


def test_causality_and_pad_masking_through_gradients():
  """d logits[b, t] / d embedding(token at t') is exactly 0 for t' > t and for pads.

  Every real token is distinct and the head is untied, so the embedding row of a
  token is touched only at its own position.
  """
  proj = jax.random.normal(jax.random.key(1), (CFG.vocab_size,))

  def out_BT(embedding):
    p = {**PARAMS, 'model': {**PARAMS['model'], 'embed_tokens': {'embedding': embedding}}}
    return model.apply(p, CFG, TOKENS, MASK)[0] @ proj

  jac_BTVD = jax.jit(jax.jacrev(out_BT))(PARAMS['model']['embed_tokens']['embedding'])
  touched_BTV = np.abs(np.asarray(jac_BTVD)).sum(-1) > 0
  B, T = TOKENS.shape
  for b in range(B):
    for t in np.flatnonzero(MASK[b]):
      for t2 in np.flatnonzero(MASK[b]):
        assert touched_BTV[b, t, TOKENS[b, t2]] == (t2 <= t), (b, t, t2)
      assert not touched_BTV[b, t, 0]  # the pad token's embedding never reaches a real token


def test_jit_equals_no_jit():
  eager = model.apply(PARAMS, CFG, TOKENS, MASK)[0]
  np.testing.assert_allclose(np.asarray(eager)[MASK], logits()[MASK], atol=ATOL, rtol=0)


def test_remat_gives_same_logits_and_grads():
  def loss(params, cfg):
    lg = model.apply(params, cfg, TOKENS, MASK)[0]
    lp = jax.nn.log_softmax(lg[:, :-1])
    nll = -jnp.take_along_axis(lp, TOKENS[:, 1:, None], -1)[..., 0]
    return jnp.sum(nll * MASK[:, 1:]) / MASK[:, 1:].sum()

  remat = dataclasses.replace(CFG, remat=True)
  np.testing.assert_allclose(logits(cfg=remat)[MASK], logits()[MASK], atol=ATOL, rtol=0)
  g0 = jax.jit(jax.grad(loss), static_argnums=1)(PARAMS, CFG)
  g1 = jax.jit(jax.grad(loss), static_argnums=1)(PARAMS, remat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5),
               g1, g0)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g0)) > 1e-3  # grads are not all ~0


def test_bf16_params_and_compute_close_to_fp32():
  cfg = dataclasses.replace(CFG, param_dtype='bfloat16', dtype='bfloat16')
  params = model.cast_params(PARAMS, 'bfloat16')
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  lg, _ = model.apply(params, cfg, TOKENS, MASK)
  assert lg.dtype == jnp.float32 and np.isfinite(np.asarray(lg)).all()
  ref = logits()[MASK]
  # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per op); params,
  # activations and matmul inputs are rounded through 2 layers, so a relative
  # L2 error of a few percent is expected -- 5e-2 bounds it, while a wrong
  # computation (e.g. a dropped layer or head) lands at O(1).
  rel = np.linalg.norm(np.asarray(lg)[MASK] - ref) / np.linalg.norm(ref)
  assert rel < 5e-2, rel


def test_forward_rejects_non_2d_tokens():
  assert model.forward(PARAMS, TOKENS[:1], CFG).shape == (1, 9, CFG.vocab_size)
  for bad in (TOKENS[0], TOKENS[None]):
    with pytest.raises(ValueError, match=r'tokens \[B, T\], got shape'):
      model.forward(PARAMS, bad, CFG)


# ----------------------------------------------------------------------------
# Tiled attention with a fused backward (model.attention.causal_attention).


def _softmax_attention(q, k, v, allowed):
  """The textbook formula: masked logits, jax.nn.softmax, weighted values; autodiff backward."""
  logits = jnp.einsum("BTKgH,BSKH->BKTgS", q, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(allowed[:, None, :, None], logits, -1e30)
  return jnp.einsum("BKTgS,BSKH->BKTgH", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("rows,parts,chains,save", [
    (4, 1, 1, False), (2, 1, 1, False), (1, 1, 1, False), (4, 2, 1, False), (2, 4, 1, False),
    (1, 8, 1, False), (4, 16, 1, False), (4, 4, 2, False), (4, 1, 1, True), (2, 4, 2, True),
    (4, 4, 4, True)])
def test_tiled_attention_values_and_grads_equal_softmax_formula(rows, parts, chains, save):
  B, T, K, g, H = 4, 16, 2, 3, 8
  kq, kk, kv, kw = jax.random.split(jax.random.key(3), 4)
  q = 2 * jax.random.normal(kq, (B, T, K, g, H))  # large logits: the max shift matters
  k, v = jax.random.normal(kk, (B, T, K, H)), jax.random.normal(kv, (B, T, K, H))
  mask = np.ones((B, T), bool)
  mask[1, :5] = mask[2, :15] = mask[3, :8] = False  # left padding, one row with 1 real token
  allowed = np.tril(np.ones((T, T), bool))[None] & mask[:, None, :]
  w = jax.random.normal(kw, (B, K, T, g, H))
  real = mask[:, None, :, None, None]  # padded query rows are read by nobody

  def loss(attn, q, k, v):
    return jnp.sum(jnp.where(real, attn(q, k, v), 0.0) * w)

  tiling = model.attention.AttentionTiling(rows, parts, chains, save)
  tiled = lambda q, k, v: model.attention.causal_attention(q, k, v, allowed, tiling)
  ref = lambda q, k, v: _softmax_attention(q, k, v, allowed)
  out, want = jax.jit(tiled)(q, k, v), ref(q, k, v)
  np.testing.assert_allclose(np.asarray(out)[np.broadcast_to(real, out.shape)],
                             np.asarray(want)[np.broadcast_to(real, out.shape)], atol=2e-6, rtol=0)
  got_g = jax.jit(jax.grad(lambda *a: loss(tiled, *a), argnums=(0, 1, 2)))(q, k, v)
  want_g = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got_g, want_g):
    assert float(jnp.abs(b).max()) > 1e-2
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  # No gradient reaches padded keys/values or the queries of padded rows.
  assert float(jnp.abs(got_g[0][1, :5]).max()) == 0.0
  assert float(jnp.abs(got_g[1][2, :15]).max()) == float(jnp.abs(got_g[2][2, :15]).max()) == 0.0


def test_tiled_attention_bf16_inputs_give_bf16_grads_close_to_fp32():
  B, T, K, g, H = 2, 8, 1, 2, 8
  kq, kk, kv = jax.random.split(jax.random.key(4), 3)
  q, k, v = (jax.random.normal(kq, (B, T, K, g, H)), jax.random.normal(kk, (B, T, K, H)),
             jax.random.normal(kv, (B, T, K, H)))
  allowed = np.tril(np.ones((T, T), bool))[None].repeat(B, 0)
  for save in (False, True):
    tiling = model.attention.AttentionTiling(rows=1, parts=2, save_probs=save)
    f = lambda *a: jnp.sum(model.attention.causal_attention(*a, allowed, tiling).astype(jnp.float32) ** 2)
    g32 = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    g16 = jax.grad(f, argnums=(0, 1, 2))(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    for a, b in zip(g16, g32):
      assert a.dtype == jnp.bfloat16
      rel = float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))
      assert rel < 3e-2, rel  # bf16 inputs and probabilities: ~2^-8 relative rounding per op


def test_attention_tiling_choices_and_config_checks():
  cfg = dataclasses.replace(CFG, num_heads=8, num_kv_heads=4)
  if jax.default_backend() == "cpu":
    # Query blocks of >= 64 slots (at most 8); rows so that [rows, 8, T / parts, T] fp32 <= 4 MiB;
    # 2 row chains; exp tiles saved when the batch's 8 heads x computed slots x 4 B <= 16 MiB.
    assert model.attention.attention_tiling(cfg, 32, 256) == (8, 4, 2, False)  # 32 x 8 x 40960 x 4 = 40 MiB
    assert model.attention.attention_tiling(cfg, 4, 256) == (4, 4, 2, True)  # 5 MiB (the benchmark's)
    assert model.attention.attention_tiling(cfg, 32, 100) == (8, 1, 2, True)  # 320 kB a row: 13 fit, 8 divide
    assert model.attention.attention_tiling(cfg, 6, 2048) == (1, 8, 1, False)  # 8 MiB a row: one at a time
  fixed = dataclasses.replace(cfg, attention_block_rows=3, attention_query_blocks=3,
                              attention_row_chains=3, attention_save_probs=False)
  # Clipped to divisors of 8 (rows), 10 (query blocks) and the block's 2 rows (chains).
  assert model.attention.attention_tiling(fixed, 8, 10) == (2, 2, 2, False)
  for name in ("attention_block_rows", "attention_query_blocks", "attention_row_chains"):
    with pytest.raises(ValueError, match=f"ModelConfig.{name} must be positive"):
      dataclasses.replace(CFG, **{name: 0})


def test_model_logits_do_not_depend_on_the_attention_tiling():
  for rows, parts, chains, save in [(1, 1, 1, False), (3, 1, 1, True), (1, 3, 1, False),
                                    (3, 9, 3, True), (3, 3, 3, False)]:
    cfg = dataclasses.replace(CFG, attention_block_rows=rows, attention_query_blocks=parts,
                              attention_row_chains=chains, attention_save_probs=save)
    np.testing.assert_allclose(logits(cfg=cfg)[MASK], logits()[MASK], atol=ATOL, rtol=0)


def test_head_matmul_grads_equal_autodiff_of_the_plain_dot():
  kx, kw, kg = jax.random.split(jax.random.key(5), 3)
  x, w = jax.random.normal(kx, (24, 16)), jax.random.normal(kw, (16, 40))
  g = jax.random.normal(kg, (24, 40))
  f = lambda mm: lambda x, w: jnp.sum(mm(x, w) * g)
  got = jax.jit(jax.grad(f(model.layers.head_matmul), argnums=(0, 1)))(x, w)
  want = jax.grad(f(jnp.dot), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(np.asarray(model.layers.head_matmul(x, w)), np.asarray(x @ w), atol=1e-5)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(x.T @ g), atol=1e-4)  # dW = x^T g


@pytest.mark.parametrize("copy_transpose", [True, False])  # the CPU layout, the others'
def test_weight_grad_layouts_equal_x_transpose_times_dlogits(copy_transpose):
  kx, kg = jax.random.split(jax.random.key(8), 2)
  x, g = jax.random.normal(kx, (24, 16)), jax.random.normal(kg, (24, 40))
  got = jax.jit(model.layers.weight_grad, static_argnums=2)(x, g, copy_transpose)
  np.testing.assert_allclose(np.asarray(got), np.asarray(x).T @ np.asarray(g), atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 5, 16), (7, 8)])
def test_rms_norm_values_and_grads_equal_autodiff_of_the_formula(shape):
  kx, kw, kg = jax.random.split(jax.random.key(6), 3)
  x = 3 * jax.random.normal(kx, shape)
  w = 1 + 0.1 * jax.random.normal(kw, shape[-1:])
  g = jax.random.normal(kg, shape)
  eps = 1e-5
  formula = lambda x, w, eps: w * x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  f = lambda norm: lambda x, w: jnp.sum(norm(x, w, eps) * g)
  np.testing.assert_allclose(np.asarray(model.layers.rms_norm(x, w, eps)), np.asarray(formula(x, w, eps)),
                             atol=1e-5, rtol=1e-5)
  got = jax.jit(jax.grad(f(model.layers.rms_norm), argnums=(0, 1)))(x, w)
  want = jax.grad(f(formula), argnums=(0, 1))(x, w)
  for a, b in zip(got, want):
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
