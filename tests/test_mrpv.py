"""MRPV: route sampling, truncation, prompts, verdict parsing, pair margins."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.rl import mrpv

TOL = 1e-5


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_routes=0), "num_routes"),
    (dict(num_routes=27), "num_routes"),
    (dict(num_routes=2, min_positive=2, min_negative=1), "exceeds num_routes"),
    (dict(min_negative=-1), "min_positive/min_negative"),
    (dict(all_same_share=1.5), "all_same_share"),
    (dict(route_template="Route {label}"), "{route}"),
    (dict(with_routes_template="{question}"), "{routes}"),
    (dict(without_routes_template="solve"), "{question}"),
    (dict(w_ver=-1.0), "w_ver"),
    (dict(contrast_beta=0.0), "contrast_beta"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mrpv.MRPVConfig(**kwargs)


def test_reward_weights_keys():
  cfg = mrpv.MRPVConfig(w_ans=1.0, w_ver=0.3, w_fmt=0.2)
  assert cfg.reward_weights == {"answer": 1.0, "verification": 0.3,
                                "format": 0.2}


# -- sample_routes -------------------------------------------------------------

POOL = [True, True, True, False, False, False]


def _labels(idx, pool=POOL):
  return [pool[i] for i in idx]


def test_sample_routes_respects_minima_and_is_distinct():
  cfg = mrpv.MRPVConfig(num_routes=3, min_positive=1, min_negative=1,
                        all_same_share=0.0)
  first_positive = set()
  for seed in range(200):
    idx = mrpv.sample_routes(POOL, 3, cfg, np.random.default_rng(seed))
    assert idx.shape == (3,) and len(set(idx.tolist())) == 3
    assert all(0 <= i < len(POOL) for i in idx)
    labels = _labels(idx)
    assert any(labels) and not all(labels)
    first_positive.add(labels[0])
  assert first_positive == {True, False}  # order carries no label


def test_sample_routes_is_deterministic_given_seed():
  cfg = mrpv.MRPVConfig()
  a = mrpv.sample_routes(POOL, 3, cfg, np.random.default_rng(7))
  b = mrpv.sample_routes(POOL, 3, cfg, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)


def test_sample_routes_when_pool_does_not_allow_minima():
  cfg = mrpv.MRPVConfig(num_routes=3, min_positive=1, min_negative=2,
                        all_same_share=0.0)
  only_pos = [True] * 5
  idx = mrpv.sample_routes(only_pos, 3, cfg, np.random.default_rng(0))
  assert len(set(idx.tolist())) == 3
  # Pool smaller than k: everything is shown.
  idx = mrpv.sample_routes([True, False], 3, cfg, np.random.default_rng(0))
  assert sorted(idx.tolist()) == [0, 1]
  assert mrpv.sample_routes([], 3, cfg, np.random.default_rng(0)).size == 0
  # One negative available though two are required: it is always taken.
  pool = [True, True, True, True, False]
  for seed in range(50):
    idx = mrpv.sample_routes(pool, 3, cfg, np.random.default_rng(seed))
    assert 4 in idx.tolist()


def test_sample_routes_k_below_required_minima():
  # k = 1 with one positive and one negative required: one of them, either.
  cfg = mrpv.MRPVConfig(num_routes=3, all_same_share=0.0)
  kinds = set()
  for seed in range(100):
    idx = mrpv.sample_routes(POOL, 1, cfg, np.random.default_rng(seed))
    assert idx.shape == (1,)
    kinds.add(POOL[int(idx[0])])
  assert kinds == {True, False}


def test_sample_routes_all_same_share():
  pool = [True] * 5 + [False] * 5
  cfg = mrpv.MRPVConfig(num_routes=3, all_same_share=1.0)
  kinds = set()
  for seed in range(100):
    labels = _labels(mrpv.sample_routes(pool, 3, cfg,
                                        np.random.default_rng(seed)), pool)
    assert len(set(labels)) == 1
    kinds.add(labels[0])
  assert kinds == {True, False}
  # Share 0.3 with minima 1/1: only the all-same branch yields same-label sets,
  # so the observed share is 0.3 up to binomial noise (sd ~0.01 at n=2000).
  cfg = mrpv.MRPVConfig(num_routes=3, all_same_share=0.3)
  rng = np.random.default_rng(0)
  same = [len(set(_labels(mrpv.sample_routes(pool, 3, cfg, rng), pool))) == 1
          for _ in range(2000)]
  assert abs(np.mean(same) - 0.3) < 0.04
  # No kind has k routes: falls back to the mixed draw with its minima.
  cfg = mrpv.MRPVConfig(num_routes=3, all_same_share=1.0)
  for seed in range(50):
    labels = _labels(mrpv.sample_routes([True, True, False, False], 3, cfg,
                                        np.random.default_rng(seed)),
                     [True, True, False, False])
    assert any(labels) and not all(labels)


# -- truncate_route ------------------------------------------------------------

ROUTE = "Step 1\nStep 2\n\nStep 3\nStep 4\nAnswer: 7"


def test_truncate_route():
  # 4 steps (blank line skipped) + the answer line.
  assert mrpv.truncate_route(ROUTE, 1.0) == ROUTE
  assert mrpv.truncate_route(ROUTE, 0.5) == "Step 1\nStep 2"
  assert mrpv.truncate_route(ROUTE, 0.75) == "Step 1\nStep 2\nStep 3"
  assert mrpv.truncate_route(ROUTE, 0.99) == "Step 1\nStep 2\nStep 3"
  assert mrpv.truncate_route(ROUTE, 0.2) == ""  # floor(0.8) = 0
  assert mrpv.truncate_route(ROUTE, 0.0) == ""
  # 0.6 * 5 is 2.9999999999999996 in floating point; it must keep 3 steps.
  five = "a\nb\nc\nd\ne\nAnswer: 1"
  assert mrpv.truncate_route(five, 0.6) == "a\nb\nc"
  assert "Answer" not in mrpv.truncate_route(five, np.float32(0.999))
  with pytest.raises(ValueError, match="prefix_fraction"):
    mrpv.truncate_route(ROUTE, 1.5)


# -- build_prompt --------------------------------------------------------------


def test_build_prompt_with_and_without_routes():
  cfg = mrpv.MRPVConfig()
  text = mrpv.build_prompt("What is 2+2?", ["two plus two is 4", "it is 5"],
                           cfg)
  assert text.startswith("What is 2+2?")
  a = text.index("Route A:\ntwo plus two is 4")
  b = text.index("Route B:\nit is 5")
  assert a < b < text.index("<verify>")
  assert "Route C" not in text
  solo = mrpv.build_prompt("What is 2+2?", [], cfg)
  assert solo.startswith("What is 2+2?")
  assert "Route" not in solo and "<verify>" not in solo
  assert "<think>" in solo and "<answer>" in solo
  custom = mrpv.MRPVConfig(route_template="[{label}] {route}",
                           with_routes_template="Q: {question}\n{routes}\nGo.")
  assert (mrpv.build_prompt("q?", ["x", "y"], custom)
          == "Q: q?\n[A] x\n\n[B] y\nGo.")


# -- parse_verdicts ------------------------------------------------------------


@pytest.mark.parametrize("completion, expected", [
    ("<verify>A: correct; B: wrong; C: incorrect</verify><think>", [1, 0, 0]),
    ("<verify>Route A: Correct\nRoute B - WRONG</verify>", [1, 0, -1]),
    ("<verify>B=valid, A: invalid, C: right</verify>", [0, 1, 1]),
    ("<verify>A: correct; A: wrong; B: correct</verify>", [-1, 1, -1]),
    ("<verify>A: correct; A: correct</verify>", [1, -1, -1]),
    ("<verify>A: maybe; B: not correct</verify>", [-1, -1, -1]),
    ("A: correct; B: wrong", [-1, -1, -1]),  # no verify block
    ("<verify>D: correct; A: wrong</verify>", [0, -1, -1]),  # D beyond K
    ("<verify>A: wrong</verify> <verify>A: correct</verify>", [0, -1, -1]),
])
def test_parse_verdicts(completion, expected):
  out = mrpv.parse_verdicts(completion, 3)
  assert out.dtype == np.int8
  np.testing.assert_array_equal(out, expected)


def test_parse_verdicts_batch():
  out = mrpv.parse_verdicts_batch(
      ["<verify>A: correct; B: wrong</verify>", "nothing"], 2)
  assert out.dtype == np.int8 and out.shape == (2, 2)
  np.testing.assert_array_equal(out, [[1, 0], [-1, -1]])
  assert mrpv.parse_verdicts_batch([], 3).shape == (0, 3)


# -- route pair margins --------------------------------------------------------


def test_route_pair_margins_golden():
  # d = pol - ref = [1, -1, -1], labels [+, -, +]:
  #   pairs (0, 1): 1 - (-1) = 2;  (2, 1): -1 - (-1) = 0.
  pol = jnp.array([[-10.0, -12.0, -20.0]])
  ref = jnp.array([[-11.0, -11.0, -19.0]])
  labels = jnp.array([[True, False, True]])
  margins, pm = mrpv.route_pair_margins(pol, ref, labels, jnp.ones((1, 3)))
  assert margins.shape == pm.shape == (1, 3, 3)
  np.testing.assert_array_equal(
      pm, [[[False, True, False], [False] * 3, [False, True, False]]])
  np.testing.assert_allclose(margins[0, 0, 1], 2.0, atol=TOL)
  np.testing.assert_allclose(margins[0, 2, 1], 0.0, atol=TOL)
  m = mrpv.contrast_metrics(margins, pm)
  np.testing.assert_allclose(m["margin_mean"], 1.0, atol=TOL)
  np.testing.assert_allclose(m["pair_accuracy"], 0.5, atol=TOL)
  assert float(m["num_pairs"]) == 2.0
  # Route 2 not shown: only (0, 1) remains.
  _, pm = mrpv.route_pair_margins(pol, ref, labels, jnp.array([[1, 1, 0]]))
  assert int(pm.sum()) == 1 and bool(pm[0, 0, 1])


def test_route_pair_margins_match_explicit_pair_lists():
  """The [B, K, K] masked form equals the ragged [B, P, N] pair lists."""
  rng = np.random.default_rng(0)
  b, k = 5, 4
  pol = rng.normal(size=(b, k)) - 30
  ref = rng.normal(size=(b, k)) - 30
  labels = rng.random((b, k)) < 0.5
  mask = rng.random((b, k)) < 0.8
  margins, pm = mrpv.route_pair_margins(jnp.asarray(pol, jnp.float32),
                                        jnp.asarray(ref, jnp.float32),
                                        labels, mask)
  expected = []
  for i in range(b):
    pos = [j for j in range(k) if mask[i, j] and labels[i, j]]
    neg = [j for j in range(k) if mask[i, j] and not labels[i, j]]
    for p, q in itertools.product(pos, neg):
      expected.append(((pol[i, p] - ref[i, p]) - (pol[i, q] - ref[i, q])))
  got = np.asarray(margins)[np.asarray(pm)]
  assert got.size == len(expected) > 0
  np.testing.assert_allclose(np.sort(got), np.sort(expected), atol=1e-4)


def test_route_pair_margins_gradients():
  pol = jnp.array([[-3.0, -4.0, -5.0, -6.0]])
  ref = jnp.array([[-3.5, -4.5, -5.5, -6.5]])
  labels = jnp.array([[True, False, True, False]])
  mask = jnp.array([[1, 1, 1, 0]])  # route 3 not shown

  def total(p, r):
    margins, pm = mrpv.route_pair_margins(p, r, labels, mask)
    return jnp.sum(jnp.where(pm, margins, 0.0))

  g_pol, g_ref = jax.grad(total, argnums=(0, 1))(pol, ref)
  # Pairs (0, 1) and (2, 1): d/d pol = [+1, -2, +1, 0]; reference constant.
  np.testing.assert_allclose(g_pol, [[1.0, -2.0, 1.0, 0.0]], atol=TOL)
  np.testing.assert_array_equal(g_ref, 0.0)
