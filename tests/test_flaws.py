"""Regressions of the flaws found by reading the code (issue 15), one test (or two) per flaw,
each against hand-computed values or facts checked independently of the code under test."""

import dataclasses
import math
import types
from collections import Counter

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from realm_jax.data import domains
from realm_jax.data.records import Example, Route
from realm_jax.data.teachers import domain_teacher
from realm_jax.rl import advantages, corpus, mrpv
from realm_jax.rl import loop as rl_loop
from realm_jax.rl.config import RLConfig
from realm_jax.train import step as train_step
from realm_jax.train.config import SFTConfig
from tests.test_rl_loop import ByteTok

TOL = 1e-5


# -- 1. a truncated route is labelled by what it shows -------------------------------------------

def _first_difference(a: list[str], b: list[str]) -> int:
  return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def _negative_with_error_at(where: str):
  """(example, its gold route, a negative) of the tariff domain whose first step that differs
  from the gold's is its last step ('late') or its first ('early')."""
  d = domains.get_domain("tariff")
  for ex in domain_teacher(d, d.generate(0, 40, 1), np.random.default_rng(0), 4):
    gold = next(r for r in ex.routes if r.positive)
    g = gold.text.splitlines()
    for neg in (r for r in ex.routes if not r.positive):
      n = neg.text.splitlines()
      at = _first_difference(g, n)
      if len(n) == len(g) and at == {"late": len(g) - 2, "early": 0}[where]:
        return dataclasses.replace(ex, routes=(gold, neg)), gold, neg
  raise AssertionError(f"no tariff negative with its error at the {where} step")


