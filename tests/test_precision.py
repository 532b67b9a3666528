"""bf16 compute with fp32 master weights (train.precision) and the "auto" dtypes (model.spec).

Tolerances follow from bf16's 8 significant bits: one rounding is off by at
most U = 2^-8 of its value (half an ulp). See each test for how many roundings
a number carries.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from realm_jax import model
from realm_jax.model import sampling, spec
from realm_jax.train import losses, precision, sharding, step as train_step

U = 2.0 ** -8  # bf16 unit roundoff
# A log-prob z_y - logsumexp(z) read from bf16 compute carries the roundings of
# the activations behind its O(1) logits: 2 layers of about ten rounded ops
# each (projections, norms, attention, MLP, residual adds), errors of random
# sign that add like a random walk. A typical token is then a few U off and
# the worst of ~100 tokens stays within 16 U (0.06 nats); a wrong computation
# (a dropped layer, a mask leak) is off by O(1).
MEAN_LOGP_GAP, MAX_LOGP_GAP = 4 * U, 16 * U

CFG = model.ModelConfig(vocab_size=128, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, init_std=0.1)  # logits of std ~0.8
BF16 = dataclasses.replace(CFG, dtype="bfloat16", param_dtype="bfloat16")
P32 = model.init_params(CFG, jax.random.key(0))
P16 = model.cast_params(P32, "bfloat16")


def _batch(B=4, T=24):
  rng = np.random.default_rng(0)
  mask = np.ones((B, T), bool)
  mask[1, :5] = mask[2, :11] = False  # left padding
  return np.where(mask, rng.integers(1, CFG.vocab_size, (B, T)), 0), mask


def test_auto_dtypes_resolve_by_backend():
  assert spec.resolve_dtype("auto", "cpu") == "float32"
  assert spec.resolve_dtype("auto", "gpu") == spec.resolve_dtype("auto", "tpu") == "bfloat16"
  assert spec.resolve_dtype("float16", "tpu") == "float16"  # explicit names win
  assert spec.ModelSpec().model_dtypes("tpu") == {"param_dtype": "bfloat16", "dtype": "bfloat16",
                                                  "matmul_dtype": None}
  assert spec.ModelSpec(param_dtype="float32").model_dtypes("gpu") == {
      "param_dtype": "float32", "dtype": "bfloat16", "matmul_dtype": None}
  if jax.default_backend() == "cpu":
    assert spec.ModelSpec().model_dtypes() == {"param_dtype": "float32", "dtype": "float32",
                                               "matmul_dtype": None}
  with pytest.raises(ValueError, match="model.dtype='fp8'"):
    spec.ModelSpec(dtype="fp8")


def test_bf16_logprobs_close_to_fp32():
  tokens, mask = _batch()
  lp32 = np.asarray(train_step.token_logprobs(P32, CFG, tokens, mask))
  lp16 = np.asarray(train_step.token_logprobs(P16, BF16, tokens, mask))
  assert lp16.dtype == np.float32  # fp32 log-softmax over bf16 compute
  read = mask[:, :-1] & mask[:, 1:]
  gap = np.abs(lp16 - lp32)[read]
  assert gap.mean() < MEAN_LOGP_GAP and gap.max() < MAX_LOGP_GAP, (gap.mean(), gap.max())
  assert gap.max() > 0  # bf16 really ran


def test_bf16_sampler_logprobs_close_to_trainer_logprobs():
  """The rollout's own log-probs (cached decode over a bf16 KV cache) against the
  trainer's full recompute of the same tokens, both in bf16: different orders of
  the same rounded ops, so the same bound as bf16 against fp32."""
  tokens, mask = _batch(T=12)
  scfg = sampling.SamplingConfig(max_new_tokens=12, num_samples=2)
  roll = sampling.generate(P16, BF16, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(1),
                           scfg)
  trainer = np.asarray(train_step.token_logprobs(P16, BF16, roll.tokens, roll.mask))
  comp = np.asarray(roll.completion_mask)[:, 1:]
  assert comp.sum() > 40
  gap = np.abs(np.asarray(roll.model_logprobs)[:, 1:] - trainer)[comp]
  assert gap.mean() < MEAN_LOGP_GAP and gap.max() < MAX_LOGP_GAP, (gap.mean(), gap.max())


def test_fp32_master_keeps_updates_that_bf16_rounds_away():
  """Adam (lr 1e-3) under a constant gradient moves each weight by lr * sign(g) a
  step (its bias-corrected m / sqrt(v) is g / |g|). At w = 1 half a bf16 ulp is
  2^-8 ~ 3.9e-3, so bf16 params updated in bf16 never move, while the fp32
  masters move by 1e-3 a step and the params, rounded from them, follow once
  the masters have moved by more than half an ulp."""
  params = {"w": jnp.ones((4, 64), jnp.bfloat16)}
  grads = {"w": jax.random.normal(jax.random.key(2), (4, 64)).astype(jnp.bfloat16)}
  opt = optax.adam(1e-3)
  state = train_step.init_state(params, opt)
  assert isinstance(state.opt_state, precision.MasterWeights)
  assert state.opt_state.master["w"].dtype == jnp.float32
  finish = jax.jit(lambda s: train_step._finish(s, opt, grads, {}))
  bf16_only = jax.jit(lambda p, o: (lambda u, o: (optax.apply_updates(p, u), o))(
      *opt.update(grads, o, p)))
  p_only, o_only = params, opt.init(params)
  sign = np.sign(np.asarray(grads["w"], np.float32))
  for n in range(1, 11):
    state, metrics = finish(state)
    p_only, o_only = bf16_only(p_only, o_only)
    master = np.asarray(state.opt_state.master["w"])
    np.testing.assert_allclose(master, 1.0 - n * 1e-3 * sign, atol=1e-6, rtol=0)
    assert state.params["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(state.params["w"]),
                                  np.asarray(jnp.asarray(master).astype(jnp.bfloat16)))
    assert np.all(np.asarray(p_only["w"], np.float32) == 1.0)  # every bf16 update rounded away
  assert np.all(np.asarray(state.params["w"], np.float32) != 1.0)  # 1e-2 > half an ulp
  assert metrics["grad_norm"].dtype == jnp.float32


def test_fp32_params_keep_the_plain_optimizer_state():
  opt = optax.adam(1e-3)
  params = {"w": jnp.ones((3,), jnp.float32)}
  state = train_step.init_state(params, opt)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(opt.init(params))


def test_bf16_sft_step_on_a_mesh_updates_fp32_masters():
  """The wired path: sharded state (masters placed like their params), jitted SFT step."""
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  opt = train_step.make_optimizer(1e-3, 0, 10, 0.0, 1.0)
  with sharding.use_mesh(mesh):
    # A copy: the donated step frees the buffers device_put shares with its input.
    state, sh = train_step.shard_state(train_step.init_state(jax.tree.map(jnp.copy, P16), opt),
                                       opt, BF16, mesh)
    master_sh = jax.tree.map(lambda x: x.sharding, state.opt_state.master)
    assert master_sh == jax.tree.map(lambda x: x.sharding, state.params)
    tokens, mask = _batch(B=8, T=8)
    batch = jax.device_put({"tokens": jnp.asarray(tokens, jnp.int32),
                            "mask": jnp.asarray(mask, jnp.int32),
                            "loss_mask": jnp.asarray(mask, jnp.int32)}, sh.batch)
    old = jax.tree.map(np.asarray, state.opt_state.master)
    state, metrics = train_step.make_sft_step(BF16, opt, shardings=sh)(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.opt_state.master, old)
  # Adam's first step moves each master by lr * g / (|g| + eps): lr 1e-3 where |g| >> eps
  np.testing.assert_allclose(jax.tree.leaves(moved), 1e-3, rtol=1e-4)
  jax.tree.map(lambda p, m: np.testing.assert_array_equal(
      np.asarray(p), np.asarray(m.astype(jnp.bfloat16))), state.params, state.opt_state.master)


# Microbatched gradients (train.step.accumulate_grads) reach the optimizer in fp32.
F32_EPS = 2.0 ** -24  # fp32 unit roundoff
# One pass's gradient over bf16 params against the fp32 sum of four microbatch
# gradients: both carry the backward's bf16 roundings of the same 2 layers, placed
# differently (one pass rounds its whole sum to bf16 once, each microbatch its
# part; the loss cotangents 1/D and 1/D_i round differently), of random sign. As
# for the log-probs: a tensor's entries are typically a few U of its scale off
# (rms within 4 U of its rms) and none beyond 16 U of its largest; a dropped or
# mis-weighted microbatch is off by about its share (~25%, 64 U).
RMS_GRAD_GAP, MAX_GRAD_GAP = 4 * U, 16 * U


def _sft_batch(B=8, T=24):
  """Left padded; loss on the completion after a prompt of random length, so the
  microbatches (rows i, i + 4) hold unequal shares of the loss tokens."""
  tokens, mask = _batch(B, T)
  prompt_end = np.random.default_rng(1).integers(6, 20, B)
  loss_mask = mask & (np.arange(T)[None] >= prompt_end[:, None])
  return {"tokens": jnp.asarray(tokens, jnp.int32), "mask": jnp.asarray(mask, jnp.int32),
          "loss_mask": jnp.asarray(loss_mask, jnp.int32)}


def _sft_loss(params, batch):
  """The SFT step's loss (token-mean cross-entropy over the loss mask), written out."""
  logits_BTV = model.apply(params, BF16, batch["tokens"], batch["mask"])[0][:, :-1]
  return losses.sft_loss(logits_BTV, batch["tokens"][:, 1:], batch["loss_mask"][:, 1:])[0]


