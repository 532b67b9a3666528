"""Paired comparisons against hand-computed binomial tails and paired variances."""

import math

import numpy as np
import pytest

from realm_jax.evaluation import paired


@pytest.mark.parametrize("a_only,b_only,expected", [
    (0, 0, 1.0),
    (0, 5, 2 / 32),  # one tail: 1 / 2^5
    (9, 1, 2 * 11 / 1024),  # (C(10,0) + C(10,1)) / 2^10, doubled
    (5, 5, 1.0),  # the doubled tail exceeds 1
    (2, 6, 2 * (1 + 8 + 28) / 256),
])
def test_mcnemar_exact_is_the_two_sided_binomial_tail(a_only, b_only, expected):
  assert paired.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_is_symmetric_and_rejects_negative_counts():
  assert paired.mcnemar_exact(3, 17) == paired.mcnemar_exact(17, 3)
  with pytest.raises(ValueError, match="discordant counts"):
    paired.mcnemar_exact(-1, 2)


def test_paired_difference_and_interval():
  a = [1, 1, 0, 0]
  b = [1, 0, 1, 1]
  r = paired.paired_compare(a, b)
  assert (r.n, r.a_only, r.b_only) == (4, 1, 2)
  assert (r.acc_a, r.acc_b, r.diff) == (0.5, 0.75, 0.25)
  # d = b - a = [0, -1, 1, 1]: mean 1/4, population variance 3/4 - 1/16 = 11/16, se = sqrt(11/16/4)
  se = math.sqrt(11 / 64)
  assert r.ci_low == pytest.approx(0.25 - 1.96 * se) and r.ci_high == pytest.approx(0.25 + 1.96 * se)
  assert r.p_value == 1.0  # (C(3,0) + C(3,1)) / 2^3 = 1/2, doubled
  assert "+0.250" in r.summary()


def test_identical_models_differ_by_nothing():
  r = paired.paired_compare([1, 0, 1], [1, 0, 1])
  assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_misaligned_inputs_are_refused():
  with pytest.raises(ValueError, match="equally long"):
    paired.paired_compare([1, 0], [1, 0, 1])


def test_eval_compares_final_with_start_per_setting():
  from realm_jax.cli import evaluate
  results = {"start (sft)": {"without routes": {"correct": [1, 0, 0, 1]},
                             "with routes": {"correct": [1, 1, 1, 1]}},
             "final (rl)": {"without routes": {"correct": [1, 1, 1, 0]},
                            "with routes": {"correct": [1, 1, 1, 1]}}}
  compared = evaluate.paired_results(results)
  assert set(compared) == {"without routes", "with routes"}
  r = compared["without routes"]
  assert (r.acc_a, r.acc_b, r.a_only, r.b_only, r.diff) == (0.5, 0.75, 1, 2, 0.25)
  assert compared["with routes"].p_value == 1.0 and compared["with routes"].diff == 0.0
  table = evaluate.paired_table(compared)
  assert "| without routes | 0.500 | 0.750 | +0.250 (" in table and "| 2 / 1 | 4 |" in table
  assert evaluate.paired_results({"final (rl)": results["final (rl)"]}) == {}


def test_bootstrap_over_seeds_with_hand_counted_distributions():
  # No spread anywhere: the interval is the point.
  r = paired.bootstrap_over_seeds([[0.5] * 7, [0.5] * 3], n_boot=200)
  assert (r.diff, r.ci_low, r.ci_high, r.seeds, r.questions) == (0.5, 0.5, 0.5, 2, 10)
  # Seed spread only: seed means 0 and 1, questions constant. A replicate averages two seeds
  # drawn with replacement: 0 (1/4), 0.5 (1/2) or 1 (1/4), so the 95% interval is [0, 1].
  r = paired.bootstrap_over_seeds([[0.0] * 5, [1.0] * 5], n_boot=4000)
  assert r.diff == 0.5 and (r.ci_low, r.ci_high) == (0.0, 1.0)


