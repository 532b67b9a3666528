"""Wiring: the LR schedule's boundaries, the SFT/RL steps against hand-made expectations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from realm_jax.rl import losses
from realm_jax import model
from realm_jax.train import step as train_step
from realm_jax.rl import step as rl_step
from realm_jax.rl.batch import RouteBatch, UpdateBatch

CFG = model.ModelConfig(vocab_size=40, num_layers=2, d_model=16, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=32)


@pytest.mark.parametrize("warmup", [0, 4])
def test_lr_schedule_boundaries(warmup):
  s = train_step.lr_schedule(2.0, warmup, 20)
  if warmup:  # lr (t + 1) / warmup: the first update is not a no-op (it was 0 before issue 15)
    assert float(s(0)) == pytest.approx(0.5) and float(s(2)) == pytest.approx(1.5)
    assert float(s(warmup - 1)) == pytest.approx(2.0)               # lr reached at warmup - 1
  assert float(s(warmup)) == pytest.approx(2.0)                      # peak at end of warm-up
  assert float(s(20)) == pytest.approx(0.2)                          # lr/10 at the last step
  assert float(s(20 + warmup)) == pytest.approx(0.2)                 # and stays there
  D = 20 - warmup  # cosine: 0.2 + 1.8 (1 + cos(pi x)) / 2 at the fraction x of the decay
  assert float(s(warmup + D // 2)) == pytest.approx(1.1, rel=1e-6)   # x = 1/2 (linear: 1.1 too)
  assert float(s(warmup + D // 4)) == pytest.approx(0.2 + 0.9 * (1 + np.cos(np.pi / 4)),
                                                    rel=1e-6)        # x = 1/4: 1.736 (linear 1.55)


def _batch(rng, B=4, T=10):
  tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (B, T)), jnp.int32)
  mask = jnp.ones((B, T), jnp.int32).at[0, :3].set(0)           # row 0 left-padded
  cmask = jnp.zeros((B, T), jnp.int32).at[:, 6:].set(1)         # last 4 tokens are the completion
  return tokens, mask, cmask


def test_token_logprobs_shift_convention():
  params = model.init_params(CFG, jax.random.key(0))
  tokens, mask, _ = _batch(np.random.default_rng(0))
  logp = train_step.token_logprobs(params, CFG, tokens, mask)
  logits, _ = model.apply(params, CFG, tokens, mask)
  want = jax.nn.log_softmax(logits[:, :-1], -1)
  want = jnp.take_along_axis(want, tokens[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(logp, want, atol=1e-6)


def test_completion_only_logprobs_match_the_full_pass_on_completion_targets():
  """The last M targets (a rollout's completion slots) from a head applied to
  those positions only equal the full pass; earlier targets read 0."""
  params = model.init_params(CFG, jax.random.key(3))
  tokens, mask, _ = _batch(np.random.default_rng(3))
  full = train_step.token_logprobs(params, CFG, tokens, mask)
  part = train_step.token_logprobs(params, CFG, tokens, mask, completion_len=4)
  assert part.shape == full.shape == (4, 9)
  np.testing.assert_allclose(part[:, -4:], full[:, -4:], atol=1e-6)
  assert np.all(np.asarray(part[:, :-4]) == 0.0)
  logits, _ = model.apply(params, CFG, tokens, mask, logits_from=6)
  np.testing.assert_allclose(logits, model.apply(params, CFG, tokens, mask)[0][:, 6:], atol=1e-6)


def test_rl_loss_and_gradients_do_not_depend_on_completion_only_logits():
  params = model.init_params(CFG, jax.random.key(4))
  rng = np.random.default_rng(4)
  tokens, mask, cmask = _batch(rng)
  cmask = cmask.at[1, 8:].set(0)  # a completion that stopped early
  ref = train_step.token_logprobs(jax.tree.map(lambda x: x * 1.01, params), CFG, tokens, mask)
  batch = UpdateBatch(tokens=tokens, mask=mask, completion_mask=cmask, ref_logp=ref,
                      adv=jnp.asarray(rng.normal(size=4), jnp.float32))
  cfg = losses.LossConfig(kl_coef=0.04, entropy_coef=0.01)
  grad = jax.value_and_grad(rl_step.policy_loss, has_aux=True)
  (l_full, m_full), g_full = grad(params, batch, CFG, cfg)
  (l_part, m_part), g_part = grad(params, batch, CFG, cfg, 4)
  assert float(l_part) == pytest.approx(float(l_full), abs=1e-6)
  for k in ("entropy", "kl_k3", "ratio_mean"):
    assert float(m_part[k]) == pytest.approx(float(m_full[k]), abs=1e-6), k
  for a, b in zip(jax.tree.leaves(g_part), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rl_step_with_zero_advantage_and_reference_equal_policy_changes_nothing():
  """adv = 0 and ref = policy: the PPO and KL terms have zero gradient, ratio 1, KL 0."""
  params = model.init_params(CFG, jax.random.key(1))
  opt = train_step.make_optimizer(1e-2, 0, 10, 0.0, 1.0)
  state = train_step.init_state(params, opt)
  tokens, mask, cmask = _batch(np.random.default_rng(1))
  ref = train_step.token_logprobs(params, CFG, tokens, mask)
  batch = UpdateBatch(tokens=tokens, mask=mask, completion_mask=cmask, ref_logp=ref,
                      adv=jnp.zeros(4))
  step = rl_step.make_rl_step(CFG, opt, losses.LossConfig(kl_coef=0.1))
  new_state, m = step(state, batch)
  # (Params may still move: Adam rescales float-noise gradients, so the check is the gradient.)
  assert float(m["grad_norm"]) == pytest.approx(0.0, abs=1e-6)
  assert float(m["kl_k3"]) == pytest.approx(0.0, abs=1e-6)
  assert float(m["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
  assert int(new_state.step) == 1


def test_rl_step_raises_logprob_of_positively_rewarded_completion():
  params = model.init_params(CFG, jax.random.key(2))
  opt = train_step.make_optimizer(1e-2, 0, 10, 0.0, 1.0)
  state = train_step.init_state(params, opt)
  tokens, mask, cmask = _batch(np.random.default_rng(2))
  adv = jnp.array([1.0, -1.0, 0.0, 0.0])
  lp0 = train_step.token_logprobs(params, CFG, tokens, mask)
  batch = UpdateBatch(tokens=tokens, mask=mask, completion_mask=cmask, ref_logp=lp0, adv=adv)
  step = rl_step.make_rl_step(CFG, opt, losses.LossConfig())
  new_state, _ = step(state, batch)
  lp1 = train_step.token_logprobs(new_state.params, CFG, tokens, mask)
  seq = lambda lp, i: float(jnp.sum(lp[i] * cmask[i, 1:]))
  assert seq(lp1, 0) > seq(lp0, 0)   # rewarded completion became likelier
  assert seq(lp1, 1) < seq(lp0, 1)   # penalised one less likely


def test_sft_step_only_learns_the_completion_tokens():
  """Gradients through prompt tokens are masked: a loss mask of zeros gives zero grad."""
  params = model.init_params(CFG, jax.random.key(3))
  opt = train_step.make_optimizer(1e-2, 0, 10, 0.0, 1.0)
  tokens, mask, _ = _batch(np.random.default_rng(3))
  step = train_step.make_sft_step(CFG, opt)
  _, m = step(train_step.init_state(params, opt),
              {"tokens": tokens, "mask": mask, "loss_mask": jnp.zeros_like(mask)})
  assert float(m["grad_norm"]) == 0.0


# --- microbatches: gradient accumulation must equal the one-pass step exactly.

def _sgd_step(make, params, batch, **kw):
  """One step with SGD(lr=1): the param change is minus the gradient."""
  opt = optax.sgd(1.0)
  start = jax.tree.map(jnp.copy, params)  # the step donates its state
  new, m = make(opt, **kw)(train_step.init_state(start, opt), batch)
  return jax.tree.map(lambda a, b: np.asarray(a - b), new.params, params), m


def _uneven_rl_batch(seed, N=8, T=12):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (N, T)), jnp.int32)
  mask = np.ones((N, T), np.int32)
  mask[1, :2] = 0
  cmask = np.zeros((N, T), np.int32)
  for i, n in enumerate([6, 1, 3, 0, 5, 6, 2, 4]):  # unequal lengths, one row fully masked
    cmask[i, 6:6 + n] = 1
  return UpdateBatch(tokens=tokens, mask=jnp.asarray(mask), completion_mask=jnp.asarray(cmask),
                     ref_logp=jnp.asarray(rng.normal(-3, 0.5, (N, T - 1)), jnp.float32),
                     old_logp=jnp.asarray(rng.normal(-3, 0.5, (N, T - 1)), jnp.float32),
                     adv=jnp.asarray(rng.normal(size=N), jnp.float32))


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean",
                                         "seq_mean_token_sum_norm"])
def test_rl_step_microbatches_equal_one_pass(aggregation):
  params = model.init_params(CFG, jax.random.key(5))
  batch = _uneven_rl_batch(5)
  loss_cfg = losses.LossConfig(kl_coef=0.04, entropy_coef=0.01, aggregation=aggregation,
                               max_len=6, clip_low=0.1, clip_high=0.1)
  make = lambda opt, **kw: rl_step.make_rl_step(CFG, opt, loss_cfg, completion_len=6, **kw)
  d1, m1 = _sgd_step(make, params, batch)
  for n in (2, 4):
    dn, mn = _sgd_step(make, params, batch, microbatches=n)
    for a, b in zip(jax.tree.leaves(dn), jax.tree.leaves(d1)):
      np.testing.assert_allclose(a, b, atol=2e-6)
    for k in ("loss", "pg_loss", "kl_k3", "entropy", "clip_frac", "ratio_mean", "ratio_max"):
      assert float(mn[k]) == pytest.approx(float(m1[k]), abs=1e-5), (n, k)


def test_rl_step_microbatches_with_the_contrast_term():
  params = model.init_params(CFG, jax.random.key(6))
  batch = _uneven_rl_batch(6)
  rng = np.random.default_rng(6)
  B, K, Tr = 4, 2, 7
  rl_mask = np.zeros((B * K, Tr), np.int32)
  rl_mask[:, 3:] = 1
  batch = batch.replace(route=RouteBatch(
      tokens=jnp.asarray(rng.integers(1, CFG.vocab_size, (B * K, Tr)), jnp.int32),
      mask=jnp.ones((B * K, Tr), jnp.int32), loss_mask=jnp.asarray(rl_mask),
      ref_logp=jnp.asarray(rng.normal(-10, 1, (B, K)), jnp.float32),
      labels=jnp.asarray([[True, False]] * B),
      valid=jnp.asarray([[True, True]] * 3 + [[True, False]])))
  make = lambda opt, **kw: rl_step.make_rl_step(CFG, opt, losses.LossConfig(kl_coef=0.04),
                                                   contrast_coef=0.5, completion_len=6, **kw)
  d1, m1 = _sgd_step(make, params, batch)
  d4, m4 = _sgd_step(make, params, batch, microbatches=4)
  for a, b in zip(jax.tree.leaves(d4), jax.tree.leaves(d1)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), abs=1e-5)
  assert float(m4["contrast_loss"]) == pytest.approx(float(m1["contrast_loss"]), abs=1e-6)


def test_sft_step_microbatches_equal_one_pass():
  params = model.init_params(CFG, jax.random.key(7))
  rng = np.random.default_rng(7)
  tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (8, 10)), jnp.int32)
  loss_mask = np.zeros((8, 10), np.int32)
  for i, n in enumerate([9, 1, 4, 0, 2, 7, 3, 5]):  # rows with very different token counts
    loss_mask[i, 10 - n:] = 1
  batch = {"tokens": tokens, "mask": jnp.ones((8, 10), jnp.int32), "loss_mask": jnp.asarray(loss_mask)}
  make = lambda opt, **kw: train_step.make_sft_step(CFG, opt, **kw)
  d1, m1 = _sgd_step(make, params, batch)
  d4, m4 = _sgd_step(make, params, batch, microbatches=4)
  for a, b in zip(jax.tree.leaves(d4), jax.tree.leaves(d1)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  for k in ("loss", "token_accuracy"):
    assert float(m4[k]) == pytest.approx(float(m1[k]), abs=1e-6), k


def test_microbatched_logprobs_keep_row_order():
  params = model.init_params(CFG, jax.random.key(8))
  tokens, mask, _ = _batch(np.random.default_rng(8), B=8)
  full = train_step.make_logprob_fn(CFG, 4)(params, tokens, mask)
  np.testing.assert_allclose(train_step.make_logprob_fn(CFG, 4, microbatches=4)(params, tokens, mask),
                             full, atol=1e-6)
  with pytest.raises(ValueError, match="does not split into 3 microbatches"):
    train_step.make_logprob_fn(CFG, 4, microbatches=3)(params, tokens, mask)


def test_unrolled_layers_equal_scan():
  import dataclasses
  cfg_u = dataclasses.replace(CFG, scan_layers=False)
  params = model.init_params(CFG, jax.random.key(9))
  tokens, mask, _ = _batch(np.random.default_rng(9))
  np.testing.assert_allclose(model.apply(params, cfg_u, tokens, mask)[0],
                             model.apply(params, CFG, tokens, mask)[0], atol=1e-5)
  g = lambda c: jax.grad(lambda p: jnp.sum(train_step.token_logprobs(p, c, tokens, mask)))(params)
  for a, b in zip(jax.tree.leaves(g(cfg_u)), jax.tree.leaves(g(CFG))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_microbatches_over_unrolled_layers_equal_one_pass():
  """`scan_layers=False` steps slice the layers once per step (`layer_list`); the
  result must equal the one-pass step of the scanned model, for RL and SFT."""
  import dataclasses
  cfg_u = dataclasses.replace(CFG, scan_layers=False)
  params = model.init_params(CFG, jax.random.key(10))
  for a, b in zip(jax.tree.leaves(model.stack_layers(model.unstack_layers(params))),
                  jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert (jax.tree.structure(model.stack_layers(model.unstack_layers(params)))
          == jax.tree.structure(params))
  batch = _uneven_rl_batch(10)
  loss_cfg = losses.LossConfig(kl_coef=0.04)
  d1, m1 = _sgd_step(lambda opt, **kw: rl_step.make_rl_step(
      CFG, opt, loss_cfg, completion_len=6, **kw), params, batch)
  d4, m4 = _sgd_step(lambda opt, **kw: rl_step.make_rl_step(
      cfg_u, opt, loss_cfg, completion_len=6, **kw), params, batch, microbatches=4)
  assert jax.tree.structure(d4) == jax.tree.structure(d1)
  for a, b in zip(jax.tree.leaves(d4), jax.tree.leaves(d1)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), abs=1e-5)
  sft = {"tokens": batch.tokens, "mask": batch.mask, "loss_mask": batch.completion_mask}
  d1, m1 = _sgd_step(lambda opt, **kw: train_step.make_sft_step(CFG, opt, **kw), params, sft)
  d4, m4 = _sgd_step(lambda opt, **kw: train_step.make_sft_step(cfg_u, opt, **kw), params, sft,
                     microbatches=4)
  for a, b in zip(jax.tree.leaves(d4), jax.tree.leaves(d1)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), abs=1e-6)


def test_gradient_clipping_by_global_norm_against_adam_by_hand():
  """Two Adam steps (b1 0.9, b2 0.95) on gradients 10u then u, |u| = 1. Clipped at norm 1
  both are u, so the second update is exactly -lr_1 sign(u); unclipped it is
  -lr_1 (m2 / 0.19) / sqrt(v2 / 0.0975) with m2 = u, v2 = 4.8 u^2: 0.750 of that."""
  u = jnp.array([0.6, -0.8])
  lr1 = 1e-2 * (0.1 + 0.9 * (1 + np.cos(np.pi / 10)) / 2)  # the schedule at t = 1 of 10
  for clip, ratio in ((1.0, 1.0), (1e30, (1 / 0.19) / np.sqrt(4.8 / 0.0975))):
    opt = train_step.make_optimizer(1e-2, 0, 10, 0.0, clip)
    state = opt.init(jnp.zeros(2))
    _, state = opt.update(10 * u, state, jnp.zeros(2))
    update, _ = opt.update(u, state, jnp.zeros(2))
    np.testing.assert_allclose(update, -lr1 * ratio * np.sign(u), rtol=1e-5)


def test_sft_step_mixes_cross_entropy_and_distillation_by_alpha():
  """loss = (1 - a) CE + a T^2 KL(teacher_T || student_T) over the loss mask, computed here
  in numpy from the logits, with teacher logits far from the student's."""
  params = model.init_params(CFG, jax.random.key(4))
  rng = np.random.default_rng(4)
  tokens, mask, cmask = _batch(rng)
  t_logits = jnp.asarray(rng.normal(0, 3, (4, 9, CFG.vocab_size)), jnp.float32)
  s_logits = np.asarray(model.apply(params, CFG, tokens, mask)[0][:, :-1], np.float64)
  lsm = lambda z: scipy.special.log_softmax(z, axis=-1)
  m = np.asarray(cmask[:, 1:], bool)
  tgt = np.asarray(tokens[:, 1:])
  ce = -np.take_along_axis(lsm(s_logits), tgt[..., None], -1)[..., 0][m].mean()
  T = 2.0
  lp_t, lp_s = lsm(np.asarray(t_logits, np.float64) / T), lsm(s_logits / T)
  kl = (np.exp(lp_t) * (lp_t - lp_s)).sum(-1)[m].mean()
  assert kl > 0.5  # teacher and student differ: the KD term is not trivially 0
  for alpha in (0.25, 0.5):
    step = train_step.make_sft_step(CFG, optax.sgd(0.0), kd_alpha=alpha, kd_temperature=T)
    _, metrics = step(train_step.init_state(jax.tree.map(jnp.copy, params), optax.sgd(0.0)),
                      {"tokens": tokens, "mask": mask, "loss_mask": cmask,
                       "teacher_logits": t_logits})
    assert float(metrics["kd_kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(metrics["loss"]) == pytest.approx((1 - alpha) * ce + alpha * T * T * kl,
                                                   rel=1e-4)
