"""Parking fees: a user's own vertical domain, loaded from this file (see docs/extending.md).

    realm-jax train demo --workdir runs/mine data.source=domain:examples/my_domain.py:Parking

Difficulty: 0 = one stay up to 4 h; 1 = one stay up to 12 h; d >= 2 = d daily stays (rule R6) up
to 12 h each. Stays are in whole minutes. Rule-free baseline (`shortcut`): the stay rounded to the
nearest hour (at least 1) times the zone rate, summed over days, ignoring the cap and the surcharge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm_jax.data.domains import Chain, Domain, Rule

RATES = {"A": 4, "B": 3, "C": 2}
CAPS = {"A": 30, "B": 20, "C": 12}
# The concrete mistakes behind each named error (arithmetic_slip comes from the base class).
MISTAKES = {"rule_misapplied": ("wrong_rate", "wrong_cap"),
            "rule_forgotten": ("forget_cap", "forget_weekend"),
            "step_skipped": ("skip_surcharge", "skip_day"),
            "wrong_rounding": ("floor_hours", "ceil_weekend")}


class Parking(Domain):
  name = "parking"
  rules = (
      Rule("R1", "Hourly rate by zone: A $4, B $3, C $2."),
      Rule("R2", "Billable hours are the stay rounded up to a whole hour."),
      Rule("R3", "Day fee = billable hours x zone rate."),
      Rule("R4", "A day never costs more than the zone cap: A $30, B $20, C $12."),
      Rule("R5", "A weekend day adds 25% of its capped fee, rounded down to a whole dollar."),
      Rule("R6", "Several days: charge each day alone, then add the charges."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    longest = 240 if difficulty == 0 else 720
    days = [{"minutes": int(rng.integers(10, longest + 1)), "weekend": bool(rng.random() < 0.5)}
            for _ in range(difficulty if difficulty >= 2 else 1)]
    return {"zone": str(rng.choice(sorted(RATES))), "days": days}

  def question(self, params: dict[str, Any]) -> str:
    stays = "; ".join(f"{d['minutes']} min" + (" on a weekend day" if d["weekend"] else "")
                      for d in params["days"])
    return f"Parking in zone {params['zone']}: {stays}. What is the parking fee in dollars?"

  def chain(self, params: dict[str, Any], error: str | None, c: Chain,
            rng: np.random.Generator | None) -> None:
    zone, days = params["zone"], params["days"]
    bad = str(rng.choice(MISTAKES[error])) if error else None
    at = int(rng.integers(len(days))) if error else -1
    other = str(rng.choice([z for z in sorted(RATES) if z != zone])) if error else zone
    rate = RATES[other if bad == "wrong_rate" else zone]
    c.note("R1", f"zone {zone} rate = {rate}")
    fees = []
    for i, day in enumerate(days):
      e, m = (bad if i == at else None), day["minutes"]
      pre = f"D{i + 1} " if len(days) > 1 else ""
      down = e == "floor_hours"
      hours = c.calc("R2", f"{pre}billable h", f"{'floor' if down else 'ceil'}({m} / 60)",
                     m // 60 if down else -(-m // 60))
      fee = c.calc("R3", f"{pre}fee", f"{hours} x {rate}", hours * rate)
      if e != "forget_cap":
        cap = CAPS[other if e == "wrong_cap" else zone]
        fee = c.calc("R4", f"{pre}capped", f"min({fee}, {cap})", min(fee, cap))
      if day["weekend"] and e != "forget_weekend":
        up = e == "ceil_weekend"
        extra = c.calc("R5", f"{pre}weekend", f"{'ceil' if up else 'floor'}({fee} / 4)",
                       -(-fee // 4) if up else fee // 4)
        kept = [fee] if e == "skip_surcharge" else [fee, extra]
        fee = c.calc(None, f"{pre}day total", " + ".join(map(str, kept)), sum(kept))
      fees.append(fee)
    if len(days) > 1:
      kept = fees[:-1] if bad == "skip_day" else fees
      c.calc("R6", "total", " + ".join(map(str, kept)), sum(kept))

  def shortcut(self, params: dict[str, Any]) -> int:
    return sum(max(1, (d["minutes"] + 30) // 60) * RATES[params["zone"]] for d in params["days"])
