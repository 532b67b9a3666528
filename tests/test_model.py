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
