"""Where examples and external routes come from: GSM8K-style JSONL, reasoning-gym,
the built-in domains, and route files written by any LLM or API.

Conventions
- A malformed input line (bad JSON, not an object, a required field missing or
  of the wrong type) raises `DataFormatError` naming the file, the 1-based line
  number and the field.
- Well-formed items that cannot be used (an empty question, no gold answer) are
  never dropped silently: they are excluded from the examples and listed, with
  their line numbers, in the report the `read_*`/`load_route_file` functions
  return; the `load_*` shorthands warn with the same summary.
- GSM8K answers end in `#### <number>`; the gold answer is that number with
  thousands separators removed, the CoT the text before it with calculator
  annotations `<<48/2=24>>` removed.
- Route files are JSONL lines `{"question_id": str|int, "route": str,
  "source": str (optional)}`; each route is labelled positive when the answer
  extracted from it (`answers.extract_answer`) is equivalent to the gold answer,
  negative otherwise, with `error` "wrong_answer" or "no_answer".
- reasoning-gym is an optional extra (`pip install realm_jax[gym]`), imported
  only when a gym source is read; each gym example keeps the generator's entry
  in `meta["gym_entry"]` so `gym_score` can call the task's own scorer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Any

import numpy as np

from realm_jax.data.answers import extract_answer, is_equivalent
from realm_jax.data.domains import get_domain
from realm_jax.data.records import Example, Route

GYM_TASKS = ("basic_arithmetic", "chain_sum", "gsm_symbolic", "syllogism")
SOURCE_KINDS = ("domain", "gym", "gsm8k")  # spec prefixes understood by load_source
_CALCULATOR = re.compile(r"<<[^<>]*>>")


class DataFormatError(ValueError):
  """A malformed input line: names the file, the 1-based line and the field."""


@dataclasses.dataclass
class LoadReport:
  """What a reader kept and what it had to leave out (line numbers are 1-based)."""

  path: str
  n_lines: int = 0
  n_examples: int = 0
  empty_questions: list[int] = dataclasses.field(default_factory=list)
  missing_answers: list[int] = dataclasses.field(default_factory=list)

  @property
  def n_excluded(self) -> int:
    return len(self.empty_questions) + len(self.missing_answers)

  def summary(self) -> str:
    return (
        f"{self.path}: kept {self.n_examples} of {self.n_lines} items; excluded "
        f"{len(self.empty_questions)} with an empty question (lines {self.empty_questions}) and "
        f"{len(self.missing_answers)} without a gold answer (lines {self.missing_answers})"
    )


@dataclasses.dataclass
class RouteFileReport:
  """Counts for one route file (line numbers are 1-based)."""

  path: str
  n_lines: int = 0
  n_positive: int = 0
  n_negative: int = 0
  no_answer: list[int] = dataclasses.field(default_factory=list)
  unknown_ids: list[int] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    return (
        f"{self.path}: {self.n_lines} routes, {self.n_positive} positive, "
        f"{self.n_negative} negative "
        f"({len(self.no_answer)} without an extractable answer: lines {self.no_answer}); "
        f"{len(self.unknown_ids)} for unknown question ids (lines {self.unknown_ids}), not attached"
    )


def read_json_lines(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
  """(line number, object) for every non-blank line; raises DataFormatError on bad JSON."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: field '<line>': invalid JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise DataFormatError(
            f"{path}:{lineno}: field '<line>': expected a JSON object, got {type(obj).__name__}"
        )
      rows.append((lineno, obj))
  return rows


def _field(
    obj: dict[str, Any], name: str, types: type | tuple[type, ...], path: Any, lineno: int
) -> Any:
  if name not in obj:
    raise DataFormatError(f"{path}:{lineno}: field '{name}': missing (keys present: {sorted(obj)})")
  value = obj[name]
  if not isinstance(value, types) or isinstance(value, bool):
    wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    raise DataFormatError(
        f"{path}:{lineno}: field '{name}': expected {wanted}, got {type(value).__name__}"
    )
  return value


def read_gsm8k_jsonl(path: str | os.PathLike) -> tuple[list[Example], LoadReport]:
  """Examples from a GSM8K-format JSONL file and the report of what was excluded."""
  report = LoadReport(path=str(path))
  stem = os.path.splitext(os.path.basename(path))[0]
  examples = []
  for lineno, obj in read_json_lines(path):
    report.n_lines += 1
    question = _field(obj, "question", str, path, lineno).strip()
    answer_text = _field(obj, "answer", str, path, lineno)
    cot, sep, gold = answer_text.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not question:
      report.empty_questions.append(lineno)
      continue
    if not sep or not gold:
      report.missing_answers.append(lineno)
      continue
    cot = _CALCULATOR.sub("", cot).strip() or None
    examples.append(
        Example(f"{stem}-{lineno}", question, gold, cot, "gsm8k", meta={"line": lineno})
    )
  report.n_examples = len(examples)
  return examples, report


