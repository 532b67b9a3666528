"""Trivial baselines: each built-in domain level keeps every one at 5% or less, the scores
are what the definitions say on hand-made examples, and `data stats` and the eval table
print them as rows."""

import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from realm_jax.cli import evaluate
from realm_jax.cli import main as cli
from realm_jax.data import sources
from realm_jax.data.config import DataConfig
from realm_jax.data.domains import get_domain
from realm_jax.data.records import Example, Route
from realm_jax.evaluation import accuracy, baselines
from realm_jax.rl import corpus, mrpv

EXPECTED = {  # the one-rule guesses each domain names in its docstring
    "tariff": {"zone cap", "base charge only"},
    "dosing": {"dose in mg", "max dose in tablets", "tablets per dose", "one tablet per dose"},
    "tax": {"taxable income", "brackets on income"},
}
NUMBER = re.compile(r"\d+(?:\.\d+)?")  # the domains write plain numbers: 12.7 kg, $340, 45678


def _own_rates(test, reference):
  """Mode, first and last number scored by the test itself (exact integer comparison)."""
  mode = Counter(ex.answer for ex in reference).most_common(1)[0][0]
  golds = [int(ex.answer) for ex in test]
  firsts = [float(NUMBER.findall(ex.question)[0]) for ex in test]
  lasts = [float(NUMBER.findall(ex.question)[-1]) for ex in test]
  return {baselines.MODE: np.mean([int(mode) == g for g in golds]),
          baselines.FIRST: np.mean([f == g for f, g in zip(firsts, golds)]),
          baselines.LAST: np.mean([x == g for x, g in zip(lasts, golds)])}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_trivial_baseline_scores_at_most_5_percent(name, level):
  domain = get_domain(name)
  reference = domain.generate(11, 2000, level)  # the mode is taken here ...
  test = domain.generate(12, 2000, level)  # ... and scored here
  rates = baselines.trivial_baselines(test, reference)
  names = {baselines.MODE, baselines.SHORTCUT, baselines.FIRST, baselines.LAST}
  assert set(rates) == names | {f"one rule: {g}" for g in EXPECTED[name]}
  assert max(rates.values()) <= 0.05, rates
  for key, rate in _own_rates(test, reference).items():
    assert rates[key] == pytest.approx(rate), key
  shortcut = np.mean([domain.shortcut_answer(ex) == ex.answer for ex in test])
  assert rates[baselines.SHORTCUT] == pytest.approx(shortcut)


def _ex(i, question, answer, routes=(), domain="custom"):
  return Example(f"x{i}", question, answer, None, domain, tuple(routes))


def _route(answer, positive):
  return Route(f"step\nAnswer: {answer}", answer, positive, "t", None if positive else "wrong")


def test_scores_follow_the_definitions_on_hand_made_examples():
  examples = [
      _ex(0, "Add 2 and 3.", "5", [_route("5", True), _route("6", False)]),
      _ex(1, "Take 7 from 12.", "5", [_route("4", False), _route("3", False)]),
      _ex(2, "What is 7?", "7", [_route("7", True), _route("7.0", True)]),
      _ex(3, "A word problem with no numbers.", "12", []),
  ]
  rates = baselines.trivial_baselines(examples)
  # mode "5" (2 of 4); first numbers 2, 7, 7, none -> one hit; last numbers 3, 12, 7, none -> one
  # hit; copying: 1/2, 0, 2/2 and no route shown (0) -> (0.5 + 0 + 1 + 0) / 4
  assert rates == {baselines.MODE: 0.5, baselines.FIRST: 0.25, baselines.LAST: 0.25,
                   baselines.COPY: 0.375}
  other = [_ex(9, "q", "7.0"), _ex(10, "q", "7"), _ex(11, "q", "5")]  # "7.0" and "7" count together
  assert baselines.trivial_baselines(examples, reference=other)[baselines.MODE] == 0.25
  assert baselines.COPY not in baselines.trivial_baselines(examples, routes=False)
  assert baselines.trivial_baselines([]) == {}


def test_domain_baselines_on_fixed_params():
  tariff = get_domain("tariff")
  # zone A rate 2, cap 40: 27.2 kg express fragile $250 -> 74 (tests/test_domains.py); a parcel
  # of 20.0 kg, $25, zone A -> base 40 (capped at 40) + insurance 1 = 41
  ex = [tariff.example_from_params({"zone": "A", "parcels": [
      {"w10": 272, "express": True, "fragile": True, "value": 250}]}, "a"),
        tariff.example_from_params({"zone": "A", "parcels": [
            {"w10": 200, "express": False, "fragile": False, "value": 25}]}, "b")]
  assert [e.answer for e in ex] == ["74", "41"]
  ex[1] = Example("b", ex[1].question, "40", None, "tariff", meta=ex[1].meta)  # gold = the cap
  rates = baselines.trivial_baselines(ex)
  # shortcut: round(27.2) x 2 = 54, round(20.0) x 2 = 40 -> 1 of 2; zone cap 40 -> 1 of 2;
  # base only 56 and 40 -> 1 of 2; first numbers 27.2, 20.0 -> "20.0" == 40? no -> 0
  assert rates["rule-free shortcut"] == 0.5 and rates["one rule: zone cap"] == 0.5
  assert rates["one rule: base charge only"] == 0.5 and rates[baselines.FIRST] == 0.0


