"""Teachers attach labelled routes to examples; route pools are saved as JSONL.

Three teachers (METHOD.md section 1), each returning the examples, in order,
with new routes appended to their pools:
- `domain_teacher`: the domain's gold route plus named wrong routes;
- `file_teacher`: routes written by any LLM or API (`sources.load_route_file`);
- `model_teacher`: routes sampled from a model through `generate_fn`, a plain
  callable `list[str] -> list[str]` (prompts in, completions out) supplied by
  the caller; this module knows nothing about models.
Every route from a file or a model is labelled by verification
(`sources.label_route`): positive iff its extracted answer is equivalent to the
gold answer.

Route pool file: one `Example.to_dict()` JSON object per line (what `realm-jax data
routes` writes and `routes:FILE` reads). An LLM route file (`{"question_id", "route"}`
lines) is not a pool: `read_route_pool` refuses it and says how to attach it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from realm_jax.data.config import MAX_ROUTE_CHARS
from realm_jax.data.domains import Domain, get_domain
from realm_jax.data.records import Example
from realm_jax.data.sources import (DataFormatError, DataWarning, label_route, load_route_file,
                                    read_json_lines)
from realm_jax.errors import DataError


def domain_teacher(
    domain: Domain | str, examples: list[Example], rng: np.random.Generator, num_negative: int
) -> list[Example]:
  """Each example with its gold route and `num_negative` named wrong routes appended."""
  domain = get_domain(domain) if isinstance(domain, str) else domain
  if num_negative < 0:
    raise ValueError(f"num_negative must be >= 0, got {num_negative}")
  out = []
  for ex in examples:
    if ex.domain != domain.name:
      raise ValueError(
          f"domain_teacher({domain.name!r}) got example {ex.id!r} of domain {ex.domain!r}"
      )
    out.append(ex.with_routes([domain.solve(ex)] + domain.negative_routes(ex, rng, num_negative)))
  return out


def file_teacher(
    path: str | os.PathLike, examples: list[Example], max_route_chars: int = MAX_ROUTE_CHARS,
    limit_name: str = "data.max_route_chars",
) -> list[Example]:
  """`load_route_file`, warning when routes had no answer or were not attached (empty, over
  `max_route_chars`, named `limit_name` in the warning; unknown question id)."""
  labelled, report = load_route_file(path, examples, max_route_chars, limit_name)
  if report.no_answer or report.n_refused:
    warnings.warn(report.summary(), DataWarning, stacklevel=2)
  return labelled


def teacher_prompt(question: str, rule_book: str | None, gold: str | None = None) -> str:
  """The teacher's input: rules (if given), the question, the gold answer in rationalize mode."""
  parts = ["Solve the question step by step."]
  if rule_book:
    parts.append("Rules:\n" + rule_book.strip())
  parts.append("Question: " + question.strip())
  if gold is not None:
    parts.append(f"The correct final answer is {gold}. Show the steps that lead to it.")
  cite = "Cite each rule you use by its id, like [R1]. " if rule_book else ""
  parts.append(cite + 'End with a line "Answer: <final answer>".')
  return "\n".join(parts)


def model_teacher(
    examples: list[Example],
    generate_fn: Callable[[list[str]], list[str]],
    rule_book: str | None,
    samples_per_question: int,
    rationalize: bool = False,
    source: str = "model",
) -> list[Example]:
  """Each example with `samples_per_question` sampled routes appended, labelled by verification.

  `generate_fn` is called once with every prompt (example-major: the
  samples of example 0 first) and must return one completion per prompt.
  `rationalize=True` shows the gold answer in the prompt (METHOD.md section 4).
  """
  if samples_per_question < 1:
    raise ValueError(f"samples_per_question must be >= 1, got {samples_per_question}")
  prompts = [
      teacher_prompt(ex.question, rule_book, ex.answer if rationalize else None)
      for ex in examples
      for _ in range(samples_per_question)
  ]
  completions = list(generate_fn(prompts))
  if len(completions) != len(prompts):
    raise ValueError(
        f"generate_fn returned {len(completions)} completions for {len(prompts)} prompts"
    )
  out = []
  for i, ex in enumerate(examples):
    texts = completions[i * samples_per_question : (i + 1) * samples_per_question]
    for text in texts:
      if not isinstance(text, str):
        raise TypeError(
            f"generate_fn must return strings, got {type(text).__name__} for example {ex.id!r}"
        )
    out.append(ex.with_routes([label_route(t, ex.answer, source) for t in texts]))
  return out


def write_route_pool(path: str | os.PathLike, examples: list[Example]) -> None:
  """Write one `Example.to_dict()` JSON line per example (parent folders are created)."""
  folder = os.path.dirname(os.fspath(path))
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")


def read_route_pool(path: str | os.PathLike) -> list[Example]:
  """Examples written by `write_route_pool`; a bad line raises DataFormatError (file, line),
  an empty file or an LLM route file DataError."""
  examples = []
  for lineno, obj in read_json_lines(path):
    if "question_id" in obj and "route" in obj and "id" not in obj:
      raise DataError(
          f"{path}:{lineno}: this is an LLM route file (question_id, route), not a route pool; "
          f"attach its routes to their questions with `realm-jax data routes SOURCE --out FILE "
          f"--route-file {path}`, then read FILE with routes:FILE"
      )
    try:
      examples.append(Example.from_dict(obj))
    except (TypeError, ValueError) as e:
      raise DataFormatError(f"{path}:{lineno}: {e}") from None
  if not examples:
    raise DataError(f"{path}: empty route pool; write one with `realm-jax data routes SOURCE "
                    f"--out {path}`")
  return examples


def route_pool_stats(examples: list[Example]) -> dict[str, Any]:
  """Counts and shares of a route pool.

  `positive_share` / `negative_share` are over all routes; `error_share[e]`
  is the share of negative routes with error label `e` ("unlabelled" when a
  negative carries none); `source_share` is over all routes.
  """
  routes = [r for ex in examples for r in ex.routes]
  negatives = [r for r in routes if not r.positive]
  n_routes, n_neg = len(routes), len(negatives)
  n_pos = n_routes - n_neg
  errors = Counter(r.error or "unlabelled" for r in negatives)
  sources = Counter(r.source for r in routes)
  return {
      "items": len(examples),
      "items_with_positive": sum(bool(ex.positive_routes) for ex in examples),
      "items_with_negative": sum(bool(ex.negative_routes) for ex in examples),
      "routes": n_routes,
      "positive": n_pos,
      "negative": n_neg,
      "routes_per_item": n_routes / len(examples) if examples else 0.0,
      "positive_share": n_pos / n_routes if n_routes else 0.0,
      "negative_share": n_neg / n_routes if n_routes else 0.0,
      "error_share": {e: c / n_neg for e, c in sorted(errors.items())},
      "source_share": {s: c / n_routes for s, c in sorted(sources.items())},
  }
