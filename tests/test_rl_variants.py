"""RL variants by name: advantages (grpo, drgrpo, rloo), losses (ppo, gspo), truncated
importance sampling, tempered/filtered log-probs, DAPO dynamic sampling: hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import model
from realm_jax.model import sampling
from realm_jax.rl import advantages, losses
from realm_jax.rl import step as rl_step
from tests import test_rl_loop as harness

TOL = 1e-5
LN2 = math.log(2.0)


def test_advantage_variants_golden():
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 3.0])
  # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: mean 0.75, std 1.5 (test_advantages)
  np.testing.assert_allclose(advantages.ADVANTAGES["grpo_group"](r, 4),
                             [0.5 * 3 ** 0.5, -0.5 * 3 ** 0.5, -0.5 * 3 ** 0.5, 0.5 * 3 ** 0.5,
                              -0.5, -0.5, -0.5, 1.5], atol=1e-5)
  # grpo (issue 15): one pooled std for the batch, sqrt((1/3 + 2.25) / 2) = sqrt(31/24).
  s = (31 / 24) ** 0.5
  np.testing.assert_allclose(advantages.ADVANTAGES["grpo"](r, 4),
                             [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, -0.75 / s, -0.75 / s,
                              -0.75 / s, 2.25 / s], atol=1e-5)
  np.testing.assert_allclose(advantages.ADVANTAGES["drgrpo"](r, 4),
                             [0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25], atol=TOL)
  # RLOO: r - mean of the other three. Group 0: 1 - 1/3, 0 - 2/3; group 1: 0 - 1, 3 - 0.
  np.testing.assert_allclose(advantages.ADVANTAGES["rloo"](r, 4),
                             [2 / 3, -2 / 3, -2 / 3, 2 / 3, -1, -1, -1, 3], atol=TOL)


def test_gspo_clips_one_length_normalised_ratio_per_sequence():
  # Row 0: log-ratios [ln2, 0] -> s = exp(ln2 / 2) = sqrt2, A = +1: -A s = -1.414 is below
  #   -A (1 + 0.28) = -1.28, so the clipped value -1.28 counts.
  # Row 1: one counted token, log-ratio -ln2 (the masked 5.0 is ignored) -> s = 0.5, A = -1:
  #   -A s = 0.5 vs -A (1 - 0.2) = 0.8 -> 0.8.
  logp = jnp.array([[LN2, 0.0], [-LN2, 5.0]])
  old = jnp.zeros((2, 2))
  mask = jnp.array([[1, 1], [1, 0]])
  adv = jnp.array([1.0, -1.0])
  for agg, want in (("seq_mean_token_mean", (-1.28 + 0.8) / 2),
                    ("token_mean", (2 * -1.28 + 0.8) / 3)):
    cfg = losses.LossConfig(clip_low=0.2, clip_high=0.28, aggregation=agg)
    loss, m = losses.LOSSES["gspo"](logp, old, adv, mask, cfg)
    assert float(loss) == pytest.approx(want, abs=TOL)
    assert float(m["clip_frac"]) == 1.0 and float(m["ratio_max"]) == pytest.approx(2 ** 0.5)
  # Inside the clip range the gradient of each token is A / n_b * s_b.
  cfg = losses.LossConfig(aggregation="seq_mean_token_mean")
  small = jnp.array([[0.1, -0.1], [0.05, 0.0]])
  g = jax.grad(lambda lp: losses.gspo_loss(lp, old, adv, mask, cfg)[0])(small)
  s0, s1 = math.exp(0.0), math.exp(0.05)
  np.testing.assert_allclose(g, [[-s0 / 2 / 2, -s0 / 2 / 2], [s1 / 2, 0.0]], atol=TOL)


def test_truncated_importance_weights_golden():
  old = jnp.array([[math.log(3.0), math.log(0.5), 9.0]])
  sampler = jnp.zeros((1, 3))
  mask = jnp.array([[1, 1, 0]])
  w, m = losses.tis_weights(old, sampler, mask, cap=2.0)
  np.testing.assert_allclose(w, [[2.0, 0.5, 0.0]], atol=TOL)  # min(3, 2), min(0.5, 2), masked
  assert float(m["tis_capped_frac"]) == 0.5
  # ppo_loss weighs each token's clipped term: at ratio 1, pg = -A w.
  z = jnp.zeros((1, 3))
  loss, _ = losses.ppo_loss(z, z, jnp.array([1.0]), mask, losses.LossConfig(), weight_BT=w)
  assert float(loss) == pytest.approx(-(2.0 + 0.5) / 2, abs=TOL)
  with pytest.raises(ValueError, match="tis_cap"):
    losses.LossConfig(tis_cap=0.0)


@pytest.mark.parametrize("scfg_kw", [dict(temperature=0.7), dict(temperature=0.7, top_k=5),
                                     dict(temperature=1.3, top_p=0.6)])
def test_trainer_logprobs_of_a_tempered_rollout_equal_the_samplers(scfg_kw):
  cfg = harness.CFG
  params = model.init_params(cfg, jax.random.key(1))
  scfg = sampling.SamplingConfig(max_new_tokens=6, num_samples=2, **scfg_kw)
  prompts = jnp.asarray(np.random.default_rng(0).integers(3, 200, (3, 5)), jnp.int32)
  roll = sampling.generate(params, cfg, prompts, jnp.ones_like(prompts), jax.random.key(2), scfg)
  cm = np.asarray(roll.completion_mask[:, 1:])
  trainer = rl_step.make_logprob_fn(cfg, scfg, completion_len=6)(params, roll.tokens, roll.mask)
  np.testing.assert_allclose(np.where(cm, trainer, 0), np.asarray(roll.logprobs[:, 1:]),
                             atol=1e-5)
  # The untempered model's numbers differ: the check is not vacuous.
  plain = rl_step.make_logprob_fn(cfg, None, completion_len=6)(params, roll.tokens, roll.mask)
  assert np.abs(np.where(cm, plain - trainer, 0)).max() > 1e-2


def test_dynamic_sampling_refills_filtered_groups_with_fresh_prompts():
  cfg = harness.rl_cfg(filter_zero_variance=True, dynamic_sampling_rollouts=3)
  fresh = iter([harness.examples(4, start=4)])
  loop, state, seen, (m,) = _run(cfg, lambda n: next(fresh))
  # Q0 and Q2 had no reward variance: Q1, Q3 stay, the first two of Q4..Q7 (all with
  # variance) take their places; one extra rollout was enough.
  assert m["dynamic_sampling_rollouts"] == 1.0 and m["kept_share"] == 1.0
  # the signal metrics describe the batch that trains (the first rollout's: half the groups)
  assert m["signal/tests.test_rl_loop:prompt_parity_varies"] == 1.0
  assert m["signal/tests.test_rl_loop:prompt_parity_only"] == 1.0
  tok = harness.ByteTok()
  heads = [tok.decode(list(np.asarray(seen[0][0].tokens)[r])).split(":")[0][-2:]
           for r in range(0, 8, 2)]
  assert heads == ["Q1", "Q3", "Q4", "Q5"]
  assert np.all(np.asarray(seen[0][0].completion_mask).sum(1) == harness.M)


def test_dynamic_sampling_is_bounded_and_falls_back_to_filtering():
  cfg = harness.rl_cfg(filter_zero_variance=True, dynamic_sampling_rollouts=2)
  _, _, seen, (m,) = _run(cfg, None, reward="constant")
  assert m["dynamic_sampling_rollouts"] == 2.0 and m["kept_share"] == 0.0
  assert np.asarray(seen[0][0].completion_mask).sum() == 0 and m["grad_norm"] == 0.0


def _run(cfg, more, reward="prompt_parity"):
  import dataclasses
  cfg = dataclasses.replace(cfg, reward_weights={
      "answer": 0.0, "format": 0.0, "verification": 0.0, f"tests.test_rl_loop:{reward}": 1.0})
  loop, opt = harness.make_loop(cfg)
  loop.generate = harness.fake_sampler(cfg.group_size)
  loop.more_examples = more
  seen = harness.spy_updates(loop)
  params = model.init_params(harness.CFG, jax.random.key(0))
  state, m = loop.step(harness.fresh_state(opt), params, harness.examples(), 0, 0)
  return loop, state, seen, (m,)
