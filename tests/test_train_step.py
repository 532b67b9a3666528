"""Wiring: the LR schedule's boundaries, the SFT/RL steps against hand-made expectations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import losses, model, train_step

CFG = model.ModelConfig(vocab_size=40, num_layers=2, d_model=16, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=32)


@pytest.mark.parametrize("warmup", [0, 4])
def test_lr_schedule_boundaries(warmup):
  s = train_step.lr_schedule(2.0, warmup, 20)
  if warmup:
    assert float(s(0)) == 0.0 and float(s(2)) == pytest.approx(1.0)  # linear warm-up
  assert float(s(warmup)) == pytest.approx(2.0)                      # peak at end of warm-up
  assert float(s(20)) == pytest.approx(0.2)                          # lr/10 at the last step
  assert float(s(20 + warmup)) == pytest.approx(0.2)                 # and stays there
  mid = warmup + (20 - warmup) // 2
  assert float(s(mid)) == pytest.approx(0.2 + 1.8 * 0.5, rel=0.15)   # cosine midpoint ~ 1.1


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


def test_rl_step_with_zero_advantage_and_reference_equal_policy_changes_nothing():
  """adv = 0 and ref = policy: the PPO and KL terms have zero gradient, ratio 1, KL 0."""
  params = model.init_params(CFG, jax.random.key(1))
  opt = train_step.make_optimizer(1e-2, 0, 10, 0.0, 1.0)
  state = train_step.init_state(params, opt)
  tokens, mask, cmask = _batch(np.random.default_rng(1))
  ref = train_step.token_logprobs(params, CFG, tokens, mask)
  batch = {"tokens": tokens, "mask": mask, "completion_mask": cmask, "ref_logp": ref,
           "adv": jnp.zeros(4)}
  step = train_step.make_rl_step(CFG, opt, losses.LossConfig(kl_coef=0.1))
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
  batch = {"tokens": tokens, "mask": mask, "completion_mask": cmask, "ref_logp": lp0, "adv": adv}
  step = train_step.make_rl_step(CFG, opt, losses.LossConfig())
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