def load_gsm8k_jsonl(path: str | os.PathLike) -> list[Example]:
  """`read_gsm8k_jsonl` that warns (instead of returning the report) when items were excluded."""
  examples, report = read_gsm8k_jsonl(path)
  if report.n_excluded:
    warnings.warn(report.summary(), stacklevel=2)
  return examples


def _json_safe(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def _gym_cot(task: str, entry: dict[str, Any]) -> str | None:
  """The task's own reference CoT (gsm_symbolic has one), without its `#### N` line."""
  cot = entry.get("metadata", {}).get("answer_cot") if task == "gsm_symbolic" else None
  if not cot:
    return None
  return _CALCULATOR.sub("", cot.rpartition("####")[0] if "####" in cot else cot).strip() or None


def reasoning_gym_examples(task: str, n: int, seed: int) -> list[Example]:
  """`n` examples of reasoning-gym task `task` (one of GYM_TASKS), deterministic in `seed`."""
  if task not in GYM_TASKS:
    raise ValueError(f"unknown gym task {task!r}; supported tasks: {', '.join(GYM_TASKS)}")
  try:
    import reasoning_gym
  except ImportError as e:
    raise ImportError("gym sources need reasoning-gym: pip install 'realm_jax[gym]'") from e
  dataset = reasoning_gym.create_dataset(task, size=n, seed=seed)
  examples = []
  for i, entry in enumerate(dataset):
    entry = _json_safe(
        {"question": entry["question"], "answer": entry["answer"], "metadata": entry["metadata"]}
    )
    examples.append(
        Example(
            id=f"gym-{task}-s{seed}-{i}",
            question=entry["question"],
            answer=str(entry["answer"]),
            cot=_gym_cot(task, entry),
            domain=f"gym:{task}",
            meta={"gym_task": task, "gym_entry": entry},
        )
    )
  return examples


def gym_score(example: Example, answer: str | None) -> float:
  """reasoning-gym's own score of `answer` for a gym example (1.0 = correct)."""
  if "gym_task" not in example.meta:
    raise ValueError(
        f"example {example.id!r} did not come from reasoning-gym (no meta['gym_task'])"
    )
  import reasoning_gym

  return float(
      reasoning_gym.get_score_answer_fn(example.meta["gym_task"])(answer, example.meta["gym_entry"])
  )


def label_route(text: str, gold: str, source: str) -> Route:
  """A route labelled by verifying its extracted final answer against `gold`."""
  answer = extract_answer(text)
  if answer is None:
    return Route(text, None, False, source, "no_answer")
  if is_equivalent(answer, gold):
    return Route(text, answer, True, source)
  return Route(text, answer, False, source, "wrong_answer")


def load_route_file(
    path: str | os.PathLike, examples: list[Example]
) -> tuple[list[Example], RouteFileReport]:
  """`examples` (same order) with the file's routes appended, labelled against the gold."""
  by_id = {ex.id: ex for ex in examples}
  if len(by_id) != len(examples):
    raise ValueError("load_route_file: example ids must be unique")
  report = RouteFileReport(path=str(path))
  default_source = f"file:{os.path.basename(path)}"
  new_routes: dict[str, list[Route]] = {ex.id: [] for ex in examples}
  for lineno, obj in read_json_lines(path):
    report.n_lines += 1
    qid = str(_field(obj, "question_id", (str, int), path, lineno))
    text = _field(obj, "route", str, path, lineno)
    source = _field(obj, "source", str, path, lineno) if "source" in obj else default_source
    if qid not in by_id:
      report.unknown_ids.append(lineno)
      continue
    route = label_route(text, by_id[qid].answer, source)
    if route.error == "no_answer":
      report.no_answer.append(lineno)
    report.n_positive += route.positive
    report.n_negative += not route.positive
    new_routes[qid].append(route)
  return [ex.with_routes(new_routes[ex.id]) for ex in examples], report


def domain_examples(name: str, n: int, seed: int, difficulty: int) -> list[Example]:
  """`n` generated examples of built-in domain `name`."""
  return get_domain(name).generate(seed, n, difficulty)


def load_source(spec: str, n: int | None, seed: int, difficulty: int = 0) -> list[Example]:
  """Examples from a spec `domain:<name>`, `gym:<task>` or `gsm8k:<path>`.

  `n` is the number of examples (for gsm8k: at most `n`, a seeded sample that
  keeps file order; None = all). `difficulty` applies to domains only.
  """
  kind, sep, arg = spec.partition(":")
  if not sep or kind not in SOURCE_KINDS or not arg:
    raise ValueError(
        f"bad source spec {spec!r}: expected one of domain:<name>, gym:<task>, gsm8k:<path>"
    )
  if kind != "gsm8k" and n is None:
    raise ValueError(f"source {spec!r} generates examples: give n")
  if kind == "domain":
    return domain_examples(arg, n, seed, difficulty)
  if kind == "gym":
    return reasoning_gym_examples(arg, n, seed)
  examples = load_gsm8k_jsonl(arg)
  if n is None or n >= len(examples):
    return examples
  keep = np.sort(np.random.default_rng(seed).choice(len(examples), size=n, replace=False))
  return [examples[i] for i in keep]
