"""Medication dosing by body weight with an age rule, a max dose, whole tablets, doses per day,
kidney impairment and several drugs; every question asks for the tablets of a whole course.

The drugs are fictional; the numbers exist only to make a rule-bound task.

Difficulty ladder (each level keeps everything below it):
  0  one drug, adult patient 40-130 kg, age 18-95, a 3-21 day course: dose per kg, the age
     rule (65 or over: half), the max dose, whole tablets, doses per day, course (R1-R7);
  1  adds kidney impairment (R8: one dose fewer per day; drawn for half the patients);
  2  two drugs for the same patient (R9: count each drug alone, then add);
  3  three drugs;
  d >= 4: d drugs (at most the five there are).

Rule-free baseline (`shortcut`): weight x mg/kg / tablet strength rounded to the
nearest whole tablet, summed over drugs, ignoring the age rule, the max dose, doses
per day and days (it answers tablets per dose). One-rule guesses
(`single_rule_answers`): "dose in mg" (weight x mg/kg), "max dose in tablets" (max
dose / strength), "tablets per dose" (weight dose / strength, rounded down) and "one
tablet per dose" (doses per day x days), each summed over drugs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm_jax.data.domains.base import Chain, Domain, Rule

MG_PER_KG = {"alvetin": 10, "borazol": 5, "cyclamet": 20, "dexolan": 15, "etrafen": 8}
MAX_DOSE = {"alvetin": 1100, "borazol": 550, "cyclamet": 2200, "dexolan": 1650, "etrafen": 880}
PER_DAY = {"alvetin": 3, "borazol": 2, "cyclamet": 4, "dexolan": 2, "etrafen": 3}
# The strongest tablet is 10 x the per-kg rate, so the lightest elderly patient (40 kg, half dose
# = 20 x rate) still takes 2 tablets: "at least 1" (R5) guards only mistakes.
STRENGTHS = {"alvetin": (25, 50, 100), "borazol": (10, 25, 50), "cyclamet": (50, 100, 200),
             "dexolan": (25, 75, 150), "etrafen": (20, 40, 80)}
ELDERLY_AGE = 65
WEIGHTS, AGES, DAYS = (40, 130), (18, 95), (3, 21)  # inclusive ranges


def n_drugs(difficulty: int) -> int:
  return min(max(1, difficulty), len(MG_PER_KG))


def _span(r: tuple[int, int]) -> int:
  return r[1] - r[0] + 1


def _listing(pairs: list[tuple[str, Any]]) -> str:
  return ", ".join(f"{d} {x}" for d, x in pairs)


class Dosing(Domain):
  name = "dosing"
  rules = (
      Rule("R1", "Dose per kg: " + _listing([(d, f"{x} mg") for d, x in MG_PER_KG.items()]) + "."),
      Rule("R2", "Dose = body weight x dose per kg."),
      Rule(
          "R3",
          f"Patients aged {ELDERLY_AGE} or over get half the dose, rounded down to a whole mg.",
      ),
      Rule("R4", "A dose never exceeds the max: "
                 + _listing([(d, f"{x} mg") for d, x in MAX_DOSE.items()]) + "."),
      Rule("R5", "Tablets per dose = dose / tablet strength, rounded down, at least 1."),
      Rule("R6", "Doses per day: " + _listing(list(PER_DAY.items())) + "."),
      Rule("R7", "Course tablets = tablets per dose x doses per day (R6) x days."),
      Rule("R8", "Kidney impairment: one dose fewer per day."),
      Rule("R9", "Several drugs: count each drug's course alone, then add."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    names = sorted(MG_PER_KG)
    drugs = [str(names[i]) for i in rng.permutation(len(names))[:n_drugs(difficulty)]]
    return {
        "weight": int(rng.integers(WEIGHTS[0], WEIGHTS[1] + 1)),
        "age": int(rng.integers(AGES[0], AGES[1] + 1)),
        "kidney": bool(difficulty >= 1 and rng.random() < 0.5),
        "drugs": [{"drug": d, "strength": int(rng.choice(STRENGTHS[d])),
                   "days": int(rng.integers(DAYS[0], DAYS[1] + 1))} for d in drugs],
    }

  def question_space(self, difficulty: int) -> int:
    """How many distinct questions `sample_params` can draw at `difficulty`."""
    k, n = n_drugs(difficulty), len(MG_PER_KG)
    ordered = 1
    for i in range(k):  # ordered choices of k distinct drugs
      ordered *= n - i
    per_drug = 3 * _span(DAYS)  # three strengths per drug
    return (_span(WEIGHTS) * _span(AGES) * (2 if difficulty >= 1 else 1)
            * ordered * per_drug ** k)

  def question(self, params: dict[str, Any]) -> str:
    p = params
    who = f"Patient {p['weight']} kg, age {p['age']}" + (", kidney impairment" if p["kidney"] else "")
    what = "; ".join(f"{d['drug']} {d['strength']} mg tablets for {d['days']} days"
                     for d in p["drugs"])
    ask = "How many tablets for the whole course?" if len(p["drugs"]) == 1 else (
        "How many tablets in total?")
    return f"{who}: {what}. {ask}"

  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    p, drugs = params, params["drugs"]
    multi = len(drugs) > 1
    target = int(rng.integers(len(drugs))) if error else -1
    v = _pick(rng, error, p, len(drugs))
    order = list(range(len(drugs)))
    if multi and c.variant // 2 % 2:  # the drugs may be counted in any order
      order = order[::-1]
    courses = [self._drug(p, drugs[i], v if i == target else None, c, rng, multi) for i in order]
    if multi:
      added = courses[:-1] if v == "skip_drug" else courses
      c.calc("R9", "total", " + ".join(map(str, added)), sum(added))

  def _drug(self, p: dict[str, Any], d: dict[str, Any], v: str | None, c: Chain,
            rng: np.random.Generator | None, multi: bool) -> int:
    """One drug's course steps; returns its course tablets."""
    drug, age, strength, days = d["drug"], p["age"], d["strength"], d["days"]
    pre = f"{drug} " if multi else ""
    rate = MG_PER_KG[_other(drug, rng) if v == "wrong_rate" else drug]
    c.note("R1", f"{drug} = {rate} mg/kg")
    dose = c.calc("R2", f"{pre}dose", f"{p['weight']} x {rate}", p["weight"] * rate)
    before = dose
    if (age >= ELDERLY_AGE and v != "forget_age") or v == "age_always":
      if v == "round_up_half":
        dose = c.calc("R3", f"age {age}: half", f"ceil({dose} / 2)", -(-dose // 2))
      else:
        dose = c.calc("R3", f"age {age}: half", f"floor({dose} / 2)", dose // 2)
    if v == "skip_half":
      dose = before
    before = dose
    if v != "forget_cap":
      cap = MAX_DOSE[_other(drug, rng) if v == "wrong_cap" else drug]
      dose = c.calc("R4", f"{pre}capped", f"min({dose}, {cap})", min(dose, cap))
    if v == "skip_cap":
      dose = before
    if v == "round_up_tablets":
      how, tablets = "ceil", -(-dose // strength)
    elif v == "round_nearest_tablets":
      how, tablets = "round", (2 * dose + strength) // (2 * strength)
    else:
      how, tablets = "floor", dose // strength
    expr = f"{how}({dose} / {strength})"  # "at least 1" shows only where it applies
    tablets = c.calc("R5", f"{pre}tablets", expr if tablets >= 1 else f"max(1, {expr})",
                     max(1, tablets))
    per_day = PER_DAY[_other(drug, rng) if v == "wrong_per_day" else drug]
    if p["kidney"] and v != "forget_kidney":
      per_day = c.calc("R8", f"{pre}doses per day", f"{per_day} - 1", per_day - 1)
    if v == "forget_per_day":
      return c.calc("R7", f"{pre}course", f"{tablets} x {days}", tablets * days)
    if c.variant % 2:  # doses in the course first, then tablets
      doses = c.calc("R6", f"{pre}doses", f"{per_day} x {days}", per_day * days)
      return c.calc("R7", f"{pre}course", f"{tablets} x {doses}", tablets * doses)
    return c.calc("R7", f"{pre}course", f"{tablets} x {per_day} x {days}", tablets * per_day * days)

  def shortcut(self, params: dict[str, Any]) -> int:
    total = 0
    for d in params["drugs"]:
      dose, s = params["weight"] * MG_PER_KG[d["drug"]], d["strength"]
      total += max(1, (2 * dose + s) // (2 * s))
    return total

  def single_rule_answers(self, params: dict[str, Any]) -> dict[str, int]:
    w, drugs = params["weight"], params["drugs"]
    return {
        "dose in mg": sum(w * MG_PER_KG[d["drug"]] for d in drugs),
        "max dose in tablets": sum(MAX_DOSE[d["drug"]] // d["strength"] for d in drugs),
        "tablets per dose": sum(max(1, w * MG_PER_KG[d["drug"]] // d["strength"]) for d in drugs),
        "one tablet per dose": sum(PER_DAY[d["drug"]] * d["days"] for d in drugs),
    }


def _other(drug: str, rng: np.random.Generator | None) -> str:
  others = [d for d in sorted(MG_PER_KG) if d != drug]
  return str(rng.choice(others)) if rng is not None else others[0]


def _pick(rng: np.random.Generator | None, error: str | None, p: dict[str, Any],
          n: int) -> str | None:
  """The concrete mistake for a named error type."""
  if error is None or rng is None:
    return None
  elderly = p["age"] >= ELDERLY_AGE
  options = {
      "rule_misapplied": (
          ["wrong_rate", "wrong_cap", "wrong_per_day"] + ([] if elderly else ["age_always"])
      ),
      "rule_forgotten": (
          ["forget_cap", "forget_per_day"]
          + (["forget_age"] if elderly else [])
          + (["forget_kidney"] if p["kidney"] else [])
      ),
      "step_skipped": ["skip_cap"] + (["skip_half"] if elderly else [])
                      + (["skip_drug"] if n > 1 else []),
      "wrong_rounding": (
          ["round_up_tablets", "round_nearest_tablets"] + (["round_up_half"] if elderly else [])
      ),
  }
  if error not in options:
    raise ValueError(f"dosing cannot inject error {error!r}; it injects {sorted(options)}")
  return str(rng.choice(options[error]))
