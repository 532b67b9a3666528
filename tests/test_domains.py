"""Built-in domains: hand-checked golden questions, an independent re-derivation of
every generated answer, determinism, labelled negatives, "the rules matter", and the
evidence properties: a documented difficulty ladder, a large question space, the
one-rule guesses, several correct routes per question (trivial baselines: test_baselines)."""

import importlib
import math
import re

import numpy as np
import pytest

from realm_jax.data.answers import extract_answer, is_equivalent
from realm_jax.data.domains import DOMAINS, ERROR_TYPES, get_domain

# ---------------------------------------------------------------- golden cases
# Each answer is worked out by hand from the rule book in the comment, at levels 0..3.


def _parcel(w10, value, express=False, fragile=False):
  return {"w10": w10, "express": express, "fragile": fragile, "value": value}


TARIFF_CASES = [
    # d0. zone B rate 3; ceil(4.9) = 5 kg; base 15, cap 60 -> 15;
    # insurance ceil(60 / 25) = ceil(2.4) = 3 -> 15 + 3 = 18
    ({"zone": "B", "parcels": [_parcel(49, 60)]}, "18"),
    # d0. zone A rate 2; ceil(27.2) = 28; base 56, cap 40 -> 40; insurance 250 / 25 = 10 -> 50
    ({"zone": "A", "parcels": [_parcel(272, 250)]}, "50"),
    # d0. zone E rate 6; ceil(3.0) = 3; base 18; insurance ceil(999 / 25) = ceil(39.96) = 40 -> 58
    ({"zone": "E", "parcels": [_parcel(30, 999)]}, "58"),
    # d1. as the first, fragile: 15 + 4 + 3 = 22
    ({"zone": "B", "parcels": [_parcel(49, 60, fragile=True)]}, "22"),
    # d1. as the second, express and fragile: 40 + floor(40 / 2) = 20 + 4 + 10 = 74
    ({"zone": "A", "parcels": [_parcel(272, 250, express=True, fragile=True)]}, "74"),
    # d1. as the third, express: 18 + 9 + 40 = 67
    ({"zone": "E", "parcels": [_parcel(30, 999, express=True)]}, "67"),
    # heavy (d2 weights). zone C rate 4; ceil(41.3) = 42; base 168, cap 80 -> 80; fragile 4;
    # insurance ceil(101 / 25) = 5; heavy (42 > 30 kg) 15 -> 80 + 4 + 5 + 15 = 104
    ({"zone": "C", "parcels": [_parcel(413, 101, fragile=True)]}, "104"),
    # zone D rate 5; 30 kg is not over 30: no heavy fee; base 150, cap 100 -> 100;
    # express 50; insurance ceil(30 / 25) = 2 -> 152
    ({"zone": "D", "parcels": [_parcel(300, 30, express=True)]}, "152"),
    # d2. zone A rate 2; P1: ceil(12.5) = 13 -> 26 (cap 40), insurance ceil(20 / 25) = 1 -> 27;
    # P2: 35 kg -> 70, cap 40; express 20; insurance 500 / 25 = 20; heavy 15 -> 95; total 122
    ({"zone": "A", "parcels": [_parcel(125, 20), _parcel(350, 500, express=True)]}, "122"),
    # d3. zone C rate 4; P1: ceil(0.4) = 1 -> 4; fragile 4; insurance 1 -> 9;
    # P2: 20 kg -> 80 (= cap 80); express 40; insurance 75 / 25 = 3 -> 123;
    # P3: 50 kg -> 200, cap 80; express 40; fragile 4; insurance 16; heavy 15 -> 155;
    # total 9 + 123 + 155 = 287; 3 parcels: 10% off, floor(28.7) = 28 -> 259
    (
        {
            "zone": "C",
            "parcels": [
                _parcel(4, 10, fragile=True),
                _parcel(199, 75, express=True),
                _parcel(500, 400, express=True, fragile=True),
            ],
        },
        "259",
    ),
]


def _patient(weight, age, drugs, kidney=False):
  return {"weight": weight, "age": age, "kidney": kidney,
          "drugs": [{"drug": d, "strength": s, "days": n} for d, s, n in drugs]}


