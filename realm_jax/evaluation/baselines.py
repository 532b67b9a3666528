"""Trivial baselines: the accuracy of answers that need no reasoning, next to a model's.

`trivial_baselines(examples, reference=None, ...)` -> {baseline name: accuracy}:
  "most frequent answer"     the commonest gold answer of `reference` (say the train
                             examples; default `examples` themselves), given to every question;
  "rule-free shortcut"       the domain's `shortcut` (built-in or user domain examples only);
  "one rule: NAME"           each of the domain's `single_rule_answers` (domain examples only);
  "first number in question" / "last number in question": that number of the question text
                             (a question with no number scores 0);
  "copy a shown route"       only when some example has routes: the answer a shown route ends
                             with, averaged over the shown routes (= copying one at random);
                             shown = what `corpus.route_prompt` shows with the eval's seed when
                             `mrpv_cfg` is given (as `accuracy.evaluate_params` does), else the
                             whole pool; an example with no route shown scores 0.
Answers are compared as `answers.is_correct` compares a model's: `answers.is_equivalent` on the
extracted answer. A domain baseline is scored over the examples of its domain, the others over
all examples, so a GSM8K or reasoning-gym source gets only mode, numbers and route copying.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from realm_jax.data import answers, domains
from realm_jax.data.records import Example
from realm_jax.evaluation import accuracy

MODE = "most frequent answer"
SHORTCUT = "rule-free shortcut"
FIRST, LAST = "first number in question", "last number in question"
COPY = "copy a shown route"
ROUTE_BASELINES = (COPY,)  # the baselines that read shown routes


def source_domains(source: str) -> dict[str, domains.Domain]:
  """{domain name: Domain} of the `domain:` parts of a source spec (user domains included; one
  that no longer loads is left out, and its examples get only the domain-free baselines)."""
  out = {}
  for spec in (s.strip() for s in source.split(",")):
    if spec.startswith("domain:"):
      try:
        d = domains.get_domain(spec.split(":", 1)[1])
      except ValueError:
        continue
      out[d.name] = d
  return out


def _key(answer: str) -> Any:
  number = answers.normalize_number(answer)
  return ("number", number) if number is not None else ("text", " ".join(answer.casefold().split()))


def most_frequent_answer(examples: Iterable[Example]) -> str | None:
  """The commonest gold answer (equal numbers count together; the first seen wins ties)."""
  counts: Counter = Counter()
  first: dict[Any, str] = {}
  for ex in examples:
    k = _key(ex.answer)
    counts[k] += 1
    first.setdefault(k, ex.answer)
  return first[counts.most_common(1)[0][0]] if counts else None


def _numbers(text: str) -> list[str]:
  return answers._LAST_NUMBER.findall(text)  # the extractor's own number syntax


def _shown(examples: Sequence[Example], mrpv_cfg, seed: int) -> list[list[str]]:
  if mrpv_cfg is None:
    return [[r.text for r in ex.routes] for ex in examples]
  return accuracy.eval_prompts(examples, mrpv_cfg, True, seed)[2]


def trivial_baselines(examples: Sequence[Example], reference: Sequence[Example] | None = None,
                      domain_map: dict[str, domains.Domain] | None = None, mrpv_cfg=None,
                      seed: int = 0, routes: bool = True) -> dict[str, float]:
  """{baseline: accuracy} on `examples` (see the module docstring); {} for no examples.

  `domain_map` names the domains of user-domain examples (built-ins are found by name);
  `routes=False` leaves out "copy a shown route" (the without-routes setting).
  """
  examples = list(examples)
  if not examples:
    return {}
  golds = [ex.answer for ex in examples]
  hits: dict[str, list[bool]] = {}

  def score(name: str, predicted: Any, gold: str) -> None:
    hits.setdefault(name, []).append(
        predicted is not None and answers.is_equivalent(str(predicted), gold))

  mode = most_frequent_answer(examples if reference is None else reference)
  for gold in golds:
    score(MODE, mode, gold)
  for ex, gold in zip(examples, golds):
    domain = (domain_map or {}).get(ex.domain) or domains.DOMAINS.get(ex.domain)
    if domain is None or "params" not in ex.meta:
      continue
    score(SHORTCUT, domain.shortcut(ex.meta["params"]), gold)
    for name, guess in domain.single_rule_answers(ex.meta["params"]).items():
      score(f"one rule: {name}", guess, gold)
  for ex, gold in zip(examples, golds):
    numbers = _numbers(ex.question)
    score(FIRST, numbers[0] if numbers else None, gold)
    score(LAST, numbers[-1] if numbers else None, gold)
  out = {name: float(np.mean(h)) for name, h in hits.items()}
  if routes and any(ex.routes for ex in examples):
    shown = _shown(examples, mrpv_cfg, seed)
    out[COPY] = float(np.mean([np.mean([answers.is_correct(t, g) for t in texts]) if texts else 0.0
                               for texts, g in zip(shown, golds)]))
  return out