def test_truncated_negative_cut_before_its_late_error_is_labelled_correct():
  ex, gold, neg = _negative_with_error_at("late")
  g, n = gold.text.splitlines(), neg.text.splitlines()
  steps = len(g) - 1  # the last line is "Answer: X"
  # The facts, read off the texts: the steps agree up to the last one, which is wrong.
  assert g[:steps - 1] == n[:steps - 1] and g[steps - 1] != n[steps - 1] and g[-1] != n[-1]
  cfg = mrpv.MRPVConfig(num_routes=2, all_same_share=0.0)
  # floor(0.5 * steps) steps shown; (steps - 1) / steps shows all but the last step.
  for frac, kept in ((0.5, steps // 2), ((steps - 1) / steps, steps - 1)):
    for seed in range(4):
      _, labels, texts = corpus.route_prompt(ex, np.random.default_rng(seed), cfg, 2, frac)
      # Both shown texts are the gold's first steps: neither shows an error, both are correct.
      assert texts == ["\n".join(g[:kept])] * 2
      assert labels == [True, True]
  # Shown whole, the negative shows its error and stays wrong.
  _, labels, texts = corpus.route_prompt(ex, np.random.default_rng(0), cfg, 2, 1.0)
  assert sorted(zip(labels, texts)) == [(False, neg.text), (True, gold.text)]


def test_truncated_negative_whose_error_is_shown_stays_wrong():
  ex, gold, neg = _negative_with_error_at("early")  # error in step 1: every cut shows it
  g, n = gold.text.splitlines(), neg.text.splitlines()
  kept = (len(g) - 1) // 2
  cfg = mrpv.MRPVConfig(num_routes=2, all_same_share=0.0)
  _, labels, texts = corpus.route_prompt(ex, np.random.default_rng(0), cfg, 2, 0.5)
  assert sorted(zip(labels, texts)) == [(False, "\n".join(n[:kept])),
                                        (True, "\n".join(g[:kept]))]


# -- 2. route rows over the largest bucket: the loss mask covers route tokens only ---------------

def test_route_row_over_the_largest_bucket_masks_only_route_tokens():
  tok = ByteTok()
  ex = Example(id="q", question="Q?", answer="1", cot=None, domain="t")
  ctx = tok.encode("Q?\n", add_bos=True)  # 4 tokens: BOS, 'Q', '?', '\n'
  assert len(ctx) == 4
  prompts = types.SimpleNamespace(examples=[ex], route_texts=[["abcdefghij", "xy"]])
  out = rl_loop.route_batch(tok, prompts, 2, (8, 12))
  tokens, mask, loss_mask = (np.asarray(out[k]) for k in ("tokens", "mask", "loss_mask"))
  assert tokens.shape == (2, 12)
  # Row 0 (4 + 10 = 14 tokens) is cut to 12: the question and the route's first 8 tokens.
  assert tokens[0].tolist() == ctx + tok.encode("abcdefgh")
  assert loss_mask[0].tolist() == [0] * 4 + [1] * 8
  # Row 1 fits (6 tokens, left-padded): the mask is on its 2 route tokens.
  assert tokens[1, 6:].tolist() == ctx + tok.encode("xy") and mask[1].sum() == 6
  assert loss_mask[1].tolist() == [0] * 10 + [1] * 2
  # A question that alone fills the bucket leaves no route token: nothing is masked.
  long_q = Example(id="l", question="Q" * 20, answer="1", cot=None, domain="t")
  out = rl_loop.route_batch(tok, types.SimpleNamespace(examples=[long_q], route_texts=[["ab"]]),
                            1, (8, 12))
  assert np.asarray(out["loss_mask"]).sum() == 0


# -- 3. the first update does not run at learning rate 0 -----------------------------------------

def test_lr_schedule_first_step_is_nonzero_and_boundaries_hold():
  s = train_step.lr_schedule(1.0, 4, 20)
  # lr (t + 1) / warmup: 0.25 at step 0, 1.0 at steps 3 and 4, lr/10 at the last step.
  assert float(s(0)) == pytest.approx(0.25) and float(s(3)) == pytest.approx(1.0)
  assert float(s(4)) == pytest.approx(1.0) and float(s(20)) == pytest.approx(0.1)
  # Cosine midpoint (step 12 of 4..20): 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 = 0.55.
  assert float(s(12)) == pytest.approx(0.55)


def test_first_adam_update_moves_the_params_by_lr_over_warmup():
  opt = train_step.make_optimizer(0.1, 4, 10, 0.0, 1e9)
  params = {"w": jnp.zeros(3)}
  updates, _ = opt.update({"w": jnp.array([0.5, -2.0, 1.0])}, opt.init(params), params)
  # Adam's first step is lr(0) * sign(g) (m_hat / sqrt(v_hat) = g / |g|); lr(0) = 0.1 / 4.
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"],
                             [-0.025, 0.025, -0.025], atol=1e-6)


# -- 4. a format-only group gets proportionally small advantages ---------------------------------

def test_grpo_advantages_keep_the_groups_reward_scale():
  # Group 0 differs only by a 0.1 format bonus, group 1 is a right/wrong split.
  r = jnp.array([0.1, 0.1, 0.1, 0.0, 1.0, 1.0, 1.0, 0.0])
  # Centred: group 0 [.025]*3 + [-.075] (var, ddof 1: .0075 / 3 = .0025); group 1 ten times that
  # (var .25). Pooled std of the batch: sqrt((.0025 + .25) / 2) = sqrt(.12625).
  s = math.sqrt(0.12625)
  want = [0.025 / s] * 3 + [-0.075 / s] + [0.25 / s] * 3 + [-0.75 / s]
  np.testing.assert_allclose(advantages.ADVANTAGES["grpo"](r, 4), want, atol=TOL)
  adv = np.asarray(advantages.ADVANTAGES["grpo"](r, 4))
  np.testing.assert_allclose(adv[:4], 0.1 * adv[4:], atol=TOL)  # 1/10 of the reward gap
  # Classic GRPO stays available by name: each group by its own std (.05 and .5), equal sizes.
  np.testing.assert_allclose(advantages.ADVANTAGES["grpo_group"](r, 4),
                             [0.5, 0.5, 0.5, -1.5] * 2, atol=1e-4)
  # A zero-variance group neither gets advantages nor changes the pooled std.
  r3 = jnp.concatenate([r, jnp.full(4, 0.7)])
  np.testing.assert_allclose(advantages.ADVANTAGES["grpo"](r3, 4), want + [0.0] * 4, atol=TOL)
  # One group with a signal: the batch scope is the group scope.
  one = jnp.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
  h = 0.5 * math.sqrt(3.0)  # centred +-0.5, std sqrt(1/3)
  np.testing.assert_allclose(advantages.ADVANTAGES["grpo"](one, 4), [h, -h, -h, h] + [0.0] * 4,
                             atol=TOL)
  assert RLConfig().advantage == "grpo" and RLConfig(advantage="grpo_group").advantage


# -- 5. guided distillation shows the question only by default -----------------------------------

def test_sft_default_route_share_shows_the_question_only():
  assert SFTConfig().route_share == 0.0
  d = domains.get_domain("tariff")
  exs = domain_teacher(d, d.generate(0, 20, 1), np.random.default_rng(0), 2)
  cfg = mrpv.MRPVConfig(num_routes=2)
  pairs = corpus.sft_pairs(exs, np.random.default_rng(0), cfg, SFTConfig().route_share, 2)
  assert len(pairs) == 20
  for (prompt, completion), ex in zip(pairs, exs):
    assert prompt == mrpv.build_prompt(ex.question, [], cfg) and "Route A" not in prompt
    assert "<verify>" not in completion


def test_sft_route_share_shows_routes_with_their_gold_verdicts():
  """route_share=1: every item is shown K routes, and its target's <verify> block calls each
  shown route correct exactly when it is one of the item's positive routes (read off the
  prompt text). route_share=0.5: about half the items, a binomial share."""
  d = domains.get_domain("tariff")
  exs = domain_teacher(d, d.generate(0, 400, 1), np.random.default_rng(0), 3)
  cfg = mrpv.MRPVConfig(num_routes=2)
  pairs = corpus.sft_pairs(exs[:40], np.random.default_rng(1), cfg, 1.0, 2)
  for (prompt, completion), ex in zip(pairs, exs):
    shown = [r for r in ex.routes if f"\n{r.text}\n" in prompt + "\n"]
    order = sorted(shown, key=lambda r: prompt.index(r.text))
    assert len(order) == 2 and "Route B" in prompt and "Route C" not in prompt
    want = "; ".join(f"{letter}: {'correct' if r.positive else 'wrong'}"
                     for letter, r in zip("AB", order))
    assert completion == f"<verify>{want}</verify><think>{ex.cot}</think><answer>{ex.answer}</answer>"
  half = corpus.sft_pairs(exs, np.random.default_rng(2), cfg, 0.5, 2)
  routed = np.mean([c.startswith("<verify>") for _, c in half])
  assert abs(routed - 0.5) < 4 * math.sqrt(0.25 / len(exs))  # 4 standard deviations


# -- 6. route sets: all four label patterns when the pool allows them ----------------------------

def test_sample_routes_label_patterns_on_two_positives_and_three_negatives():
  pool = [True, False, True, False, False]
  cfg = mrpv.MRPVConfig(num_routes=2, all_same_share=0.2)
  # All-same with probability 0.2, a fair coin between the kinds (both have >= 2 routes):
  # P(pos, pos) = P(neg, neg) = 0.1; otherwise one of each in random order: 0.4 per order.
  want = {(True, True): 0.1, (False, False): 0.1, (True, False): 0.4, (False, True): 0.4}
  rng, n = np.random.default_rng(0), 8000
  counts = Counter(tuple(pool[i] for i in mrpv.sample_routes(pool, 2, cfg, rng))
                   for _ in range(n))
  assert set(counts) == set(want)
  for pattern, p in want.items():  # binomial sd <= sqrt(.25 / 8000) = .0056
    assert abs(counts[pattern] / n - p) < 0.02, (pattern, counts)
  # Through `route_prompt` with a pool of several positive routes: all-positive prompts appear.
  routes = tuple(Route(f"step {i}\nAnswer: {7 if ok else i}", str(7 if ok else i), ok, "t")
                 for i, ok in enumerate(pool))
  ex = Example(id="q", question="Q", answer="7", cot=None, domain="t", routes=routes)
  seen = Counter(tuple(corpus.route_prompt(ex, rng, cfg, 2)[1]) for _ in range(400))
  assert set(seen) == set(want)