DOSING_CASES = [
    # d0. alvetin 10 mg/kg x 60 = 600; age 30 no change; cap 1100 -> 600;
    # floor(600 / 50) = 12 tablets; 3 doses a day -> 36; 7 days -> 252
    (_patient(60, 30, [("alvetin", 50, 7)]), "252"),
    # d0. borazol 5 x 51 = 255; age 70 -> floor(127.5) = 127; cap 550; floor(127 / 25) = 5;
    # 2 a day -> 10; 10 days -> 100
    (_patient(51, 70, [("borazol", 25, 10)]), "100"),
    # d0. cyclamet 20 x 120 = 2400; cap 2200; 2200 / 200 = 11; 4 a day -> 44; 3 days -> 132
    (_patient(120, 40, [("cyclamet", 200, 3)]), "132"),
    # d1. dexolan 15 x 90 = 1350; age 65 -> 675; cap 1650; 675 / 75 = 9; kidney: 2 - 1 = 1 dose
    # a day -> 9; 14 days -> 126
    (_patient(90, 65, [("dexolan", 75, 14)], kidney=True), "126"),
    # d2. etrafen 8 x 45 = 360; age 80 -> 180; 180 / 20 = 9; x 3 = 27; 5 days -> 135;
    # alvetin 450 -> 225; floor(225 / 100) = 2; x 3 = 6; 21 days -> 126; total 261
    (_patient(45, 80, [("etrafen", 20, 5), ("alvetin", 100, 21)]), "261"),
    # d3 (kidney). cyclamet 20 x 130 = 2600, cap 2200; 44 tablets; 4 - 1 = 3 a day -> 132; x 3 = 396;
    # borazol 650, cap 550; 55 tablets; 2 - 1 = 1 a day -> 55; x 4 = 220;
    # etrafen 1040, cap 880; 11 tablets; 3 - 1 = 2 a day -> 22; x 6 = 132; total 748
    (
        _patient(130, 18, [("cyclamet", 50, 3), ("borazol", 10, 4), ("etrafen", 80, 6)],
                 kidney=True),
        "748",
    ),
]

