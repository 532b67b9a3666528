"""Progressive income tax with a deduction, brackets, rounding, a child credit, pension
contributions and several income sources.

Amounts are in whole credits.

Difficulty ladder (each level keeps everything below it):
  0  one income of 10000-99999 and 0-4 children: the deduction, the brackets, rounding
     each bracket down, the child credit, no negative tax (R1-R5);
  1  adds pension contributions of 500-9999, deducted up to 10% of income (R7);
  2  two income sources of 3000-59999 each (R6: income is their sum);
  3  three income sources;
  d >= 4: d sources (at most the six named ones).

Rule-free baseline (`shortcut`): the whole income taxed at the rate of the bracket
it falls in, with no deduction, pension or credit. One-rule guesses
(`single_rule_answers`): "taxable income" (income - the deduction) and "brackets on
income" (the bracket tax of the whole income, nothing deducted or credited).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from realm_jax.data.domains.base import Chain, Domain, Rule

DEDUCTION = 2500
CHILD_CREDIT = 100
PENSION_SHARE = 10  # percent of income that pension contributions may reduce it by
# (lower edge, upper edge or None, rate in percent); the first band is tax free.
BANDS = ((0, 5000, 0), (5000, 20000, 10), (20000, 50000, 20), (50000, None, 30))
SOURCES = ("salary", "bonus", "rent", "interest", "royalties", "pension income")
INCOME, SOURCE, PENSION, CHILDREN = (10000, 99999), (3000, 59999), (500, 9999), (0, 4)


def _rate_of(amount: int) -> int:
  return next(rate for lo, hi, rate in BANDS if hi is None or amount <= hi)


def _bracket_tax(amount: int) -> int:
  return sum((min(amount, hi or amount) - lo) * rate // 100 for lo, hi, rate in BANDS
             if amount > lo)


def n_sources(difficulty: int) -> int:
  return min(max(1, difficulty), len(SOURCES))


def _span(r: tuple[int, int]) -> int:
  return r[1] - r[0] + 1


class Tax(Domain):
  name = "tax"
  rules = (
      Rule("R1", f"Taxable income = income - {DEDUCTION}."),
      Rule(
          "R2",
          "Brackets on taxable income: up to 5000 at 0%, 5000-20000 at 10%, 20000-50000 at 20%,"
          " above 50000 at 30%.",
      ),
      Rule("R3", "The tax of each bracket is rounded down to a whole credit."),
      Rule("R4", f"Each child gives a credit of {CHILD_CREDIT} off the tax."),
      Rule("R5", "Tax is never below 0."),
      Rule("R6", "Income = the sum of all income sources."),
      Rule("R7", f"Pension contributions are deducted from taxable income too, at most"
                 f" {PENSION_SHARE}% of income (rounded down)."),
  )

  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    if difficulty == 0 or difficulty == 1:
      incomes = [int(rng.integers(INCOME[0], INCOME[1] + 1))]
    else:
      incomes = [int(rng.integers(SOURCE[0], SOURCE[1] + 1)) for _ in range(n_sources(difficulty))]
    pension = int(rng.integers(PENSION[0], PENSION[1] + 1)) if difficulty >= 1 else 0
    return {"incomes": incomes, "pension": pension,
            "children": int(rng.integers(CHILDREN[0], CHILDREN[1] + 1))}

  def question_space(self, difficulty: int) -> int:
    """How many distinct questions `sample_params` can draw at `difficulty`."""
    incomes = _span(INCOME) if difficulty < 2 else _span(SOURCE) ** n_sources(difficulty)
    return incomes * (_span(PENSION) if difficulty >= 1 else 1) * _span(CHILDREN)

  def question(self, params: dict[str, Any]) -> str:
    incomes, kids = params["incomes"], params["children"]
    what = (
        ", ".join(f"{name} {x}" for name, x in zip(SOURCES, incomes))
        if len(incomes) > 1
        else f"income {incomes[0]}"
    )
    if params.get("pension"):
      what += f", pension contributions {params['pension']}"
    return f"Taxpayer with {what}, {kids} {'child' if kids == 1 else 'children'}. What is the tax?"

  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    incomes, kids, pension = params["incomes"], params["children"], params.get("pension", 0)
    v = _pick(rng, error, params)
    if len(incomes) > 1:
      shown = incomes[::-1] if c.variant // 4 % 2 else incomes  # any order adds up the same
      income = c.calc("R6", "income", " + ".join(map(str, shown)), sum(incomes))
    else:
      income = incomes[0]
    credit = None
    if kids and v != "forget_credit" and c.variant // 2 % 2:  # the credit may come first
      credit = c.calc("R4", "credit", f"{kids} x {CHILD_CREDIT}", kids * CHILD_CREDIT)
    allowed = 0
    if pension and v != "forget_pension":
      if v == "pension_uncapped":
        allowed = c.calc("R7", "pension allowed", "", pension)
      else:
        limit = -(-income // PENSION_SHARE) if v == "round_up" else income // PENSION_SHARE
        how = "ceil" if v == "round_up" else "floor"
        allowed = c.calc("R7", "pension allowed", f"min({pension}, {how}({income} / 10))",
                         min(pension, limit))
    if v == "forget_deduction":
      taxable = income - allowed
    else:
      expr = f"{income} - {DEDUCTION}" + (f" - {allowed}" if allowed else "")
      taxable = c.calc("R1", "taxable", expr, max(income - DEDUCTION - allowed, 0))
    if v == "skip_deduction":
      taxable = income
    if v == "flat_rate":
      rate = _rate_of(taxable)
      parts = [c.calc("R2", f"{rate}% on all", f"{taxable} x {rate}%", taxable * rate // 100)]
    else:
      bands = [b for b in BANDS if b[2] and taxable > b[0]]
      parts = []
      for lo, hi, rate in (bands[::-1] if c.variant % 2 else bands):
        top = taxable if hi is None else min(taxable, hi)
        amount = top if v == "band_edges" else top - lo
        value = -(-amount * rate // 100) if v == "round_up" else amount * rate // 100
        parts.append(c.calc("R2", f"{rate}% of {amount}", "", value))
      if not parts:  # everything falls in the tax-free band
        parts.append(c.calc("R2", f"0% of {taxable}", "", 0))
    added = parts[:-1] if v == "skip_band" else parts
    with_credit = kids and v != "forget_credit"
    if len(parts) > 1 and not with_credit:
      c.calc(None, "tax", " + ".join(map(str, added)), sum(added))
    if with_credit:  # the bands add up inside the credit step
      if credit is None:
        credit = c.calc("R4", "credit", f"{kids} x {CHILD_CREDIT}", kids * CHILD_CREDIT)
      bands = " + ".join(map(str, added))
      c.calc("R5", "tax", f"max({bands} - {credit}, 0)", max(sum(added) - credit, 0))

  def shortcut(self, params: dict[str, Any]) -> int:
    income = sum(params["incomes"])
    return income * _rate_of(income) // 100

  def single_rule_answers(self, params: dict[str, Any]) -> dict[str, int]:
    income = sum(params["incomes"])
    return {"taxable income": max(income - DEDUCTION, 0),
            "brackets on income": _bracket_tax(income)}


def _pick(rng: np.random.Generator | None, error: str | None, params: dict[str, Any]) -> str | None:
  """The concrete mistake for a named error type."""
  if error is None or rng is None:
    return None
  kids, pension = params["children"] > 0, params.get("pension", 0) > 0
  options = {
      "rule_misapplied": ["flat_rate", "band_edges"] + (["pension_uncapped"] if pension else []),
      "rule_forgotten": (["forget_deduction"] + (["forget_credit"] if kids else [])
                         + (["forget_pension"] if pension else [])),
      "step_skipped": ["skip_deduction", "skip_band"],
      "wrong_rounding": ["round_up"],
  }
  if error not in options:
    raise ValueError(f"tax cannot inject error {error!r}; it injects {sorted(options)}")
  return str(rng.choice(options[error]))
