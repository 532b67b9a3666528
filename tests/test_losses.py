"""Losses: hand-computed values, invariances, masking through gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.rl import losses
from realm_jax.train import losses as train_losses

LOGP_TOL = 1e-5   # fp32 policy for log-probs
LOGIT_TOL = 1e-4  # fp32 policy for logits (and their gradients)

LN2, LN3 = math.log(2.0), math.log(3.0)


# -- configuration -------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(clip_low=1.0), "clip_low"),
    (dict(clip_high=-0.1), "clip_high"),
    (dict(aggregation="sum"), "aggregation"),
    (dict(aggregation="seq_mean_token_sum_norm"), "max_len"),
    (dict(kl_coef=-1.0), "kl_coef"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(entropy_coef=-0.1), "entropy_coef"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.LossConfig(**kwargs)


# -- log-probs, entropy, KL ----------------------------------------------------


def test_token_logprobs_and_entropy_golden():
  # logits [0, ln2, ln3] -> softmax [1, 2, 3] / 6.
  logits = jnp.array([[[0.0, LN2, LN3], [0.0, LN2, LN3]]])
  logp = train_losses.token_logprobs(logits, jnp.array([[2, 0]]))
  np.testing.assert_allclose(logp, [[math.log(0.5), math.log(1 / 6)]],
                             atol=LOGP_TOL)
  # H = -(1/6 ln 1/6 + 2/6 ln 2/6 + 3/6 ln 3/6) = 1.011404...
  h = -sum(p * math.log(p) for p in (1 / 6, 2 / 6, 3 / 6))
  np.testing.assert_allclose(train_losses.token_entropy(logits), [[h, h]],
                             atol=LOGP_TOL)


def test_token_logprobs_matches_float64_numpy_and_upcasts_bf16():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 4
  targets = rng.integers(0, 11, size=(2, 5))
  z = logits.astype(np.float64)
  ref = z - z.max(-1, keepdims=True)
  ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
  ref = np.take_along_axis(ref, targets[..., None], -1)[..., 0]
  out = train_losses.token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=LOGP_TOL)
  out_bf16 = train_losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16),
                                   jnp.asarray(targets))
  assert out_bf16.dtype == jnp.float32


def test_kl_estimates_golden():
  # logp = ln 0.5, ref = ln 0.25 -> d = ln 2.
  #   k1 = ln2 = 0.693147, k2 = (ln2)^2 / 2 = 0.240227,
  #   k3 = exp(-ln2) + ln2 - 1 = 0.5 + 0.693147 - 1 = 0.193147.
  kl = losses.kl_estimates(jnp.array([[math.log(0.5)]]),
                           jnp.array([[math.log(0.25)]]))
  np.testing.assert_allclose(kl["k1"], [[LN2]], atol=LOGP_TOL)
  np.testing.assert_allclose(kl["k2"], [[0.5 * LN2**2]], atol=LOGP_TOL)
  np.testing.assert_allclose(kl["k3"], [[0.5 + LN2 - 1.0]], atol=LOGP_TOL)


def test_policy_equals_reference_gives_zero_kl_and_unit_ratio():
  logp = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7)) - 2.0,
                     jnp.float32)
  for value in losses.kl_estimates(logp, logp).values():
    np.testing.assert_array_equal(value, 0.0)
  mask = jnp.ones((3, 7))
  cfg = losses.LossConfig(kl_coef=0.1)
  _, m = losses.ppo_loss(logp, logp, jnp.array([1., -1., 0.5]), mask, cfg,
                         ref_logp_BT=logp)
  for key in ("kl_k1", "kl_k2", "kl_k3", "clip_frac"):
    assert float(m[key]) == 0.0
  assert float(m["ratio_mean"]) == 1.0


# -- aggregation ---------------------------------------------------------------

# Row 0 has 4 tokens, row 1 has 2, row 2 has none. Masked cells hold garbage.
VALUES = jnp.array([[1., 2., 3., 4.], [10., 20., 7., np.nan],
                    [5., 5., 5., 5.]])
MASK = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_aggregation_golden():
  # token_mean:              (1+2+3+4+10+20) / 6         = 40/6
  # seq_mean_token_mean:     (10/4 + 30/2) / 2           = (2.5 + 15) / 2 = 8.75
  # seq_mean_token_sum_norm: (10/4 + 30/4) / 2, max_len 4 = (2.5 + 7.5) / 2 = 5
  #   (the all-masked row 2 is not a sequence in either seq mode)
  np.testing.assert_allclose(
      losses.aggregate(VALUES, MASK, "token_mean"), 40 / 6, atol=LOGP_TOL)
  np.testing.assert_allclose(
      losses.aggregate(VALUES, MASK, "seq_mean_token_mean"), 8.75,
      atol=LOGP_TOL)
  np.testing.assert_allclose(
      losses.aggregate(VALUES, MASK, "seq_mean_token_sum_norm", max_len=4),
      5.0, atol=LOGP_TOL)
  # max_len 8: (10/8 + 30/8) / 2 = 2.5
  np.testing.assert_allclose(
      losses.aggregate(VALUES, MASK, "seq_mean_token_sum_norm", max_len=8),
      2.5, atol=LOGP_TOL)


def test_aggregation_all_masked_is_zero_and_errors():
  for mode in losses.AGGREGATIONS:
    assert float(losses.aggregate(VALUES, jnp.zeros_like(MASK), mode, 4)) == 0
  with pytest.raises(ValueError, match="max_len"):
    losses.aggregate(VALUES, MASK, "seq_mean_token_sum_norm")
  with pytest.raises(ValueError, match="aggregation mode"):
    losses.aggregate(VALUES, MASK, "mean")


def test_ppo_aggregation_modes_on_unequal_lengths():
  # ratio 1 -> per-token loss -A_b. A = [1, -1], lengths 4 and 2:
  #   token_mean = (4 * -1 + 2 * 1) / 6 = -1/3
  #   seq_mean_token_mean = (-1 + 1) / 2 = 0
  #   seq_mean_token_sum_norm (max_len 4) = (-4/4 + 2/4) / 2 = -0.25
  logp = jnp.full((2, 4), -1.0)
  mask = MASK[:2]
  adv = jnp.array([1., -1.])
  expected = {"token_mean": -1 / 3, "seq_mean_token_mean": 0.0,
              "seq_mean_token_sum_norm": -0.25}
  for mode, value in expected.items():
    cfg = losses.LossConfig(aggregation=mode, max_len=4)
    loss, m = losses.ppo_loss(logp, logp, adv, mask, cfg)
    np.testing.assert_allclose(loss, value, atol=LOGP_TOL)
    np.testing.assert_allclose(m["pg_loss"], value, atol=LOGP_TOL)


# -- PPO clip ------------------------------------------------------------------


def _four_cases(clip_high):
  # One token per row; (A, ratio): (+1, 1.5), (+1, 0.5), (-1, 0.5), (-1, 1.5).
  old = jnp.zeros((4, 1))
  logp = jnp.log(jnp.array([[1.5], [0.5], [0.5], [1.5]]))
  adv = jnp.array([1., 1., -1., -1.])
  cfg = losses.LossConfig(clip_low=0.2, clip_high=clip_high)
  return logp, old, adv, jnp.ones((4, 1)), cfg


def test_ppo_clip_golden_with_clip_higher():
  # clip range [0.8, 1.28]; pg = max(-A r, -A clip(r)):
  #   (+1, 1.5): max(-1.5, -1.28) = -1.28   clipped (high)
  #   (+1, 0.5): max(-0.5, -0.8)  = -0.5    not clipped
  #   (-1, 0.5): max( 0.5,  0.8)  =  0.8    clipped (low)
  #   (-1, 1.5): max( 1.5,  1.28) =  1.5    not clipped
  #   token_mean = (-1.28 - 0.5 + 0.8 + 1.5) / 4 = 0.13
  logp, old, adv, mask, cfg = _four_cases(clip_high=0.28)
  loss, m = losses.ppo_loss(logp, old, adv, mask, cfg)
  np.testing.assert_allclose(loss, 0.13, atol=LOGP_TOL)
  np.testing.assert_allclose(m["clip_frac"], 0.5, atol=LOGP_TOL)
  np.testing.assert_allclose(m["clip_frac_low"], 0.25, atol=LOGP_TOL)
  np.testing.assert_allclose(m["clip_frac_high"], 0.25, atol=LOGP_TOL)
  np.testing.assert_allclose(m["ratio_mean"], 1.0, atol=LOGP_TOL)
  np.testing.assert_allclose(m["ratio_max"], 1.5, atol=LOGP_TOL)
  # Gradient wrt logp: 0 where clipped; -A r / 4 elsewhere:
  #   row 1: -(1)(0.5)/4 = -0.125, row 3: -(-1)(1.5)/4 = 0.375.
  grad = jax.grad(lambda lp: losses.ppo_loss(lp, old, adv, mask, cfg)[0])(logp)
  np.testing.assert_allclose(grad, [[0.0], [-0.125], [0.0], [0.375]],
                             atol=LOGP_TOL)
  # Symmetric clip 0.2: row 0 becomes -1.2, so the loss rises by 0.08 / 4.
  logp, old, adv, mask, cfg = _four_cases(clip_high=0.2)
  loss_sym, _ = losses.ppo_loss(logp, old, adv, mask, cfg)
  np.testing.assert_allclose(loss_sym, 0.13 + 0.02, atol=LOGP_TOL)


def test_clip_has_no_effect_inside_bounds():
  rng = np.random.default_rng(2)
  ratio = rng.uniform(0.85, 1.15, size=(3, 6))
  old = rng.normal(size=(3, 6)) - 3.0
  logp = jnp.asarray(old + np.log(ratio), jnp.float32)
  old = jnp.asarray(old, jnp.float32)
  adv = jnp.array([0.7, -1.3, 0.2])
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
  cfg = losses.LossConfig(clip_low=0.2, clip_high=0.2)
  loss, m = losses.ppo_loss(logp, old, adv, mask, cfg)
  # Unclipped surrogate, token mean, computed independently in numpy.
  r = np.exp(np.asarray(logp, np.float64) - np.asarray(old, np.float64))
  per_tok = -np.asarray(adv)[:, None] * r
  mk = np.asarray(mask, bool)
  np.testing.assert_allclose(loss, per_tok[mk].mean(), atol=LOGP_TOL)
  assert float(m["clip_frac"]) == 0.0
  unclipped = lambda lp: losses.aggregate(
      -adv[:, None] * jnp.exp(lp - old), mask, "token_mean")
  g = jax.grad(lambda lp: losses.ppo_loss(lp, old, adv, mask, cfg)[0])(logp)
  np.testing.assert_allclose(g, jax.grad(unclipped)(logp), atol=LOGP_TOL)


def test_kl_in_loss_and_in_reward():
  # A = 0, ratio 1 -> pg = 0; logp = ln .5, ref = ln .25 (see the KL golden):
  #   loss = 0.1 * k with k3 = 0.193147, k1 = 0.693147, k2 = 0.240227.
  logp = jnp.array([[math.log(0.5)]])
  ref = jnp.array([[math.log(0.25)]])
  adv, mask = jnp.zeros(1), jnp.ones((1, 1))
  expected = {"k1": LN2, "k2": 0.5 * LN2**2, "k3": 0.5 + LN2 - 1.0}
  for est, k in expected.items():
    cfg = losses.LossConfig(kl_coef=0.1, kl_estimator=est)
    loss, m = losses.ppo_loss(logp, logp, adv, mask, cfg, ref_logp_BT=ref)
    np.testing.assert_allclose(loss, 0.1 * k, atol=LOGP_TOL)
    for name, value in expected.items():  # all three are always logged
      np.testing.assert_allclose(m[f"kl_{name}"], value, atol=LOGP_TOL)
  cfg = losses.LossConfig(kl_coef=0.1, kl_estimator="k3", kl_in_reward=True)
  loss, m = losses.ppo_loss(logp, logp, adv, mask, cfg, ref_logp_BT=ref)
  assert float(loss) == 0.0
  np.testing.assert_allclose(m["kl_k3"], expected["k3"], atol=LOGP_TOL)
  # Reward penalty: kl_coef * sum over counted tokens; 2 tokens + 1 masked.
  pen = losses.kl_reward_penalty(jnp.array([[math.log(.5)] * 3]),
                                 jnp.array([[math.log(.25)] * 3]),
                                 jnp.array([[1, 1, 0]]), cfg)
  np.testing.assert_allclose(pen, [0.1 * 2 * expected["k3"]], atol=LOGP_TOL)


def test_entropy_bonus():
  # A = 0, no KL: loss = -entropy_coef * H = -0.01 * 2 = -0.02.
  z = jnp.zeros((1, 1))
  cfg = losses.LossConfig(entropy_coef=0.01)
  loss, m = losses.ppo_loss(z, z, jnp.zeros(1), jnp.ones((1, 1)), cfg,
                            entropy_BT=jnp.full((1, 1), 2.0))
  np.testing.assert_allclose(loss, -0.02, atol=LOGP_TOL)
  np.testing.assert_allclose(m["entropy"], 2.0, atol=LOGP_TOL)


def test_ppo_errors():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="ref_logp_BT"):
    losses.ppo_loss(z, z, jnp.zeros(2), z, losses.LossConfig(kl_coef=0.1))
  with pytest.raises(ValueError, match="entropy_BT"):
    losses.ppo_loss(z, z, jnp.zeros(2), z,
                    losses.LossConfig(entropy_coef=0.1))
  with pytest.raises(ValueError, match="adv_B"):
    losses.ppo_loss(z, z, jnp.zeros(3), z, losses.LossConfig())


# -- masking through gradients -------------------------------------------------


@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_no_gradient_through_masked_tokens(mode):
  rng = np.random.default_rng(3)
  mask = jnp.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
  old = jnp.asarray(rng.normal(size=(2, 5)) - 2.0, jnp.float32)
  ref = jnp.asarray(rng.normal(size=(2, 5)) - 2.0, jnp.float32)
  logp = jnp.asarray(rng.normal(size=(2, 5)) - 2.0, jnp.float32)
  ent = jnp.asarray(rng.uniform(size=(2, 5)), jnp.float32)
  adv = jnp.array([1.0, -0.5])
  cfg = losses.LossConfig(aggregation=mode, max_len=5, kl_coef=0.1,
                          entropy_coef=0.01, clip_high=0.28)

  def f(lp, e):
    return losses.ppo_loss(lp, old, adv, mask, cfg, ref_logp_BT=ref,
                           entropy_BT=e)[0]

  g_lp, g_e = jax.grad(f, argnums=(0, 1))(logp, ent)
  off = ~np.asarray(mask, bool)
  assert np.all(np.asarray(g_lp)[off] == 0.0)
  assert np.all(np.asarray(g_e)[off] == 0.0)
  assert np.all(np.asarray(g_lp)[~off] != 0.0)
  # Garbage (inf, huge) at masked positions changes neither value nor grads.
  junk = jnp.where(mask > 0, logp, jnp.array([[jnp.inf] * 5, [-1e30] * 5]))
  np.testing.assert_allclose(f(junk, ent), f(logp, ent), atol=LOGP_TOL)
  g_junk = jax.grad(f)(junk, ent)
  assert np.all(np.isfinite(g_junk))
  np.testing.assert_allclose(g_junk, g_lp, atol=LOGP_TOL)


def test_no_gradient_through_masked_logits():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, size=(2, 4)))
  mask = jnp.array([[0, 1, 1, 1], [0, 0, 1, 0]])
  old = jnp.asarray(rng.normal(size=(2, 4)) - 2.0, jnp.float32)
  adv = jnp.array([0.5, -1.0])
  cfg = losses.LossConfig(kl_coef=0.05, entropy_coef=0.01)
  off = ~np.asarray(mask, bool)

  def rl(z):
    logp = train_losses.token_logprobs(z, targets)
    return losses.ppo_loss(logp, old, adv, mask, cfg, ref_logp_BT=old,
                           entropy_BT=train_losses.token_entropy(z))[0]

  def sft(z):
    return train_losses.sft_loss(z, targets, mask)[0]

  teacher = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)

  def kd(z):
    return train_losses.kd_loss(z, teacher, mask, 2.0)[0]

  for fn in (rl, sft, kd):
    g = np.asarray(jax.grad(fn)(logits))
    assert np.all(g[off] == 0.0), fn.__name__
    assert np.any(g[~off] != 0.0), fn.__name__


# -- SFT and KD ----------------------------------------------------------------


def test_sft_loss_golden_with_prompt_masking():
  # Row: logits [0, ln2, ln3] (softmax [1, 2, 3]/6) at every position.
  #   t0 prompt (masked, pad target -1), t1 target 2 -> nll ln 2,
  #   t2 target 1 -> nll ln 3.  loss = (ln 2 + ln 3) / 2 = ln(6) / 2.
  #   argmax is 2: t1 hit, t2 miss -> accuracy 0.5.
  logits = jnp.tile(jnp.array([0.0, LN2, LN3]), (1, 3, 1))
  loss, m = train_losses.sft_loss(logits, jnp.array([[-1, 2, 1]]),
                            jnp.array([[0, 1, 1]]))
  np.testing.assert_allclose(loss, math.log(6.0) / 2, atol=LOGP_TOL)
  np.testing.assert_allclose(m["token_accuracy"], 0.5, atol=LOGP_TOL)
  assert float(m["num_tokens"]) == 2.0


def test_kd_loss_golden():
  # teacher [0, ln3] -> p = [1/4, 3/4]; student [0, 0] -> q = [1/2, 1/2].
  #   T = 1: KL = 1/4 ln(1/2) + 3/4 ln(3/2) = -0.173287 + 0.304099 = 0.130812
  #   T = 2: p = [1, sqrt3] / (1 + sqrt3) = [0.366025, 0.633975],
  #          KL = 0.366025 ln(0.732051) + 0.633975 ln(1.267949) = 0.036316,
  #          loss = 2^2 * KL = 0.145264
  teacher = jnp.array([[[0.0, LN3]]])
  student = jnp.zeros((1, 1, 2))
  mask = jnp.ones((1, 1))
  loss1, m1 = train_losses.kd_loss(student, teacher, mask, 1.0)
  kl1 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
  np.testing.assert_allclose(loss1, kl1, atol=LOGP_TOL)
  np.testing.assert_allclose(m1["kl"], kl1, atol=LOGP_TOL)
  s3 = math.sqrt(3.0)
  p = (1 / (1 + s3), s3 / (1 + s3))
  kl2 = p[0] * math.log(2 * p[0]) + p[1] * math.log(2 * p[1])
  loss2, m2 = train_losses.kd_loss(student, teacher, mask, 2.0)
  np.testing.assert_allclose(m2["kl"], kl2, atol=LOGP_TOL)
  np.testing.assert_allclose(loss2, 4.0 * kl2, atol=LOGP_TOL)


def test_kd_loss_invariances():
  z = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 9)),
                  jnp.float32)
  mask = jnp.ones((2, 3))
  loss, _ = train_losses.kd_loss(z, z, mask, 1.5)
  np.testing.assert_allclose(loss, 0.0, atol=LOGP_TOL)
  # The teacher is a constant.
  g = jax.grad(lambda t: train_losses.kd_loss(z + 1.0 * (z > 0), t, mask)[0])(z)
  assert np.all(np.asarray(g) == 0.0)
  with pytest.raises(ValueError, match="temperature"):
    train_losses.kd_loss(z, z, mask, 0.0)


# -- route contrast ------------------------------------------------------------


def test_route_contrast_loss_golden():
  # Valid margins 0, 2, -2 with beta 0.5:
  #   -log sig(0) = ln 2 = 0.693147
  #   -log sig(1) = ln(1 + e^-1) = 0.313262
  #   -log sig(-1) = ln(1 + e) = 1.313262
  #   mean = (0.693147 + 0.313262 + 1.313262) / 3 = 0.773224
  # The two masked cells hold garbage that must not count.
  margins = jnp.array([[[0.0, 2.0], [-2.0, 1e6]], [[np.nan, 0.0],
                                                   [0.0, 0.0]]])
  pair_mask = jnp.array([[[1, 1], [1, 0]], [[0, 0], [0, 0]]])
  loss, m = losses.route_contrast_loss(margins, pair_mask, 0.5)
  expected = (LN2 + math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 3
  np.testing.assert_allclose(loss, expected, atol=LOGP_TOL)
  assert float(m["num_pairs"]) == 3.0
  np.testing.assert_allclose(m["margin_mean"], 0.0, atol=LOGP_TOL)
  np.testing.assert_allclose(m["pair_accuracy"], 1 / 3, atol=LOGP_TOL)
  g = np.asarray(jax.grad(
      lambda x: losses.route_contrast_loss(x, pair_mask, 0.5)[0])(margins))
  assert np.all(g[~np.asarray(pair_mask, bool)] == 0.0)
  # -d/dm log sig(b m) = -b sig(-b m); at m = 2: -0.5 * sig(-1) / 3.
  np.testing.assert_allclose(g[0, 0, 1], -0.5 / (1 + math.e) / 3,
                             atol=LOGP_TOL)


def test_route_contrast_no_pairs_is_zero():
  loss, m = losses.route_contrast_loss(jnp.ones((2, 3, 3)),
                                       jnp.zeros((2, 3, 3), bool), 1.0)
  assert float(loss) == 0.0 and float(m["num_pairs"]) == 0.0