def _recording_optimizer():
  """Moves nothing; its state is the last gradient it was given."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def test_microbatched_bf16_grads_reach_the_optimizer_in_fp32(monkeypatch):
  """microbatches=4 over bf16 params: `precision.apply_update` gets fp32 gradients equal
  to sum_i w_i g_i in fp32 (g_i: microbatch i's bf16 gradient, w_i = D_i / D its share
  of the loss tokens) up to fp32 rounding, where their bf16 rounding is not."""
  batch = _sft_batch()
  loss_tokens = np.asarray(batch["loss_mask"])[:, 1:] > 0
  want, size = None, None  # sum_i w_i g_i (float64) and sum_i |w_i g_i|
  for i in range(4):
    mb = jax.tree.map(lambda x: x[i::4], batch)
    w = loss_tokens[i::4].sum() / loss_tokens.sum()
    g = jax.tree.map(lambda x: w * np.asarray(x, np.float64), jax.jit(jax.grad(_sft_loss))(P16, mb))
    want = g if want is None else jax.tree.map(np.add, want, g)
    size = jax.tree.map(np.abs, g) if size is None else jax.tree.map(lambda s, x: s + np.abs(x),
                                                                      size, g)
  assert len({int(loss_tokens[i::4].sum()) for i in range(4)}) > 1  # unequal shares

  dtypes = []
  apply_update = precision.apply_update
  def spy(optimizer, grads, opt_state, params):
    dtypes.extend(g.dtype for g in jax.tree.leaves(grads))
    return apply_update(optimizer, grads, opt_state, params)
  monkeypatch.setattr(precision, "apply_update", spy)
  opt = _recording_optimizer()
  state = train_step.init_state(jax.tree.map(jnp.copy, P16), opt)
  state, _ = train_step.make_sft_step(BF16, opt, microbatches=4)(state, batch)
  assert set(dtypes) == {jnp.dtype(jnp.float32)}

  def check(got, want, size):
    # Five fp32 roundings, each within F32_EPS of a value at most sum_i |w_i g_i|: w_i,
    # the products w_i g_i and the three additions.
    bound = 5 * F32_EPS * size
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound)
    rounded = np.asarray(jnp.asarray(want, jnp.float32).astype(jnp.bfloat16), np.float64)
    assert np.any(np.abs(rounded - want) > bound)  # a bf16 gradient would fail the check
  jax.tree.map(check, state.opt_state.inner, want, size)


def test_bf16_sft_step_moves_masters_alike_with_and_without_microbatches():
  """One SFT step on bf16 params, microbatches=4 against 1, with SGD (lr 1e-2): each
  master moves by -lr g, so this compares the gradients themselves (Adam's first step
  moves by lr sign(g), blind to their size). The gradients differ by bf16 roundings of
  the backward only (RMS_GRAD_GAP, MAX_GRAD_GAP)."""
  batch, opt = _sft_batch(), optax.sgd(1e-2)

  def moved(n):
    state = train_step.init_state(jax.tree.map(jnp.copy, P16), opt)
    old = jax.tree.map(lambda m: np.asarray(m, np.float64), state.opt_state.master)
    state, _ = train_step.make_sft_step(BF16, opt, microbatches=n)(state, batch)
    assert {m.dtype for m in jax.tree.leaves(state.opt_state.master)} == {jnp.dtype(jnp.float32)}
    return jax.tree.map(lambda m, o: np.asarray(m, np.float64) - o, state.opt_state.master, old)

  def check(one, four):
    rms = lambda x: np.sqrt(np.mean(x ** 2))
    assert np.abs(one).max() > 1e-4  # every tensor moves
    assert rms(four - one) <= RMS_GRAD_GAP * rms(one)
    assert np.abs(four - one).max() <= MAX_GRAD_GAP * np.abs(one).max()
  jax.tree.map(check, moved(1), moved(4))


def test_bf16_kv_cache_under_fp32_compute():
  """model.cache_dtype=bfloat16 with fp32 params and compute: the cache holds bf16 K/V, so
  the sampler's log-probs (read through it) differ from the fp32 trainer's by the rounding of
  K and V alone, within the bf16 bounds; with the default fp32 cache they agree to fp32
  rounding."""
  cfg16 = dataclasses.replace(CFG, cache_dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(model.init_cache(cfg16, 2, 8))} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(model.init_cache(CFG, 2, 8))} == {jnp.dtype(jnp.float32)}
  tokens, mask = _batch(T=12)
  scfg = sampling.SamplingConfig(max_new_tokens=12, num_samples=2)
  gaps = {}
  for name, cfg in (("bf16", cfg16), ("fp32", CFG)):
    roll = sampling.generate(P32, cfg, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(1),
                             scfg)
    trainer = np.asarray(train_step.token_logprobs(P32, CFG, roll.tokens, roll.mask))
    comp = np.asarray(roll.completion_mask)[:, 1:]
    gaps[name] = np.abs(np.asarray(roll.model_logprobs)[:, 1:] - trainer)[comp]
  assert gaps["fp32"].max() < 1e-4
  g = gaps["bf16"]
  assert g.mean() < MEAN_LOGP_GAP and g.max() < MAX_LOGP_GAP, (g.mean(), g.max())
  assert g.max() > 10 * gaps["fp32"].max()  # the bf16 cache really ran