TAX_CASES = [
    # d0. taxable 10000 - 2500 = 7500; 10% of 2500 = 250
    ({"incomes": [10000], "pension": 0, "children": 0}, "250"),
    # d0. taxable 28734: 10% of 15000 = 1500; 20% of 8734 = 1746.8 -> 1746; 3246 - 200 = 3046
    ({"incomes": [31234], "pension": 0, "children": 2}, "3046"),
    # d0. taxable 57501: 1500 + 6000 + 30% of 7501 = 2250.3 -> 2250; 9750 - 400 = 9350
    ({"incomes": [60001], "pension": 0, "children": 4}, "9350"),
    # d0. taxable 8000: 10% of 3000 = 300; credit 400 -> max(-100, 0) = 0
    ({"incomes": [10500], "pension": 0, "children": 4}, "0"),
    # d1. pension allowed min(9999, floor(4567.8)) = 4567; taxable 45678 - 2500 - 4567 = 38611;
    # 1500 + 20% of 18611 = 3722.2 -> 3722; 5222 - 100 = 5122
    ({"incomes": [45678], "pension": 9999, "children": 1}, "5122"),
    # d1. pension allowed min(500, 2000) = 500; taxable 17000; 10% of 12000 = 1200
    ({"incomes": [20000], "pension": 500, "children": 0}, "1200"),
    # d2. income 3000 + 4005 = 7005; pension allowed floor(700.5) = 700; taxable 3805,
    # all in the 0% band -> 0; credit 100 -> max(-100, 0) = 0
    ({"incomes": [3000, 4005], "pension": 1000, "children": 1}, "0"),
    # d2. income 65555; pension allowed 6555; taxable 56500: 1500 + 6000 + 30% of 6500 = 1950
    # -> 9450; credit 200 -> 9250
    ({"incomes": [40000, 25555], "pension": 7000, "children": 2}, "9250"),
    # d3. income 12345 + 6789 + 3001 = 22135; pension allowed floor(2213.5) = 2213;
    # taxable 22135 - 2500 - 2213 = 17422; 10% of 12422 = 1242.2 -> 1242
    ({"incomes": [12345, 6789, 3001], "pension": 2500, "children": 0}, "1242"),
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
  assert tariff.question(TARIFF_CASES[1][0]) == (
      "Parcel to zone A: 27.2 kg, value $250. What is the shipping charge in dollars?"
  )
  assert tariff.question(TARIFF_CASES[4][0]) == (
      "Parcel to zone A: 27.2 kg express fragile, value $250. What is the shipping charge in"
      " dollars?"
  )
  assert tariff.question(TARIFF_CASES[8][0]) == (
      "2 parcels to zone A: 12.5 kg, value $20; 35.0 kg express, value $500. What is the shipping"
      " charge in dollars?"
  )
  assert dosing.question(DOSING_CASES[3][0]) == (
      "Patient 90 kg, age 65, kidney impairment: dexolan 75 mg tablets for 14 days. How many"
      " tablets for the whole course?"
  )
  assert dosing.question(DOSING_CASES[4][0]) == (
      "Patient 45 kg, age 80: etrafen 20 mg tablets for 5 days; alvetin 100 mg tablets for 21"
      " days. How many tablets in total?"
  )
  assert tax.question(TAX_CASES[1][0]) == "Taxpayer with income 31234, 2 children. What is the tax?"
  assert tax.question(TAX_CASES[7][0]) == (
      "Taxpayer with salary 40000, bonus 25555, pension contributions 7000, 2 children. What is"
      " the tax?"
  )


# ------------------------------------------ independent re-derivation (tests own)


def tariff_ref(p):
  rate = {"A": 2, "B": 3, "C": 4, "D": 5, "E": 6}[p["zone"]]
  cap = {"A": 40, "B": 60, "C": 80, "D": 100, "E": 120}[p["zone"]]
  total = 0
  for parcel in p["parcels"]:
    kg = math.ceil(parcel["w10"] / 10)
    base = min(kg * rate, cap)
    total += (
        base
        + (math.floor(base * 0.5) if parcel["express"] else 0)
        + (4 if parcel["fragile"] else 0)
        + math.ceil(parcel["value"] / 25)
        + (15 if kg > 30 else 0)
    )
  if len(p["parcels"]) >= 3:
    total -= math.floor(total * 0.1)
  return total


def dosing_ref(p):
  total = 0
  for d in p["drugs"]:
    drug = d["drug"]
    dose = p["weight"] * {"alvetin": 10, "borazol": 5, "cyclamet": 20, "dexolan": 15,
                          "etrafen": 8}[drug]
    if p["age"] >= 65:
      dose = math.floor(dose / 2)
    dose = min(dose, {"alvetin": 1100, "borazol": 550, "cyclamet": 2200, "dexolan": 1650,
                      "etrafen": 880}[drug])
    tablets = max(1, math.floor(dose / d["strength"]))
    per_day = {"alvetin": 3, "borazol": 2, "cyclamet": 4, "dexolan": 2, "etrafen": 3}[drug]
    total += tablets * (per_day - p["kidney"]) * d["days"]
  return total


def tax_ref(p):
  income = sum(p["incomes"])
  pension = min(p["pension"], math.floor(income / 10))
  taxable = max(income - 2500 - pension, 0)
  tax = 0
  for lo, hi, rate in [(5000, 20000, 0.1), (20000, 50000, 0.2), (50000, 10**9, 0.3)]:
    tax += math.floor(round(max(0, min(taxable, hi) - lo) * rate, 6))
  return max(tax - 100 * p["children"], 0)


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
  assert "wrong_rounding" in seen_errors  # every level has a rounding rule to get wrong


def test_named_errors_look_like_their_names():
  tariff = get_domain("tariff")
  ex = tariff.example_from_params(TARIFF_CASES[3][0], "t")  # 4.9 kg fragile, $60, zone B -> 22
  negatives = tariff.negative_routes(ex, np.random.default_rng(2), 12)
  assert {"wrong_rounding", "rule_forgotten", "arithmetic_slip"} <= {r.error for r in negatives}
  for r in negatives:
    if r.error == "wrong_rounding":  # the weight or the insurance rounded down
      assert "floor(4.9) = 4" in r.text or "floor(60 / 25) = 2" in r.text
    if r.error == "rule_forgotten":  # the cap cannot change this answer: fragile or insurance
      assert "[R6]" not in r.text or "[R7]" not in r.text
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
  m = re.search(r"ceil\((\d+) / (\d+)\) = (\d+)$", line)
  if m:
    return math.ceil(int(m[1]) / int(m[2])) != int(m[3])
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


# ------------------------------------------------- evidence: ladder, space, guesses, positives


@pytest.mark.parametrize("name", sorted(REFS))
def test_difficulty_ladder_is_documented(name):
  doc = importlib.import_module(f"realm_jax.data.domains.{name}").__doc__
  ladder = doc.split("Difficulty ladder", 1)[1]
  for level in range(4):  # one line per level, saying what it adds
    assert re.search(rf"^  {level}  \S.*", ladder, re.M), (name, level)


def _perm(n, k):
  return math.factorial(n) // math.factorial(n - k)


def _space_by_hand(name, level):
  """Distinct questions from the sampling ranges in each module docstring."""
  n = 1 if level < 2 else level
  if name == "tariff":  # 5 zones; per parcel: weights 0.1..29.9 (d0, d1) or ..59.9, express x
    weights = 299 if level <= 1 else 599  # fragile from d1, declared values $10..$999
    return 5 * (weights * (4 if level else 1) * 990) ** n
  if name == "dosing":  # weights 40..130, ages 18..95, kidney from d1; ordered distinct drugs of 5,
    return 91 * 78 * (2 if level else 1) * _perm(5, n) * (3 * 19) ** n  # 3 strengths x 3..21 days
  incomes = 90000 if level < 2 else 57000 ** n  # 10000..99999, or 3000..59999 per source
  return incomes * (9500 if level else 1) * 5  # pension 500..9999 from d1; 0..4 children


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_question_space_is_large_and_samples_are_distinct(name, level):
  domain = get_domain(name)
  assert domain.question_space(level) == _space_by_hand(name, level) >= 100_000
  examples = domain.generate(3, 5000, level)
  assert len({ex.question for ex in examples}) >= 0.99 * 5000  # train and eval never meet
  for ex in examples[:500]:  # the samples come from the ranges counted above
    p = ex.meta["params"]
    if name == "tariff":
      assert 1 <= min(x["w10"] for x in p["parcels"]) and max(
          x["w10"] for x in p["parcels"]) <= (299 if level <= 1 else 599)
      assert level or not any(x["express"] or x["fragile"] for x in p["parcels"])
      assert all(10 <= x["value"] <= 999 for x in p["parcels"]) and len(p["parcels"]) == max(
          1, level if level >= 2 else 1)
    elif name == "dosing":
      assert 40 <= p["weight"] <= 130 and 18 <= p["age"] <= 95 and (level or not p["kidney"])
      assert all(3 <= d["days"] <= 21 for d in p["drugs"]) and len(p["drugs"]) == max(1, level)
    else:
      lo, hi = (10000, 99999) if level < 2 else (3000, 59999)
      assert all(lo <= x <= hi for x in p["incomes"]) and 0 <= p["children"] <= 4
      assert (500 <= p["pension"] <= 9999) if level else p["pension"] == 0


def guesses_ref(name, p):
  """The one-rule guesses each docstring names, from the tests' own constants."""
  if name == "tariff":
    rate = {"A": 2, "B": 3, "C": 4, "D": 5, "E": 6}[p["zone"]]
    cap = {"A": 40, "B": 60, "C": 80, "D": 100, "E": 120}[p["zone"]]
    return {"zone cap": cap * len(p["parcels"]),
            "base charge only": sum(math.ceil(x["w10"] / 10) * rate for x in p["parcels"])}
  if name == "dosing":
    per_kg = {"alvetin": 10, "borazol": 5, "cyclamet": 20, "dexolan": 15, "etrafen": 8}
    most = {"alvetin": 1100, "borazol": 550, "cyclamet": 2200, "dexolan": 1650, "etrafen": 880}
    per_day = {"alvetin": 3, "borazol": 2, "cyclamet": 4, "dexolan": 2, "etrafen": 3}
    drugs = p["drugs"]
    return {
        "dose in mg": sum(p["weight"] * per_kg[d["drug"]] for d in drugs),
        "max dose in tablets": sum(math.floor(most[d["drug"]] / d["strength"]) for d in drugs),
        "tablets per dose": sum(max(1, math.floor(p["weight"] * per_kg[d["drug"]] / d["strength"]))
                                for d in drugs),
        "one tablet per dose": sum(per_day[d["drug"]] * d["days"] for d in drugs),
    }
  income = sum(p["incomes"])
  bands = 0
  for lo, hi, rate in [(5000, 20000, 0.1), (20000, 50000, 0.2), (50000, 10**9, 0.3)]:
    bands += math.floor(round(max(0, min(income, hi) - lo) * rate, 6))
  return {"taxable income": income - 2500, "brackets on income": bands}


@pytest.mark.parametrize("name", sorted(REFS))
def test_single_rule_answers_are_the_documented_guesses(name):
  domain = get_domain(name)
  for level in range(4):
    for ex in domain.generate(8, 60, level):
      assert domain.single_rule_answers(ex.meta["params"]) == guesses_ref(name, ex.meta["params"])
  # by hand: zone A, 27.2 kg -> cap 40, base 28 x 2 = 56; 60 kg alvetin 50 mg 7 days -> 600 mg,
  # 1100 / 50 = 22, 600 / 50 = 12, 3 x 7 = 21; income 31234 -> 28734; nothing deducted:
  # 1500 + 20% of 11234 = 2246.8 -> 2246, 3746
  hand = {"tariff": (TARIFF_CASES[1][0], {"zone cap": 40, "base charge only": 56}),
          "dosing": (DOSING_CASES[0][0], {"dose in mg": 600, "max dose in tablets": 22,
                                          "tablets per dose": 12, "one tablet per dose": 21}),
          "tax": (TAX_CASES[1][0], {"taxable income": 28734, "brackets on income": 3746})}
  params, guesses = hand[name]
  assert domain.single_rule_answers(params) == guesses


def _skeleton(text):
  """A route's steps with the wording dropped: (rule tag, sorted numbers) per line."""
  return [(tuple(re.findall(r"\[R\d+\]", line)), tuple(sorted(re.findall(r"\d+", line))))
          for line in text.splitlines()]


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_several_positive_routes_are_correct_and_distinct(name, level):
  domain = get_domain(name)
  examples = domain.generate(4, 25, level)
  reordered = 0
  for ex in examples:
    routes = domain.positive_routes(ex, 4)
    gold = str(REFS[name](ex.meta["params"]))
    assert len(routes) == 4 and len({r.text for r in routes}) == 4
    assert routes[0] == domain.solve(ex)
    for r in routes:
      assert r.positive and r.error is None and r.answer == gold == ex.answer
      assert extract_answer(r.text) == gold and r.text.endswith(f"\nAnswer: {gold}")
      assert set(re.findall(r"\[(R\d+)\]", r.text)) <= {rule.id for rule in domain.rules}
    reordered += any(_skeleton(r.text) != _skeleton(routes[0].text) for r in routes[1:])
  assert reordered >= 0.8 * len(examples)  # most get another step order, not only new wording
  assert domain.positive_routes(examples[0], 1) == [domain.solve(examples[0])]


def test_run_data_route_pools_hold_several_positives():
  from realm_jax.data.config import DataConfig
  from realm_jax.rl import corpus
  with pytest.raises(ValueError, match="positives_per_question=0 must be >= 1"):
    DataConfig(positives_per_question=0)
  for name in sorted(REFS):
    examples = get_domain(name).generate(0, 10, 1)
    one = corpus._with_routes(examples, f"domain:{name}", DataConfig(), 5)
    three = corpus._with_routes(examples, f"domain:{name}",
                                DataConfig(positives_per_question=3), 5)
    for a, b in zip(one, three):
      assert len(a.positive_routes) == 1 and len(b.positive_routes) == 3
      assert b.negative_routes == a.negative_routes  # the negatives do not move
      assert len({r.text for r in b.routes}) == len(b.routes)
      assert all(r.answer == b.answer == str(REFS[name](b.meta["params"]))
                 for r in b.positive_routes)
      assert all(r.answer != b.answer for r in b.negative_routes)
