"""Shipping tariffs: zone rates per kg, weight rounding, a capped base charge, surcharges,
insurance on the declared value, several parcels and a bulk discount.

Weights are stored in tenths of a kg (`w10`) so every value stays exact; declared
values are whole dollars. Every parcel is insured (R7), so every answer depends on
more than one rule; from level 1 express and fragile are drawn with probability 1/2 each.

Difficulty ladder (each level keeps everything below it):
  0  one parcel of 0.1-29.9 kg, declared value $10-$999: rate, rounding, base, the cap
     on the base (binds above 20 kg) and insurance (R1-R4, R7);
  1  adds express and fragile parcels (R5, R6);
  2  two parcels (R9: charge each alone, then add) of 0.1-59.9 kg: adds the heavy
     fee (R8, over 30 kg);
  3  three parcels: adds the bulk discount (R10, 3 or more parcels);
  d >= 4: d parcels.

Rule-free baseline (`shortcut`): weight rounded to the nearest kg (at least 1) times
the zone rate, summed over parcels, ignoring the cap, surcharges, insurance and
discount. One-rule guesses (`single_rule_answers`): "zone cap" (every parcel costs
the zone cap) and "base charge only" (billable kg x rate, summed).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from realm_jax.data.domains.base import Chain, Domain, Rule

RATES = {"A": 2, "B": 3, "C": 4, "D": 5, "E": 6}
CAPS = {"A": 40, "B": 60, "C": 80, "D": 100, "E": 120}
FRAGILE_FEE = 4
INSURANCE_STEP = 25  # $1 per started $25 of declared value
HEAVY_KG, HEAVY_FEE = 30, 15
BULK_PARCELS = 3  # orders of this many parcels or more get 10% off
MAX_W10 = {0: 299, 1: 299}  # other levels: 599
VALUES = (10, 999)  # declared value range, whole dollars
_FEES = tuple(itertools.permutations(("express", "fragile", "insurance", "heavy")))


def _kg(w10: int) -> str:
  return f"{w10 // 10}.{w10 % 10}"


def n_parcels(difficulty: int) -> int:
  return 1 if difficulty < 2 else difficulty


class Tariff(Domain):
  name = "tariff"
  rules = (
      Rule("R1", "Rate per kg by zone: A $2, B $3, C $4, D $5, E $6."),
      Rule("R2", "Billable weight is the weight rounded up to a whole kg."),
      Rule("R3", "Base charge = billable weight x zone rate."),
      Rule("R4", "The base charge of a parcel never exceeds the zone cap: A $40, B $60, C $80,"
                 " D $100, E $120."),
      Rule("R5", "Express adds 50% of the capped base charge, rounded down to a whole dollar."),
      Rule("R6", f"Fragile adds a flat ${FRAGILE_FEE}."),
      Rule("R7", f"Insurance: $1 for each started ${INSURANCE_STEP} of declared value."),
      Rule("R8", f"A parcel with billable weight over {HEAVY_KG} kg adds a ${HEAVY_FEE} heavy fee."),
      Rule("R9", "Several parcels: charge each parcel alone, then add the charges."),
      Rule("R10", f"An order of {BULK_PARCELS} or more parcels gets 10% off the total, the"
                  " discount rounded down to a whole dollar."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    max_w10 = MAX_W10.get(difficulty, 599)
    parcels = [
        {
            "w10": int(rng.integers(1, max_w10 + 1)),
            "express": bool(difficulty >= 1 and rng.random() < 0.5),
            "fragile": bool(difficulty >= 1 and rng.random() < 0.5),
            "value": int(rng.integers(VALUES[0], VALUES[1] + 1)),
        }
        for _ in range(n_parcels(difficulty))
    ]
    return {"zone": str(rng.choice(sorted(RATES))), "parcels": parcels}

  def question_space(self, difficulty: int) -> int:
    """How many distinct questions `sample_params` can draw at `difficulty`."""
    options = 4 if difficulty >= 1 else 1  # express x fragile
    per_parcel = MAX_W10.get(difficulty, 599) * options * (VALUES[1] - VALUES[0] + 1)
    return len(RATES) * per_parcel ** n_parcels(difficulty)

  def question(self, params: dict[str, Any]) -> str:
    def desc(p: dict[str, Any]) -> str:
      opts = "".join(f" {o}" for o in ("express", "fragile") if p[o])
      return f"{_kg(p['w10'])} kg{opts}, value ${p['value']}"

    parcels = params["parcels"]
    noun = "Parcel" if len(parcels) == 1 else f"{len(parcels)} parcels"
    what = "; ".join(desc(p) for p in parcels)
    return f"{noun} to zone {params['zone']}: {what}. What is the shipping charge in dollars?"

  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    zone, parcels = params["zone"], params["parcels"]
    multi = len(parcels) > 1
    target = int(rng.integers(len(parcels))) if error else -1
    variant = _pick(rng, error, parcels[target] if error else None, len(parcels))
    rate = RATES[_other(zone, rng) if variant == "wrong_rate" else zone]
    c.note("R1", f"zone {zone} rate = {rate}")
    charges = [
        self._parcel(p, zone, rate, variant if i == target else None, c, rng,
                     f"P{i + 1} " if multi else "")
        for i, p in enumerate(parcels)
    ]
    if not multi:
      return
    added = charges[:-1] if variant == "skip_parcel" else charges
    total = c.calc("R9", "total", " + ".join(map(str, added)), sum(added))
    if len(parcels) >= BULK_PARCELS and variant != "forget_discount":
      off = -(-total // 10) if variant == "round_discount" else total // 10
      how = "ceil" if variant == "round_discount" else "floor"
      c.calc("R10", "after discount", f"{total} - {how}({total} / 10)", total - off)

  def _parcel(self, p: dict[str, Any], zone: str, rate: int, err: str | None, c: Chain,
              rng: np.random.Generator | None, pre: str) -> int:
    """One parcel's steps; returns its charge."""
    w10, value = p["w10"], p["value"]
    order = _FEES[(c.variant // 2) % len(_FEES)]
    fees: dict[str, int] = {}

    def insurance() -> None:
      if err == "forget_insurance":
        return
      how = "floor" if err == "round_insurance" else "ceil"
      amount = value // INSURANCE_STEP if how == "floor" else -(-value // INSURANCE_STEP)
      fees["insurance"] = c.calc("R7", f"{pre}insurance", f"{how}({value} / {INSURANCE_STEP})",
                                 amount)

    if c.variant % 2:  # insurance does not depend on the weight: it may come first
      insurance()
    if err == "round_weight":
      billable = c.calc("R2", f"{pre}billable kg", f"floor({_kg(w10)})", w10 // 10)
    else:
      billable = c.calc("R2", f"{pre}billable kg", f"ceil({_kg(w10)})", -(-w10 // 10))
    base = c.calc("R3", f"{pre}base", f"{billable} x {rate}", billable * rate)
    if err != "forget_cap":
      cap = CAPS[_other(zone, rng) if err == "wrong_cap" else zone]
      base = c.calc("R4", f"{pre}capped base", f"min({base}, {cap})", min(base, cap))
    for fee in order:
      if fee == "express" and p["express"] and err != "forget_express":
        how = "ceil" if err == "round_express" else "floor"
        fees[fee] = c.calc("R5", f"{pre}express", f"{how}({base} / 2)",
                           -(-base // 2) if how == "ceil" else base // 2)
      elif fee == "fragile" and p["fragile"] and err != "forget_fragile":
        fees[fee] = c.calc("R6", f"{pre}fragile", "", FRAGILE_FEE)
      elif fee == "heavy" and billable > HEAVY_KG and err != "forget_heavy":
        fees[fee] = c.calc("R8", f"{pre}heavy", "", HEAVY_FEE)
      elif fee == "insurance" and not c.variant % 2:
        insurance()
    parts = [base] + [fees[f] for f in order if f in fees]
    added = parts[:-1] if err == "skip_surcharge" and len(parts) > 1 else parts
    if len(parts) == 1:
      return base
    return c.calc(None, f"{pre}charge", " + ".join(map(str, added)), sum(added))

  def shortcut(self, params: dict[str, Any]) -> int:
    total = 0
    for p in params["parcels"]:
      total += max(1, (p["w10"] + 5) // 10) * RATES[params["zone"]]
    return total

  def single_rule_answers(self, params: dict[str, Any]) -> dict[str, int]:
    parcels, zone = params["parcels"], params["zone"]
    return {
        "zone cap": CAPS[zone] * len(parcels),
        "base charge only": sum(math.ceil(p["w10"] / 10) * RATES[zone] for p in parcels),
    }


def _other(zone: str, rng: np.random.Generator | None) -> str:
  others = [z for z in sorted(RATES) if z != zone]
  return str(rng.choice(others)) if rng is not None else others[0]


def _pick(rng: np.random.Generator | None, error: str | None, parcel: dict[str, Any] | None,
          n: int) -> str | None:
  """The concrete mistake for a named error type on one parcel (of `n`)."""
  if error is None or rng is None:
    return None
  heavy = -(-parcel["w10"] // 10) > HEAVY_KG
  options = {
      "rule_misapplied": ["wrong_rate", "wrong_cap"],
      "rule_forgotten": (
          ["forget_cap", "forget_insurance"]
          + (["forget_express"] if parcel["express"] else [])
          + (["forget_fragile"] if parcel["fragile"] else [])
          + (["forget_heavy"] if heavy else [])
          + (["forget_discount"] if n >= BULK_PARCELS else [])
      ),
      "step_skipped": ["skip_surcharge"] + (["skip_parcel"] if n > 1 else []),
      "wrong_rounding": (
          ["round_weight", "round_insurance"]
          + (["round_express"] if parcel["express"] else [])
          + (["round_discount"] if n >= BULK_PARCELS else [])
      ),
  }
  if error not in options:
    raise ValueError(f"tariff cannot inject error {error!r}; it injects {sorted(options)}")
  return str(rng.choice(options[error]))
