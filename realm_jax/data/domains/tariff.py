"""Shipping tariffs: zone rates per kg, weight rounding, surcharges and a per-parcel cap.

Difficulty: 0 = one parcel up to 9.9 kg; 1 = one parcel up to 19.9 kg; d >= 2 =
d parcels (rule R7) up to 10*(d+1) kg each. Weights are stored in tenths of a
kg (`w10`) so every value stays exact.

Rule-free baseline (`shortcut`): weight rounded to the nearest kg times the zone
rate, summed over parcels, ignoring surcharges and caps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm_jax.data.domains.base import Chain, Domain, Rule

RATES = {"A": 2, "B": 3, "C": 5}
CAPS = {"A": 20, "B": 30, "C": 45}
FRAGILE_FEE = 4


def _kg(w10: int) -> str:
  return f"{w10 // 10}.{w10 % 10}"


class Tariff(Domain):
  name = "tariff"
  rules = (
      Rule("R1", "Rate per kg by zone: A $2, B $3, C $5."),
      Rule("R2", "Billable weight is the weight rounded up to a whole kg."),
      Rule("R3", "Base charge = billable weight x zone rate."),
      Rule("R4", "Express adds 50% of the base charge, rounded down to a whole dollar."),
      Rule("R5", "Fragile adds a flat $4."),
      Rule("R6", "One parcel never costs more than the zone cap: A $20, B $30, C $45."),
      Rule("R7", "Several parcels: charge each parcel alone, then add the charges."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    n_parcels = 1 if difficulty < 2 else difficulty
    max_w10 = 99 if difficulty == 0 else 10 * (10 * (difficulty + 1)) - 1
    parcels = [
        {
            "w10": int(rng.integers(5, max_w10 + 1)),
            "express": bool(rng.random() < 0.6),
            "fragile": bool(rng.random() < 0.6),
        }
        for _ in range(n_parcels)
    ]
    return {"zone": str(rng.choice(sorted(RATES))), "parcels": parcels}

  def question(self, params: dict[str, Any]) -> str:
    def desc(p: dict[str, Any]) -> str:
      opts = [o for o in ("express", "fragile") if p[o]]
      return _kg(p["w10"]) + " kg" + ("" if not opts else " " + " ".join(opts))

    parcels = params["parcels"]
    what = desc(parcels[0]) if len(parcels) == 1 else "; ".join(desc(p) for p in parcels)
    noun = "Parcel" if len(parcels) == 1 else f"{len(parcels)} parcels"
    return f"{noun} to zone {params['zone']}: {what}. What is the shipping charge in dollars?"

  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    zone, parcels = params["zone"], params["parcels"]
    multi = len(parcels) > 1
    target = int(rng.integers(len(parcels))) if error else -1
    variant = _pick(rng, error, parcels[target] if error else None)
    rate = RATES[_other(zone, rng) if variant == "wrong_rate" else zone]
    c.note("R1", f"zone {zone} rate = {rate}")
    charges = []
    for i, p in enumerate(parcels):
      err = variant if i == target else None
      pre = f"P{i + 1} " if multi else ""
      w10 = p["w10"]
      if err == "round_weight":
        billable = c.calc("R2", f"{pre}billable kg", f"floor({_kg(w10)})", w10 // 10)
      else:
        billable = c.calc("R2", f"{pre}billable kg", f"ceil({_kg(w10)})", -(-w10 // 10))
      base = c.calc("R3", f"{pre}base", f"{billable} x {rate}", billable * rate)
      parts = [base]
      if p["express"] and err != "forget_express":
        if err == "round_express":
          parts.append(c.calc("R4", f"{pre}express", f"ceil({base} / 2)", -(-base // 2)))
        else:
          parts.append(c.calc("R4", f"{pre}express", f"floor({base} / 2)", base // 2))
      if p["fragile"] and err != "forget_fragile":
        parts.append(c.calc("R5", f"{pre}fragile", "", FRAGILE_FEE))
      added = parts[:-1] if err == "skip_surcharge" and len(parts) > 1 else parts
      subtotal = (
          c.calc(None, f"{pre}subtotal", " + ".join(map(str, added)), sum(added))
          if len(parts) > 1
          else base
      )
      if err == "forget_cap":
        charges.append(subtotal)
        continue
      cap_zone = _other(zone, rng) if err == "wrong_cap" else zone
      charges.append(
          c.calc(
              "R6",
              f"{pre}capped",
              f"min({subtotal}, {CAPS[cap_zone]})",
              min(subtotal, CAPS[cap_zone]),
          )
      )
    if multi:
      added = charges[:-1] if error == "step_skipped" and variant == "skip_parcel" else charges
      c.calc("R7", "total", " + ".join(map(str, added)), sum(added))

  def shortcut(self, params: dict[str, Any]) -> int:
    total = 0
    for p in params["parcels"]:
      total += max(1, (p["w10"] + 5) // 10) * RATES[params["zone"]]
    return total


def _other(zone: str, rng: np.random.Generator | None) -> str:
  others = [z for z in sorted(RATES) if z != zone]
  return str(rng.choice(others)) if rng is not None else others[0]


def _pick(
    rng: np.random.Generator | None, error: str | None, parcel: dict[str, Any] | None
) -> str | None:
  """The concrete mistake for a named error type on one parcel."""
  if error is None or rng is None:
    return None
  options = {
      "rule_misapplied": ["wrong_rate", "wrong_cap"],
      "rule_forgotten": (
          ["forget_cap"]
          + (["forget_express"] if parcel["express"] else [])
          + (["forget_fragile"] if parcel["fragile"] else [])
      ),
      "step_skipped": ["skip_surcharge", "skip_parcel"],
      "wrong_rounding": ["round_weight"] + (["round_express"] if parcel["express"] else []),
  }
  if error not in options:
    raise ValueError(f"tariff cannot inject error {error!r}; it injects {sorted(options)}")
  return str(rng.choice(options[error]))
