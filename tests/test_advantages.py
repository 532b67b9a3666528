"""Group-relative advantages: hand-computed values, invariances, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.rl import advantages

TOL = 1e-5


def test_golden_grpo_and_dr_grpo():
  # Group 0: [1, 0, 0, 1]  mean 0.5, centred +-0.5,
  #   unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) -> A = +-0.5 * sqrt(3).
  # Group 1: [0, 0, 0, 3]  mean 0.75, centred [-0.75]*3 + [2.25],
  #   sum of squares = 3 * 0.5625 + 5.0625 = 6.75, / 3 = 2.25, std = 1.5
  #   -> A = [-0.5, -0.5, -0.5, 1.5].
  r = jnp.array([1., 0., 0., 1., 0., 0., 0., 3.])
  adv, metrics = advantages.group_advantages(r, 4, normalize_std=True, eps=0.0)
  h = 0.5 * math.sqrt(3.0)
  np.testing.assert_allclose(adv, [h, -h, -h, h, -0.5, -0.5, -0.5, 1.5],
                             atol=TOL)
  np.testing.assert_allclose(metrics["reward_mean"], 5.0 / 8.0, atol=TOL)
  np.testing.assert_allclose(metrics["group_std_mean"],
                             (math.sqrt(1.0 / 3.0) + 1.5) / 2, atol=TOL)
  np.testing.assert_allclose(metrics["zero_variance_share"], 0.0)

  adv, _ = advantages.group_advantages(r, 4, normalize_std=False)
  np.testing.assert_allclose(
      adv, [0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25], atol=TOL)


def test_group_of_two():
  # [2, 0]: mean 1, centred +-1, std (ddof=1) = sqrt(2) -> +-1/sqrt(2).
  adv, _ = advantages.group_advantages(jnp.array([2., 0.]), 2, eps=0.0)
  np.testing.assert_allclose(adv, [1 / math.sqrt(2), -1 / math.sqrt(2)],
                             atol=TOL)


def test_eps_in_denominator():
  # [1, 0]: centred +-0.5, std = sqrt(0.5); eps = 0.1 -> 0.5 / (0.70711 + 0.1).
  adv, _ = advantages.group_advantages(jnp.array([1., 0.]), 2, eps=0.1)
  expected = 0.5 / (math.sqrt(0.5) + 0.1)
  np.testing.assert_allclose(adv, [expected, -expected], atol=TOL)


@pytest.mark.parametrize("normalize_std", [True, False])
def test_zero_variance_groups_are_exactly_zero(normalize_std):
  # 0.1 is not exactly representable: the float mean of [0.1]*3 need not be
  # 0.1, yet the advantages must be exactly 0.
  r = jnp.array([0.1, 0.1, 0.1, 1., 0., 1., 0.7, 0.7, 0.7])
  adv, metrics = advantages.group_advantages(r, 3, normalize_std=normalize_std)
  assert np.all(np.asarray(adv)[:3] == 0.0)
  assert np.all(np.asarray(adv)[6:] == 0.0)
  assert np.all(np.asarray(adv)[3:6] != 0.0)
  np.testing.assert_allclose(metrics["zero_variance_share"], 2.0 / 3.0,
                             atol=TOL)
  mask = advantages.zero_variance_mask(r, 3)
  np.testing.assert_array_equal(mask, [True, False, True])


def test_invariances():
  rng = np.random.default_rng(0)
  r = jnp.asarray(rng.normal(size=(6 * 5,)), jnp.float32)
  adv, _ = advantages.group_advantages(r, 5, eps=0.0)
  # Each group's advantages sum to 0.
  np.testing.assert_allclose(np.asarray(adv).reshape(6, 5).sum(1), 0.0,
                             atol=TOL)
  # Shift invariance (both modes) and scale invariance (normalised only).
  shifted, _ = advantages.group_advantages(r + 3.0, 5, eps=0.0)
  np.testing.assert_allclose(shifted, adv, atol=1e-4)
  scaled, _ = advantages.group_advantages(2.5 * r, 5, eps=0.0)
  np.testing.assert_allclose(scaled, adv, atol=1e-4)
  dr, _ = advantages.group_advantages(r, 5, normalize_std=False)
  dr_scaled, _ = advantages.group_advantages(2.5 * r, 5, normalize_std=False)
  np.testing.assert_allclose(dr_scaled, 2.5 * np.asarray(dr), atol=1e-4)
  # Independent numpy reference (float64).
  r64 = np.asarray(r, np.float64).reshape(6, 5)
  ref = (r64 - r64.mean(1, keepdims=True)) / r64.std(1, ddof=1, keepdims=True)
  np.testing.assert_allclose(adv, ref.reshape(-1), atol=1e-4)


def test_jit_matches_eager():
  r = jnp.array([1., 0., 0.5, 0.5, 0.25, 1.])
  fn = jax.jit(advantages.group_advantages, static_argnums=(1, 2))
  adv_jit, m_jit = fn(r, 3, True)
  adv, m = advantages.group_advantages(r, 3, True)
  np.testing.assert_allclose(adv_jit, adv, atol=TOL)
  np.testing.assert_allclose(m_jit["zero_variance_share"],
                             m["zero_variance_share"])


def test_errors():
  with pytest.raises(ValueError, match="group_size"):
    advantages.group_advantages(jnp.zeros(4), 1)
  with pytest.raises(ValueError, match="multiple of group_size"):
    advantages.group_advantages(jnp.zeros(5), 2)
  with pytest.raises(ValueError, match="1-D"):
    advantages.group_advantages(jnp.zeros((2, 2)), 2)
