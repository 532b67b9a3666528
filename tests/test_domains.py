"""Built-in domains: hand-checked golden questions, an independent re-derivation of
every generated answer, determinism, labelled negatives, and "the rules matter"."""

import math
import re

import numpy as np
import pytest

from realm_jax.data.answers import extract_answer, is_equivalent
from realm_jax.data.domains import DOMAINS, ERROR_TYPES, get_domain

# ---------------------------------------------------------------- golden cases
# Each answer is worked out by hand from the rule book in the comment.

TARIFF_CASES = [
    # zone B rate 3; ceil(4.9) = 5 kg; base 15; fragile +4 -> 19; cap 30 -> 19
    ({"zone": "B", "parcels": [{"w10": 49, "express": False, "fragile": True}]}, "19"),
    # zone A rate 2; ceil(7.2) = 8; base 16; express floor(16/2) = 8; fragile 4 -> 28; cap 20 -> 20
    ({"zone": "A", "parcels": [{"w10": 72, "express": True, "fragile": True}]}, "20"),
    # zone C rate 5; P1: 2 kg -> 10 + express 5 = 15;
    # P2: ceil(9.1) = 10 -> 50 + fragile 4 = 54, cap 45; total 60
    (
        {
            "zone": "C",
            "parcels": [
                {"w10": 20, "express": True, "fragile": False},
                {"w10": 91, "express": False, "fragile": True},
            ],
        },
        "60",
    ),
    # zone B: ceil(3.0) = 3; base 9; express floor(9/2) = 4 -> 13
    ({"zone": "B", "parcels": [{"w10": 30, "express": True, "fragile": False}]}, "13"),
]

DOSING_CASES = [
    # borazol 5 mg/kg x 51 = 255; age 6 no change; cap 250; 250/25 = 10 tablets
    ({"drug": "borazol", "weight": 51, "age": 6, "strength": 25, "ask": "dose", "days": 3}, "10"),
    # alvetin 10 x 34 = 340; age 70 -> 170; cap 400; floor(170/100) = 1; 3 doses a day -> 3
    ({"drug": "alvetin", "weight": 34, "age": 70, "strength": 100, "ask": "day", "days": 3}, "3"),
    # cyclamet 20 x 60 = 1200; cap 1000; floor(1000/250) = 4; x4 a day = 16; 5 days -> 80
    (
        {"drug": "cyclamet", "weight": 60, "age": 30, "strength": 250, "ask": "course", "days": 5},
        "80",
    ),
    # borazol 5 x 15 = 75; age 80 -> 37; floor(37/100) = 0 -> at least 1 tablet
    ({"drug": "borazol", "weight": 15, "age": 80, "strength": 100, "ask": "dose", "days": 3}, "1"),
]

TAX_CASES = [
    # taxable 3160 - 400 = 2760; 10% of (2760 - 1000) = 176; credit 30 -> 146
    ({"incomes": [3160], "children": 1}, "146"),
    # taxable 6600: 10% of 2000 = 200; 20% of 3000 = 600; 30% of 600 = 180 -> 980
    ({"incomes": [7000], "children": 0}, "980"),
    # taxable 1005: 10% of 5 = 0.5 -> 0; credit 60 -> max(-60, 0) = 0
    ({"incomes": [1405], "children": 2}, "0"),
    # taxable 1945: 10% of 945 = 94.5 -> rounded down to 94
    ({"incomes": [2345], "children": 0}, "94"),
    # income 2000 + 1500 = 3500; taxable 3100: 200 + 20% of 100 = 20 -> 220
    ({"incomes": [2000, 1500], "children": 0}, "220"),
    # taxable 1200 - 400 = 800, all in the 0% band -> 0; credit 30 -> max(0 - 30, 0) = 0
    ({"incomes": [1200], "children": 1}, "0"),
]


@pytest.mark.parametrize(
    "name, params, answer",
    [("tariff", p, a) for p, a in TARIFF_CASES]
    + [("dosing", p, a) for p, a in DOSING_CASES]
    + [("tax", p, a) for p, a in TAX_CASES],
)
def test_golden(name, params, answer):
  domain = get_domain(name)
  example = domain.example_from_params(params, "golden")
  assert example.answer == answer
  route = domain.solve(example)
  assert route.positive and route.error is None and route.answer == answer
  assert route.text == example.cot + f"\nAnswer: {answer}"
  assert extract_answer(route.text) == answer
  cited = set(re.findall(r"\[(R\d+)\]", route.text))
  assert cited and cited <= {r.id for r in domain.rules}


