"""The shape shared by every built-in vertical domain, and its route machinery.

A domain is a small rule book plus a programmatic solver. Each question is a
dict of JSON values (`Example.meta["params"]`); the solver writes its chain of
thought through a `Chain`, one line per step, citing rule ids as "[R2]"; the
answer is the value of the chain's last calculation (always an integer).

Gold route text: the steps, then a final line "Answer: X". `Example.cot` holds
the steps only, `Example.answer` the plain number X.

Negative routes are the same solver run with one named error injected:
  rule_misapplied  a rule is cited but used with the wrong parameter
                   (another zone's rate, another drug's cap, one tax rate for
                   the whole income);
  rule_forgotten   a rule that applies is never used (a surcharge, a cap, a
                   deduction);
  step_skipped     a step is written out but its result is then dropped: the
                   next step uses the value from before it;
  arithmetic_slip  one calculation is off by a small amount and the error
                   propagates through the following steps;
  wrong_rounding   a rounding rule is applied in the wrong direction.
A negative's final answer always differs from gold, and its text from the
question's other routes unless the answer space is too small: an error that
leaves the answer unchanged (or repeats a route) is retried, then another error type is tried, and as a last
resort the final calculation slips (labelled arithmetic_slip). Slips are
+-1, +-2 or +-10 (+-1 on values under 50) and never make a value negative.

More than one positive route (`positive_routes`): the gold route first, then
equally correct routes that word the steps differently (`Chain.style`, shared by
every domain) or take them in another valid order (`Chain.variant`, read by the
domain's `chain`; 0 = the gold order). Every one ends with the gold answer.

`shortcut_answer` is each domain's rule-free baseline (documented per domain):
the answer a reader gets from the question alone, ignoring the rule book.
`single_rule_answers` are the guesses a reader makes from one rule alone (the
zone cap, the base charge, ...); a domain without such guesses returns {}.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from typing import Any

import numpy as np

from realm_jax.data.answers import is_equivalent
from realm_jax.data.records import Example, Route

ERROR_TYPES = (
    "rule_misapplied",
    "rule_forgotten",
    "step_skipped",
    "arithmetic_slip",
    "wrong_rounding",
)
_SLIPS = (-10, -2, -1, 1, 2, 10)
_ATTEMPTS_PER_ERROR = 4
NUM_STYLES = 4  # wordings of a calculation line; style 0 is the gold route's
_VARIANTS_TRIED = 24  # step orders `positive_routes` tries per style


@dataclasses.dataclass(frozen=True)
class Rule:
  id: str
  text: str


class Chain:
  """Records solution steps; optionally adds `slip_delta` to calculation number `slip_at`.

  `style` picks the wording of calculation lines (0..NUM_STYLES-1, 0 = gold); `variant` asks the
  domain's `chain` for another valid order of its steps (0 = gold order; a domain may ignore it).
  """

  def __init__(self, slip_at: int | None = None, slip_delta: int = 0, style: int = 0,
               variant: int = 0):
    self.lines: list[str] = []
    self.n_calcs = 0
    self.last: int | None = None
    self._slip_at = slip_at
    self._slip_delta = slip_delta
    self.style = style
    self.variant = variant

  def calc(self, rule: str | None, label: str, expr: str, value: int) -> int:
    """Write "[rule] label = expr = value" and return value (slipped when it is the chosen step)."""
    value = int(value)
    if self.n_calcs == self._slip_at:
      delta = self._slip_delta
      if abs(value) < 50 and abs(delta) > 2:  # a slip by 10 on a small value is not plausible
        delta = 1 if delta > 0 else -1
      value = value + delta if value + delta >= 0 else value + abs(delta)
    self.n_calcs += 1
    self.last = value
    tag = f"[{rule}] " if rule else ""
    calc = f"{expr} = {value}" if expr else str(value)
    self.lines.append(tag + (f"{label} = {calc}", f"{label}: {calc}", f"{calc} ({label})",
                             f"{label} is {calc}")[self.style % NUM_STYLES])
    return value

  def note(self, rule: str, text: str) -> None:
    self.lines.append(f"[{rule}] {text}")


def route_text(lines: list[str], answer: int) -> str:
  return "\n".join(lines + [f"Answer: {answer}"])


class Domain(abc.ABC):
  """A vertical domain: `rules`, a generator of questions, a solver and its wrong twins.

  Subclasses set `name`, `rules`, `errors` (the error types the solver can
  inject) and implement `sample_params`, `question`, `chain` and `shortcut`.
  """

  name: str
  rules: tuple[Rule, ...]
  errors: tuple[str, ...] = ERROR_TYPES

  @abc.abstractmethod
  def sample_params(self, rng: np.random.Generator, difficulty: int) -> dict[str, Any]:
    """A random question's parameters (JSON values only)."""

  @abc.abstractmethod
  def question(self, params: dict[str, Any]) -> str:
    """The question text for `params`."""

  @abc.abstractmethod
  def chain(
      self, params: dict[str, Any], error: str | None, c: Chain, rng: np.random.Generator | None
  ) -> None:
    """Solve `params` step by step into `c`, injecting `error` (None = correct solution)."""

  @abc.abstractmethod
  def shortcut(self, params: dict[str, Any]) -> int:
    """The rule-free baseline answer (see the domain's docstring)."""

  def single_rule_answers(self, params: dict[str, Any]) -> dict[str, int]:
    """{guess name: answer} a reader gets from one rule alone (none by default)."""
    return {}

  # ---- shared behaviour -------------------------------------------------

  def rule_book(self) -> str:
    return "\n".join(f"[{r.id}] {r.text}" for r in self.rules)

  def generate(self, seed: int, n: int, difficulty: int) -> list[Example]:
    """`n` examples; example i depends only on (seed, difficulty, i), so prefixes agree."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"{self.name}.generate: seed must be a non-negative int, got {seed!r}")
    if n < 0:
      raise ValueError(f"{self.name}.generate: n must be >= 0, got {n}")
    if not isinstance(difficulty, (int, np.integer)) or difficulty < 0:
      raise ValueError(f"{self.name}.generate: difficulty must be an int >= 0, got {difficulty!r}")
    return [
        self.example_from_params(
            self.sample_params(
                np.random.default_rng([int(seed), int(difficulty), i]), int(difficulty)
            ),
            f"{self.name}-d{difficulty}-s{seed}-{i}",
            int(difficulty),
        )
        for i in range(n)
    ]

  def example_from_params(self, params: dict[str, Any], id: str, difficulty: int = 0) -> Example:
    """The example for given question parameters (gold answer and CoT from the solver)."""
    c = self._run(params, None, None)
    return Example(
        id=id,
        question=self.question(params),
        answer=str(c.last),
        cot="\n".join(c.lines),
        domain=self.name,
        meta={"params": params, "difficulty": difficulty},
    )

  def _params(self, example: Example) -> dict[str, Any]:
    if example.domain != self.name or "params" not in example.meta:
      raise ValueError(
          f"example {example.id!r} (domain {example.domain!r}) was not generated by domain "
          f"{self.name!r}: it needs meta['params']"
      )
    return example.meta["params"]

  def _run(
      self,
      params: dict[str, Any],
      error: str | None,
      rng: np.random.Generator | None,
      c: Chain | None = None,
  ) -> Chain:
    c = Chain() if c is None else c
    self.chain(params, error, c, rng)
    if c.last is None:
      raise RuntimeError(f"{self.name}.chain wrote no calculation")
    return c

  def solve(self, example: Example) -> Route:
    """The gold route: rule-citing steps ending in "Answer: X"."""
    c = self._run(self._params(example), None, None)
    if not self.verify(str(c.last), example.answer):
      raise ValueError(
          f"example {example.id!r}: solver gives {c.last} but the gold answer is {example.answer!r}"
      )
    return Route(route_text(c.lines, c.last), str(c.last), True, f"domain:{self.name}")

  def positive_routes(self, example: Example, n: int) -> list[Route]:
    """Up to `n` distinct correct routes: the gold route, then other wordings and step orders.

    Deterministic; fewer than `n` only when the domain has no more distinct correct routes.
    """
    if n < 0:
      raise ValueError(f"positive_routes: n must be >= 0, got {n}")
    params, gold = self._params(example), self.solve(example)
    routes, seen = [gold][:n], {gold.text}
    # Diagonals of (variant, style): a new step order comes before a new wording of an old one.
    for variant, style in sorted(itertools.product(range(_VARIANTS_TRIED), range(NUM_STYLES)),
                                 key=lambda vs: (sum(vs), vs[1])):
      if len(routes) >= n:
        break
      c = self._run(params, None, None, Chain(style=style, variant=variant))
      text = route_text(c.lines, c.last)
      if text in seen:
        continue
      if not self.verify(str(c.last), example.answer):
        raise RuntimeError(f"{self.name}: route variant {variant} (style {style}) of "
                           f"{example.id!r} ends with {c.last}, not {example.answer}")
      seen.add(text)
      routes.append(Route(text, str(c.last), True, f"domain:{self.name}"))
    return routes

  def _wrong(
      self, params: dict[str, Any], error: str, gold: str, rng: np.random.Generator, seen: set[str]
  ) -> Chain | None:
    """A chain with `error` whose answer differs from gold and whose text is new, or None."""
    n_calcs = self._run(params, None, None).n_calcs
    for _ in range(_ATTEMPTS_PER_ERROR):
      if error == "arithmetic_slip":
        c = self._run(
            params, None, None, Chain(int(rng.integers(n_calcs)), int(rng.choice(_SLIPS)))
        )
      else:
        c = self._run(params, error, rng)
      if not self.verify(str(c.last), gold) and route_text(c.lines, c.last) not in seen:
        return c
    return None

  def _final_slip(self, params: dict[str, Any], rng: np.random.Generator, seen: set[str]) -> Chain:
    """Last resort: the final calculation slips (its answer always differs from gold)."""
    n_calcs = self._run(params, None, None).n_calcs
    for delta in rng.permutation(_SLIPS):
      c = self._run(params, None, None, Chain(n_calcs - 1, int(delta)))
      if route_text(c.lines, c.last) not in seen:
        break
    return c

  def negative_routes(self, example: Example, rng: np.random.Generator, n: int) -> list[Route]:
    """`n` wrong routes, each labelled with the error that produced it.

    Error types cycle in an order shuffled by `rng`; duplicates of an earlier
    route are retried like errors that leave the answer unchanged.
    """
    if n < 0:
      raise ValueError(f"negative_routes: n must be >= 0, got {n}")
    params, gold = self._params(example), example.answer
    order = [self.errors[i] for i in rng.permutation(len(self.errors))]
    seen = {self.solve(example).text}
    routes = []
    for k in range(n):
      first = order[k % len(order)]
      for error in [first] + [e for e in order if e != first]:
        c = self._wrong(params, error, gold, rng, seen)
        if c is not None:
          break
      else:
        error, c = "arithmetic_slip", self._final_slip(params, rng, seen)
      text = route_text(c.lines, c.last)
      seen.add(text)
      routes.append(Route(text, str(c.last), False, f"domain:{self.name}", error))
    return routes

  def verify(self, predicted: str, gold: str) -> bool:
    return is_equivalent(predicted, gold)

  def shortcut_answer(self, example: Example) -> str:
    """The rule-free baseline's answer to `example` (see `shortcut`)."""
    return str(self.shortcut(self._params(example)))
