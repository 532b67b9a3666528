"""Medication dosing by body weight with an age rule, a max dose and whole tablets.

The drugs are fictional; the numbers exist only to make a rule-bound task.
Difficulty: 0 = tablets per dose; 1 = tablets per day (rule R6); d >= 2 =
tablets for a course of days (rule R7), with heavier patients as d grows.

Rule-free baseline (`shortcut`): weight x mg/kg / tablet strength rounded to
the nearest whole tablet, ignoring the age rule, the max dose and the number of
doses per day and days (it always answers tablets per dose).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm_jax.data.domains.base import Chain, Domain, Rule

MG_PER_KG = {"alvetin": 10, "borazol": 5, "cyclamet": 20}
MAX_DOSE = {"alvetin": 400, "borazol": 250, "cyclamet": 1000}
PER_DAY = {"alvetin": 3, "borazol": 2, "cyclamet": 4}
STRENGTHS = {"alvetin": (50, 100, 200), "borazol": (25, 50, 100), "cyclamet": (100, 250, 500)}
ELDERLY_AGE = 65
_ASK = {"dose": "How many tablets per dose?", "day": "How many tablets per day?"}


class Dosing(Domain):
  name = "dosing"
  rules = (
      Rule("R1", "Dose per kg: alvetin 10 mg, borazol 5 mg, cyclamet 20 mg."),
      Rule("R2", "Dose = body weight x dose per kg."),
      Rule(
          "R3",
          f"Patients aged {ELDERLY_AGE} or over get half the dose, rounded down to a whole mg.",
      ),
      Rule("R4", "A dose never exceeds the max: alvetin 400 mg, borazol 250 mg, cyclamet 1000 mg."),
      Rule("R5", "Tablets per dose = dose / tablet strength, rounded down, at least 1."),
      Rule("R6", "Doses per day: alvetin 3, borazol 2, cyclamet 4."),
      Rule("R7", "Course tablets = tablets per day x days."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    drug = str(rng.choice(sorted(MG_PER_KG)))
    elderly = rng.random() < 0.4
    return {
        "drug": drug,
        "weight": int(rng.integers(10, 91 + 30 * max(0, difficulty - 1))),
        "age": int(rng.integers(ELDERLY_AGE, 95) if elderly else rng.integers(4, ELDERLY_AGE)),
        "strength": int(rng.choice(STRENGTHS[drug])),
        "ask": ("dose", "day", "course")[min(difficulty, 2)],
        "days": int(rng.integers(3, 4 + 2 * difficulty)),
    }

  def question(self, params: dict[str, Any]) -> str:
    p = params
    ask = _ASK.get(p["ask"], f"How many tablets for a {p['days']}-day course?")
    return (
        f"{p['drug']}, {p['strength']} mg tablets. Patient {p['weight']} kg, age {p['age']}. {ask}"
    )

  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    p = params
    drug, age, strength = p["drug"], p["age"], p["strength"]
    elderly = age >= ELDERLY_AGE
    v = _pick(rng, error, p)
    rate = MG_PER_KG[_other(drug, rng) if v == "wrong_rate" else drug]
    c.note("R1", f"{drug} = {rate} mg/kg")
    dose = c.calc("R2", "dose", f"{p['weight']} x {rate}", p["weight"] * rate)
    before = dose
    if (elderly and v != "forget_age") or v == "age_always":
      if v == "round_up_half":
        dose = c.calc("R3", f"age {age}: half", f"ceil({dose} / 2)", -(-dose // 2))
      else:
        dose = c.calc("R3", f"age {age}: half", f"floor({dose} / 2)", dose // 2)
    else:
      c.note("R3", f"age {age} < {ELDERLY_AGE}: no change")
    if v == "skip_half":
      dose = before
    before = dose
    if v != "forget_cap":
      cap = MAX_DOSE[_other(drug, rng) if v == "wrong_cap" else drug]
      dose = c.calc("R4", "capped", f"min({dose}, {cap})", min(dose, cap))
    if v == "skip_cap":
      dose = before
    if v == "round_up_tablets":
      tablets = c.calc(
          "R5", "tablets", f"max(1, ceil({dose} / {strength}))", max(1, -(-dose // strength))
      )
    elif v == "round_nearest_tablets":
      tablets = c.calc(
          "R5",
          "tablets",
          f"max(1, round({dose} / {strength}))",
          max(1, (2 * dose + strength) // (2 * strength)),
      )
    else:
      tablets = c.calc(
          "R5", "tablets", f"max(1, floor({dose} / {strength}))", max(1, dose // strength)
      )
    if p["ask"] == "dose":
      return
    if v != "forget_per_day":
      per_day = PER_DAY[_other(drug, rng) if v == "wrong_per_day" else drug]
      tablets = c.calc("R6", "per day", f"{tablets} x {per_day}", tablets * per_day)
    if p["ask"] == "course":
      c.calc("R7", "course", f"{tablets} x {p['days']}", tablets * p["days"])

  def shortcut(self, params: dict[str, Any]) -> int:
    p = params
    dose = p["weight"] * MG_PER_KG[p["drug"]]
    return max(1, (2 * dose + p["strength"]) // (2 * p["strength"]))


def _other(drug: str, rng: np.random.Generator | None) -> str:
  others = [d for d in sorted(MG_PER_KG) if d != drug]
  return str(rng.choice(others)) if rng is not None else others[0]


def _pick(rng: np.random.Generator | None, error: str | None, p: dict[str, Any]) -> str | None:
  """The concrete mistake for a named error type."""
  if error is None or rng is None:
    return None
  elderly = p["age"] >= ELDERLY_AGE
  daily = p["ask"] != "dose"
  options = {
      "rule_misapplied": (
          ["wrong_rate", "wrong_cap"]
          + (["wrong_per_day"] if daily else [])
          + ([] if elderly else ["age_always"])
      ),
      "rule_forgotten": (
          ["forget_cap"]
          + (["forget_age"] if elderly else [])
          + (["forget_per_day"] if daily else [])
      ),
      "step_skipped": ["skip_cap"] + (["skip_half"] if elderly else []),
      "wrong_rounding": (
          ["round_up_tablets", "round_nearest_tablets"] + (["round_up_half"] if elderly else [])
      ),
  }
  if error not in options:
    raise ValueError(f"dosing cannot inject error {error!r}; it injects {sorted(options)}")
  return str(rng.choice(options[error]))