def test_golden_question_text():
  tariff, dosing, tax = (get_domain(n) for n in ("tariff", "dosing", "tax"))
  assert (
      tariff.question(TARIFF_CASES[1][0])
      == "Parcel to zone A: 7.2 kg express fragile. What is the shipping charge in dollars?"
  )
  assert dosing.question(DOSING_CASES[2][0]) == (
      "cyclamet, 250 mg tablets. Patient 60 kg, age 30. How many tablets for a 5-day course?"
  )
  assert (
      tax.question(TAX_CASES[4][0])
      == "Taxpayer with salary 2000, bonus 1500, 0 children. What is the tax?"
  )


# ------------------------------------------ independent re-derivation (tests own)


def tariff_ref(p):
  rate = {"A": 2, "B": 3, "C": 5}[p["zone"]]
  cap = {"A": 20, "B": 30, "C": 45}[p["zone"]]
  total = 0
  for parcel in p["parcels"]:
    base = math.ceil(parcel["w10"] / 10) * rate
    charge = (
        base
        + (math.floor(base * 0.5) if parcel["express"] else 0)
        + (4 if parcel["fragile"] else 0)
    )
    total += min(charge, cap)
  return total


def dosing_ref(p):
  per_kg = {"alvetin": 10, "borazol": 5, "cyclamet": 20}[p["drug"]]
  dose = p["weight"] * per_kg
  if p["age"] >= 65:
    dose = math.floor(dose / 2)
  dose = min(dose, {"alvetin": 400, "borazol": 250, "cyclamet": 1000}[p["drug"]])
  tablets = max(1, math.floor(dose / p["strength"]))
  per_day = tablets * {"alvetin": 3, "borazol": 2, "cyclamet": 4}[p["drug"]]
  return {"dose": tablets, "day": per_day, "course": per_day * p["days"]}[p["ask"]]


def tax_ref(p):
  taxable = max(sum(p["incomes"]) - 400, 0)
  tax = 0
  for lo, hi, rate in [(1000, 3000, 0.1), (3000, 6000, 0.2), (6000, 10**9, 0.3)]:
    tax += math.floor(round(max(0, min(taxable, hi) - lo) * rate, 6))
  return max(tax - 30 * p["children"], 0)


REFS = {"tariff": tariff_ref, "dosing": dosing_ref, "tax": tax_ref}


def test_domains_registered():
  assert set(DOMAINS) >= {"tariff", "dosing", "tax"}
  with pytest.raises(ValueError, match="valid domains: dosing, tariff, tax"):
    get_domain("shipping")


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("difficulty", [0, 1, 2, 3])
def test_generated_answers_match_independent_solver(name, difficulty):
  domain = get_domain(name)
  for ex in domain.generate(seed=5, n=150, difficulty=difficulty):
    assert ex.answer == str(REFS[name](ex.meta["params"])), ex.question


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_rule_book_lists_every_rule(name):
  domain = get_domain(name)
  book = domain.rule_book().splitlines()
  assert [line.split("]")[0] + "]" for line in book] == [f"[{r.id}]" for r in domain.rules]


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_generate_is_deterministic_and_prefix_stable(name):
  domain = get_domain(name)
  a = [e.to_dict() for e in domain.generate(3, 20, 1)]
  b = [e.to_dict() for e in domain.generate(3, 20, 1)]
  assert a == b
  assert [e.to_dict() for e in domain.generate(3, 8, 1)] == a[:8]
  other = [e.to_dict() for e in domain.generate(4, 20, 1)]
  assert sum(x["question"] != y["question"] for x, y in zip(a, other)) >= 15
  assert len({e["id"] for e in a}) == 20


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_difficulty_zero_is_short_and_higher_is_longer(name):
  domain = get_domain(name)
  easy = domain.generate(0, 200, 0)
  for ex in easy:
    assert len(ex.question) < 200 and len(ex.cot) < 400
    assert 2 <= len(ex.cot.splitlines()) <= 7
  hard = domain.generate(0, 200, 3)
  assert np.mean([len(e.cot.splitlines()) for e in hard]) > np.mean(
      [len(e.cot.splitlines()) for e in easy]
  )


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_bad_generate_arguments(name):
  domain = get_domain(name)
  with pytest.raises(ValueError, match="difficulty"):
    domain.generate(0, 3, -1)
  with pytest.raises(ValueError, match="seed"):
    domain.generate(-1, 3, 0)


