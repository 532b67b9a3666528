"""Progressive income tax with a deduction, brackets, rounding and a child credit.

Amounts are in whole credits. Difficulty: 0 = one income, a multiple of 10,
up to 5000 (every band tax is whole); 1 = one income up to 9000, any integer
(rule R3 rounding matters); d >= 2 = d income sources (rule R6) that grow with d.

Rule-free baseline (`shortcut`): the whole income taxed at the rate of the
bracket it falls in, with no deduction and no credit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm_jax.data.domains.base import Chain, Domain, Rule

DEDUCTION = 400
CHILD_CREDIT = 30
# (lower edge, upper edge or None, rate in percent); the first band is tax free.
BANDS = ((0, 1000, 0), (1000, 3000, 10), (3000, 6000, 20), (6000, None, 30))
SOURCES = ("salary", "bonus", "rent", "interest", "royalties", "pension")


def _rate_of(amount: int) -> int:
  return next(rate for lo, hi, rate in BANDS if hi is None or amount <= hi)


class Tax(Domain):
  name = "tax"
  rules = (
      Rule("R1", f"Taxable income = income - {DEDUCTION}."),
      Rule(
          "R2",
          "Brackets on taxable income: up to 1000 at 0%, 1000-3000 at 10%, 3000-6000 at 20%,"
          " above 6000 at 30%.",
      ),
      Rule("R3", "The tax of each bracket is rounded down to a whole credit."),
      Rule("R4", f"Each child gives a credit of {CHILD_CREDIT} off the tax."),
      Rule("R5", "Tax is never below 0."),
      Rule("R6", "Income = the sum of all income sources."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    if difficulty == 0:
      incomes = [10 * int(rng.integers(150, 501))]
    elif difficulty == 1:
      incomes = [int(rng.integers(1500, 9001))]
    else:
      incomes = [int(rng.integers(300, 1500 * difficulty + 1)) for _ in range(difficulty)]
      incomes[0] += 1500
    return {"incomes": incomes, "children": int(rng.integers(0, 3))}

  def question(self, params: dict[str, Any]) -> str:
    incomes, kids = params["incomes"], params["children"]
    what = (
        ", ".join(f"{name} {x}" for name, x in zip(SOURCES, incomes))
        if len(incomes) > 1
        else f"income {incomes[0]}"
    )
    return f"Taxpayer with {what}, {kids} {'child' if kids == 1 else 'children'}. What is the tax?"

  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    incomes, kids = params["incomes"], params["children"]
    v = _pick(rng, error, params)
    if len(incomes) > 1:
      income = c.calc("R6", "income", " + ".join(map(str, incomes)), sum(incomes))
    else:
      income = incomes[0]
    if v == "forget_deduction":
      taxable = income
    else:
      taxable = c.calc("R1", "taxable", f"{income} - {DEDUCTION}", max(income - DEDUCTION, 0))
    if v == "skip_deduction":
      taxable = income
    if v == "flat_rate":
      rate = _rate_of(taxable)
      parts = [c.calc("R2", f"{rate}% on all", f"{taxable} x {rate}%", taxable * rate // 100)]
    else:
      parts = []
      for lo, hi, rate in BANDS:
        if rate == 0 or taxable <= lo:
          continue
        top = taxable if hi is None else min(taxable, hi)
        amount = top if v == "band_edges" else top - lo
        value = -(-amount * rate // 100) if v == "round_up" else amount * rate // 100
        parts.append(c.calc("R2", f"{rate}% band", f"{amount} x {rate}%", value))
      if not parts:  # everything falls in the tax-free band
        parts.append(c.calc("R2", "0% band", f"{taxable} x 0%", 0))
    added = parts[:-1] if v == "skip_band" else parts
    tax = (
        c.calc(None, "tax", " + ".join(map(str, added)), sum(added)) if len(parts) > 1 else parts[0]
    )
    if kids and v != "forget_credit":
      credit = c.calc("R4", "credit", f"{kids} x {CHILD_CREDIT}", kids * CHILD_CREDIT)
      c.calc("R5", "tax", f"max({tax} - {credit}, 0)", max(tax - credit, 0))

  def shortcut(self, params: dict[str, Any]) -> int:
    income = sum(params["incomes"])
    return income * _rate_of(income) // 100


def _pick(rng: np.random.Generator | None, error: str | None, params: dict[str, Any]) -> str | None:
  """The concrete mistake for a named error type."""
  if error is None or rng is None:
    return None
  kids = params["children"] > 0
  options = {
      "rule_misapplied": ["flat_rate", "band_edges"],
      "rule_forgotten": ["forget_deduction"] + (["forget_credit"] if kids else []),
      "step_skipped": ["skip_deduction", "skip_band"],
      "wrong_rounding": ["round_up"],
  }
  if error not in options:
    raise ValueError(f"tax cannot inject error {error!r}; it injects {sorted(options)}")
  return str(rng.choice(options[error]))