def test_bootstrap_matches_the_exact_two_level_distribution():
  # Two seeds of two questions: enumerate every replicate (seed draws, then question draws
  # for each drawn slot) and compare the Monte Carlo CDF with the exact one.
  import itertools
  seeds = [[0.0, 1.0], [-1.0, 1.0]]
  exact = {}
  for picks in itertools.product(range(2), repeat=2):
    for qa in itertools.product(range(2), repeat=2):
      for qb in itertools.product(range(2), repeat=2):
        m = (np.mean([seeds[picks[0]][i] for i in qa]) + np.mean([seeds[picks[1]][i] for i in qb])) / 2
        exact[m] = exact.get(m, 0) + 1 / 64
  n = 40000
  r = paired.bootstrap_over_seeds(seeds, n_boot=n, seed=3)
  assert r.diff == pytest.approx((0.5 + 0.0) / 2)
  values = sorted(exact)
  cum = np.cumsum([exact[v] for v in values])
  assert r.ci_low == values[int(np.searchsorted(cum, 0.025 - 1e-9))]
  assert r.ci_high == values[int(np.searchsorted(cum, 0.975 - 1e-9))]


def test_shared_questions_bootstrap_matches_its_exact_distribution():
  # The same two questions on both seeds: a replicate draws two seeds, then ONE question
  # resample that both drawn seeds use; enumerate all 4 x 4 replicates.
  import itertools
  seeds = [[0.0, 1.0], [-1.0, 1.0]]
  exact = {}
  for picks in itertools.product(range(2), repeat=2):
    for q in itertools.product(range(2), repeat=2):
      m = np.mean([np.mean([seeds[p][i] for i in q]) for p in picks])
      exact[m] = exact.get(m, 0) + 1 / 16
  r = paired.bootstrap_over_seeds(seeds, n_boot=40000, seed=3, shared_questions=True)
  values = sorted(exact)
  cum = np.cumsum([exact[v] for v in values])
  assert r.ci_low == values[int(np.searchsorted(cum, 0.025 - 1e-9))]
  assert r.ci_high == values[int(np.searchsorted(cum, 0.975 - 1e-9))]
  with pytest.raises(ValueError, match="same questions; got \\[2, 3\\]"):
    paired.bootstrap_over_seeds([[0.0, 1.0], [1.0, 1.0, 0.0]], shared_questions=True)


def test_seeds_sharing_questions_do_not_shrink_the_question_sampling():
  # Three seeds that answered identically on the same 600 questions carry the information
  # of one: shared resampling gives the one-seed interval (1.96 sd / sqrt(600) each side);
  # resampling each seed's questions on its own would wrongly narrow it by sqrt(3).
  rng = np.random.default_rng(1)
  d = rng.choice([-1.0, 0.0, 1.0], 600, p=[0.2, 0.5, 0.3])
  half = 1.96 * d.std() / np.sqrt(d.size)
  shared = paired.bootstrap_over_seeds([d] * 3, n_boot=20000, shared_questions=True)
  own = paired.bootstrap_over_seeds([d] * 3, n_boot=20000)
  assert (shared.ci_high - shared.ci_low) / 2 == pytest.approx(half, rel=0.05)
  assert (own.ci_high - own.ci_low) / 2 == pytest.approx(half / np.sqrt(3), rel=0.05)


def test_bootstrap_with_one_seed_approaches_the_paired_normal_interval():
  rng = np.random.default_rng(0)
  a = rng.random(600) < 0.6
  b = np.where(rng.random(600) < 0.2, ~a, a)
  normal = paired.paired_compare(a, b)
  boot = paired.bootstrap_over_seeds([b.astype(float) - a.astype(float)], n_boot=20000)
  assert boot.diff == pytest.approx(normal.diff)
  assert boot.ci_low == pytest.approx(normal.ci_low, abs=0.006)
  assert boot.ci_high == pytest.approx(normal.ci_high, abs=0.006)


def test_bootstrap_rejects_empty_input():
  with pytest.raises(ValueError, match="non-empty 1-D"):
    paired.bootstrap_over_seeds([[1.0], []])
  with pytest.raises(ValueError, match="at least one seed"):
    paired.bootstrap_over_seeds([])
