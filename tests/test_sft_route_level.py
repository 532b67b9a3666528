"""`sft.route_level`: the routed distillation items show another level's training questions
with their routes (a start that must follow a verified route), the rest stay question-only
at the run's level, and no routed question is a test question of that level."""

import dataclasses

import numpy as np
import pytest

from realm_jax import configs
from realm_jax.cli import train
from realm_jax.data import domains
from realm_jax.data.teachers import domain_teacher
from realm_jax.rl import corpus, mrpv
from realm_jax.train.config import SFTConfig
from tests.test_reproduce import TINY


def _teacher(level, n, seed):
  d = domains.get_domain("tariff")
  return domain_teacher(d, d.generate(seed, n, level), np.random.default_rng(seed), 3)


def test_routed_items_come_from_the_route_examples_and_the_rest_stay_question_only():
  level0, level1 = _teacher(0, 200, 0), _teacher(1, 50, 1)
  cfg = mrpv.MRPVConfig(num_routes=2)
  pairs = corpus.sft_pairs(level0, np.random.default_rng(3), cfg, 0.5, 2, route_examples=level1)
  assert len(pairs) == len(level0)
  routed = 0
  for i, ((prompt, completion), ex) in enumerate(zip(pairs, level0)):
    other = level1[i % len(level1)]  # cycled
    if completion.startswith("<verify>"):
      routed += 1
      assert other.question in prompt and "Route B" in prompt and ex.question not in prompt
      assert completion.endswith(f"<think>{other.cot}</think><answer>{other.answer}</answer>")
    else:
      assert prompt == mrpv.build_prompt(ex.question, [], cfg)
      assert completion == f"<think>{ex.cot}</think><answer>{ex.answer}</answer>"
  assert 70 <= routed <= 130  # binomial(200, 0.5): within 4 standard deviations
  # only the level-1 items need rule R5 or R6 (express and fragile parcels)
  assert any("[R5]" in c or "[R6]" in c for _, c in pairs if c.startswith("<verify>"))
  assert not any("[R5]" in c or "[R6]" in c for _, c in pairs if not c.startswith("<verify>"))
  with pytest.raises(ValueError, match="route_examples is empty"):
    corpus.sft_pairs(level0, np.random.default_rng(3), cfg, 0.5, 2, route_examples=[])


def test_route_level_needs_routed_items_and_a_level():
  assert SFTConfig(route_share=0.25, route_level=1).route_level == 1
  with pytest.raises(ValueError, match=r"sft.route_level=1 needs .* sft.route_share > 0"):
    SFTConfig(route_level=1)
  with pytest.raises(ValueError, match=r"sft.route_level=-1"):
    SFTConfig(route_share=0.5, route_level=-1)


def test_a_run_distils_level_1_questions_only_with_routes_and_none_of_its_test_questions(
    tmp_path, monkeypatch):
  seen = []
  real = corpus.sft_pairs

  def spy(*args, **kwargs):
    pairs = real(*args, **kwargs)
    seen.append(pairs)
    return pairs

  monkeypatch.setattr(corpus, "sft_pairs", spy)
  ov = [*TINY, "base.steps=0", "sft.steps=1", "sft.num_items=48", "sft.route_share=0.5",
        "sft.route_level=1", "sft.eval_every=0", "sft.patience=0", "data.sft_buckets=128,192,256,384,512,640"]
  train.run("evidence", str(tmp_path / "run"), ov)
  (pairs,) = seen
  cfg = configs.load_experiment("evidence", ov)
  data = {lv: corpus.build_run_data(dataclasses.replace(cfg.data, difficulty=lv)) for lv in (0, 1)}
  q = lambda exs: {ex.question for ex in exs}
  routed = [p for p, c in pairs if c.startswith("<verify>")]
  plain = [p for p, c in pairs if not c.startswith("<verify>")]
  assert routed and plain
  in_any = lambda p, qs: [x for x in qs if x in p]
  for p in routed:
    assert in_any(p, q(data[1].train)) and not in_any(p, q(data[1].eval) | q(data[0].train))
  for p in plain:
    assert in_any(p, q(data[0].train)) and not in_any(p, q(data[1].train))