@pytest.mark.parametrize("name", sorted(DOMAINS))
@pytest.mark.parametrize("difficulty", [0, 1, 2])
def test_negative_routes_are_wrong_labelled_and_distinct(name, difficulty):
  domain = get_domain(name)
  rng = np.random.default_rng(0)
  seen_errors = set()
  for ex in domain.generate(1, 40, difficulty):
    gold_text = domain.solve(ex).text
    negatives = domain.negative_routes(ex, rng, 5)
    assert len(negatives) == 5
    for r in negatives:
      assert not r.positive and r.error in ERROR_TYPES and r.source == f"domain:{name}"
      assert extract_answer(r.text) == r.answer
      assert not is_equivalent(r.answer, ex.answer)
      assert not domain.verify(r.answer, ex.answer)
      assert r.answer != str(REFS[name](ex.meta["params"]))
    assert gold_text not in {r.text for r in negatives}
    seen_errors |= {r.error for r in negatives}
  assert {"rule_misapplied", "rule_forgotten", "step_skipped", "arithmetic_slip"} <= seen_errors
  if difficulty >= 1:  # at difficulty 0 tax amounts are multiples of 10: no rounding to get wrong
    assert "wrong_rounding" in seen_errors


def test_named_errors_look_like_their_names():
  tariff = get_domain("tariff")
  ex = tariff.example_from_params(TARIFF_CASES[0][0], "t")  # 4.9 kg fragile, zone B -> 19
  negatives = tariff.negative_routes(ex, np.random.default_rng(2), 12)
  assert {"wrong_rounding", "rule_forgotten", "arithmetic_slip"} <= {r.error for r in negatives}
  for r in negatives:
    if r.error == "wrong_rounding":
      assert "floor(4.9) = 4" in r.text
    if r.error == "rule_forgotten":
      assert "[R5]" not in r.text or "[R6]" not in r.text
    if r.error == "arithmetic_slip":  # exactly one line disagrees with its own arithmetic
      wrong = [line for line in r.text.splitlines() if _bad_line(line)]
      assert len(wrong) == 1, r.text


def _bad_line(line):
  m = re.search(r"= (\d+) x (\d+) = (\d+)$", line)
  if m:
    return int(m[1]) * int(m[2]) != int(m[3])
  m = re.search(r"= ([\d + ]+) = (\d+)$", line)
  if m and "+" in m[1]:
    return sum(int(x) for x in m[1].split("+")) != int(m[2])
  m = re.search(r"min\((\d+), (\d+)\) = (\d+)$", line)
  if m:
    return min(int(m[1]), int(m[2])) != int(m[3])
  m = re.search(r"ceil\((\d+)\.(\d)\) = (\d+)$", line)
  if m:
    return math.ceil(int(m[1]) + int(m[2]) / 10) != int(m[3])
  m = re.search(r"floor\((\d+) / 2\) = (\d+)$", line)
  if m:
    return int(m[1]) // 2 != int(m[2])
  m = re.search(r"fragile = (\d+)$", line)
  if m:
    return int(m[1]) != 4
  return False


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_negative_routes_deterministic_in_rng(name):
  domain = get_domain(name)
  ex = domain.generate(2, 1, 1)[0]
  a = domain.negative_routes(ex, np.random.default_rng(9), 6)
  b = domain.negative_routes(ex, np.random.default_rng(9), 6)
  assert a == b


def test_solve_rejects_foreign_examples():
  tariff, tax = get_domain("tariff"), get_domain("tax")
  ex = tax.generate(0, 1, 0)[0]
  with pytest.raises(ValueError, match="not generated by domain 'tariff'"):
    tariff.solve(ex)


def test_verify_uses_answer_equivalence():
  tariff = get_domain("tariff")
  assert tariff.verify("$19", "19") and tariff.verify("19.0", "19")
  assert not tariff.verify("18", "19")


@pytest.mark.parametrize("name", sorted(DOMAINS))
@pytest.mark.parametrize("difficulty", [0, 1])
def test_rules_matter(name, difficulty):
  """The rule-free shortcut gets most questions wrong: the rule book is needed."""
  domain = get_domain(name)
  examples = domain.generate(7, 300, difficulty)
  wrong = np.mean([not is_equivalent(domain.shortcut_answer(ex), ex.answer) for ex in examples])
  assert wrong >= 0.6