def test_sources_without_a_domain_get_only_the_baselines_that_apply():
  examples = sources.load_source("gsm8k:tests/data/gsm8k_small.jsonl", None, 0)
  pooled = corpus._with_routes(examples, "gsm8k:x", DataConfig(negatives_per_question=2), 0)
  rates = baselines.trivial_baselines(pooled)
  assert set(rates) == {baselines.MODE, baselines.FIRST, baselines.LAST, baselines.COPY}
  assert rates[baselines.COPY] == pytest.approx(1 / 3)  # 1 reference route + 2 perturbed ones
  gym = [_ex(i, f"{i} + {i} = ?", str(2 * i), domain="gym:chain_sum") for i in range(1, 5)]
  assert set(baselines.trivial_baselines(gym)) == {baselines.MODE, baselines.FIRST, baselines.LAST}


def test_copy_a_shown_route_reads_the_routes_the_eval_shows():
  tariff = get_domain("tariff")
  pool = corpus._with_routes(tariff.generate(0, 40, 0), "domain:tariff",
                             DataConfig(negatives_per_question=3, positives_per_question=2), 0)
  cfg = mrpv.MRPVConfig(num_routes=2, all_same_share=0.5)
  _, labels, _ = accuracy.eval_prompts(pool, cfg, True, 7)  # what evaluate_params shows, seed 7
  rates = baselines.trivial_baselines(pool, mrpv_cfg=cfg, seed=7)
  assert rates[baselines.COPY] == pytest.approx(np.mean([np.mean(lab) for lab in labels]))
  assert any(all(lab) for lab in labels)  # with 2 positives a shown pair can be all correct
  assert rates[baselines.COPY] != pytest.approx(2 / 5)  # not the pool's positive share


def test_eval_table_prints_baseline_rows_for_both_settings():
  train_ex = get_domain("dosing").generate(1, 50, 0)
  eval_ex = corpus._with_routes(get_domain("dosing").generate(2, 20, 0), "domain:dosing",
                                DataConfig(), 2)
  cfg = SimpleNamespace(eval=SimpleNamespace(num_questions=10, routes="both"), seed=3,
                        rl=SimpleNamespace(mrpv=mrpv.MRPVConfig(num_routes=2)),
                        data=SimpleNamespace(source="domain:dosing"))
  ctx = SimpleNamespace(data=SimpleNamespace(train=train_ex, eval=eval_ex))
  base = evaluate._baselines(cfg, ctx)
  assert base["with routes"] == baselines.trivial_baselines(
      eval_ex[:10], train_ex, mrpv_cfg=cfg.rl.mrpv, seed=3)
  assert baselines.COPY in base["with routes"] and baselines.COPY not in base["without routes"]
  metrics = {"accuracy": 0.25, "accuracy_ci_low": 0.1, "accuracy_ci_high": 0.5, "pass@4": 0.5,
             "maj@4": 0.25}
  table = accuracy.results_table({"final": {"without routes": metrics, "with routes": metrics}},
                                 4, base)
  lines = table.splitlines()
  assert lines[2].startswith("| final | without routes | 0.250 (0.100-0.500)")
  for setting, accs in base.items():
    for name, acc in accs.items():
      assert f"| baseline: {name} | {setting} | {acc:.3f} |" in table
  assert "| baseline: copy a shown route | with routes |" in table
  assert "| baseline: copy a shown route | without routes |" not in table
  assert "| baseline: one rule: max dose in tablets | without routes |" in table
  assert accuracy.results_table({"final": {"with routes": metrics}}, 4).count("baseline") == 0


def test_data_stats_prints_the_baselines(capsys):
  cli.main(["data", "stats", "domain:tariff", "--n", "60", "--difficulty", "1"])
  out = capsys.readouterr().out
  assert "trivial baselines" in out and "mode of 60 other items" in out
  for name in ("most frequent answer", "rule-free shortcut", "one rule: zone cap",
               "one rule: base charge only", "first number in question",
               "last number in question", "copy a shown route"):
    assert re.search(rf"^  baseline: {name} +\d+\.\d%$", out, re.M), name
  assert re.search(r"^  baseline: copy a shown route +25\.0%$", out, re.M)  # 1 of 4 routes
  cli.main(["data", "stats", "gsm8k:tests/data/gsm8k_small.jsonl"])
  out = capsys.readouterr().out
  assert "baseline: last number in question" in out and "shortcut" not in out
  assert "mode of these items" in out


def test_greedy_only_table_has_no_sampled_columns():
  metrics = {"accuracy": 0.25, "accuracy_ci_low": 0.1, "accuracy_ci_high": 0.5,
             "verification_accuracy": 0.75}
  table = accuracy.results_table({"final": {"with routes": metrics}}, 1)
  assert table.splitlines()[0] == "| model | routes at test | accuracy (95% CI) | route verdicts |"
  assert table.splitlines()[2] == "| final | with routes | 0.250 (0.100-0.500) | 0.750 |"
  assert "nan" not in table and "pass@" not in table
