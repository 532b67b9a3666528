"""Where examples and external routes come from: GSM8K-style JSONL, reasoning-gym,
the built-in domains, and route files written by any LLM or API.

Conventions
- Files are UTF-8 JSONL, decoded line by line. A malformed input line (bytes
  that are not UTF-8, bad JSON, not an object, a required field missing or of
  the wrong type) raises `DataFormatError` naming the file, the 1-based line
  number and the field. A file with nothing usable raises `DataError`.
- Well-formed items that cannot be used (an empty question, no gold answer; an
  empty route, a route over `max_route_chars` characters, a route for an
  unknown question) are never dropped silently: they are excluded and listed,
  with their line numbers, in the report the `read_*`/`load_route_file`
  functions return; the `load_*` shorthands and `teachers.file_teacher` warn
  (`DataWarning`) with the same summary.
- GSM8K answers end in `#### <number>`; the gold answer is that number with
  thousands separators removed, the CoT the text before it with calculator
  annotations `<<48/2=24>>` removed. A gold that is not a plain number
  (`#### seven`, `#### 7 apples`) is kept, compared as `answers.is_equivalent`
  does, and counted in the report's `non_numeric_answers`.
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
from realm_jax.data.config import MAX_ROUTE_CHARS
from realm_jax.data.domains import get_domain
from realm_jax.data.records import Example, Route
from realm_jax.errors import ConfigError, DataError, DataWarning

GYM_TASKS = ("basic_arithmetic", "chain_sum", "gsm_symbolic", "syllogism")
SOURCE_KINDS = ("domain", "gym", "gsm8k")  # spec prefixes understood by load_source
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_PLAIN_NUMBER = re.compile(r"[-+]?(\d+(\.\d+)?|\.\d+)(/\d+)?")


class DataFormatError(DataError):
  """A malformed input line: names the file, the 1-based line and the field."""


@dataclasses.dataclass
class LoadReport:
  """What a reader kept and what it had to leave out (line numbers are 1-based)."""

  path: str
  n_lines: int = 0
  n_examples: int = 0
  empty_questions: list[int] = dataclasses.field(default_factory=list)
  missing_answers: list[int] = dataclasses.field(default_factory=list)
  non_numeric_answers: list[int] = dataclasses.field(default_factory=list)  # kept

  @property
  def n_excluded(self) -> int:
    return len(self.empty_questions) + len(self.missing_answers)

  def summary(self) -> str:
    text = (
        f"{self.path}: kept {self.n_examples} of {self.n_lines} items; excluded "
        f"{len(self.empty_questions)} with an empty question (lines {self.empty_questions}) and "
        f"{len(self.missing_answers)} without a gold answer (lines {self.missing_answers})"
    )
    if self.non_numeric_answers:
      text += (
          f"; {len(self.non_numeric_answers)} kept items have a gold answer after '####' that is "
          f"not a plain number (lines {self.non_numeric_answers}): write it as digits, e.g. "
          f"'#### 7'"
      )
    return text


@dataclasses.dataclass
class RouteFileReport:
  """Counts for one route file (line numbers are 1-based)."""

  path: str
  n_lines: int = 0
  n_positive: int = 0
  n_negative: int = 0
  no_answer: list[int] = dataclasses.field(default_factory=list)
  unknown_ids: list[int] = dataclasses.field(default_factory=list)
  empty_routes: list[int] = dataclasses.field(default_factory=list)
  too_long: list[int] = dataclasses.field(default_factory=list)
  max_route_chars: int = MAX_ROUTE_CHARS
  limit_name: str = "data.max_route_chars"  # the setting that sets the limit, for the message

  @property
  def n_refused(self) -> int:
    return len(self.unknown_ids) + len(self.empty_routes) + len(self.too_long)

  def summary(self) -> str:
    text = (
        f"{self.path}: {self.n_lines} routes, {self.n_positive} positive, "
        f"{self.n_negative} negative "
        f"({len(self.no_answer)} without an extractable answer: lines {self.no_answer}); "
        f"{len(self.unknown_ids)} for unknown question ids (lines {self.unknown_ids}), not attached"
    )
    if self.empty_routes:
      text += f"; {len(self.empty_routes)} empty (lines {self.empty_routes}), not attached"
    if self.too_long:
      text += (
          f"; {len(self.too_long)} longer than {self.limit_name}={self.max_route_chars} "
          f"characters (lines {self.too_long}), not attached"
      )
    return text


def _decode(raw: bytes, path: Any, lineno: int) -> str:
  try:
    return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
  except UnicodeDecodeError as e:
    raise DataFormatError(
        f"{path}:{lineno}: field '<line>': invalid UTF-8 at byte {e.start} of the line "
        f"({raw[e.start:e.start + 4]!r}); save the file as UTF-8"
    ) from None


def read_json_lines(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
  """(line number, object) for every non-blank line; raises DataFormatError on a bad line."""
  rows = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      line = _decode(raw, path, lineno)
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
    if not _PLAIN_NUMBER.fullmatch(gold):
      report.non_numeric_answers.append(lineno)
    cot = _CALCULATOR.sub("", cot).strip() or None
    examples.append(
        Example(f"{stem}-{lineno}", question, gold, cot, "gsm8k", meta={"line": lineno})
    )
  report.n_examples = len(examples)
  if not examples:
    what = "it holds no items" if not report.n_lines else report.summary()
    raise DataError(f"{path}: no usable examples ({what}); expected JSONL lines "
                    f'{{"question": ..., "answer": "... #### <number>"}}')
  return examples, report


def load_gsm8k_jsonl(path: str | os.PathLike) -> list[Example]:
  """`read_gsm8k_jsonl` that warns (instead of returning the report) about excluded items and
  non-numeric gold answers."""
  examples, report = read_gsm8k_jsonl(path)
  if report.n_excluded or report.non_numeric_answers:
    warnings.warn(report.summary(), DataWarning, stacklevel=2)
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
    raise ConfigError(f"unknown gym task {task!r}; supported tasks: {', '.join(GYM_TASKS)}")
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
    path: str | os.PathLike, examples: list[Example], max_route_chars: int = MAX_ROUTE_CHARS,
    limit_name: str = "data.max_route_chars",
) -> tuple[list[Example], RouteFileReport]:
  """`examples` (same order) with the file's routes appended, labelled against the gold.

  Empty routes, routes over `max_route_chars` characters and routes for unknown
  question ids are not attached; the report lists their lines. A file without
  routes raises DataError.
  """
  by_id = {ex.id: ex for ex in examples}
  if len(by_id) != len(examples):
    raise ValueError("load_route_file: example ids must be unique")
  report = RouteFileReport(path=str(path), max_route_chars=max_route_chars, limit_name=limit_name)
  default_source = f"file:{os.path.basename(path)}"
  new_routes: dict[str, list[Route]] = {ex.id: [] for ex in examples}
  for lineno, obj in read_json_lines(path):
    report.n_lines += 1
    qid = str(_field(obj, "question_id", (str, int), path, lineno))
    text = _field(obj, "route", str, path, lineno)
    source = _field(obj, "source", str, path, lineno) if "source" in obj else default_source
    if not text.strip():
      report.empty_routes.append(lineno)
      continue
    if len(text) > max_route_chars:
      report.too_long.append(lineno)
      continue
    if qid not in by_id:
      report.unknown_ids.append(lineno)
      continue
    route = label_route(text, by_id[qid].answer, source)
    if route.error == "no_answer":
      report.no_answer.append(lineno)
    report.n_positive += route.positive
    report.n_negative += not route.positive
    new_routes[qid].append(route)
  if not report.n_lines:
    raise DataError(f'{path}: no routes; expected JSONL lines {{"question_id": ..., "route": ...}}')
  return [ex.with_routes(new_routes[ex.id]) for ex in examples], report


def domain_examples(name: str, n: int, seed: int, difficulty: int) -> list[Example]:
  """`n` generated examples of built-in domain `name`."""
  try:
    domain = get_domain(name)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return domain.generate(seed, n, difficulty)


def load_source(spec: str, n: int | None, seed: int, difficulty: int = 0) -> list[Example]:
  """Examples from a spec `domain:<name>`, `gym:<task>` or `gsm8k:<path>`.

  `n` is the number of examples (for gsm8k: at most `n`, a seeded sample that
  keeps file order; None = all). `difficulty` applies to domains only.
  """
  kind, sep, arg = spec.partition(":")
  if not sep or kind not in SOURCE_KINDS or not arg:
    raise ConfigError(
        f"bad source spec {spec!r}: expected one of domain:<name>, gym:<task>, gsm8k:<path>"
    )
  if kind != "gsm8k" and n is None:
    raise ConfigError(f"source {spec!r} generates examples: give n")
  if kind == "domain":
    return domain_examples(arg, n, seed, difficulty)
  if kind == "gym":
    return reasoning_gym_examples(arg, n, seed)
  examples = load_gsm8k_jsonl(arg)
  if n is None or n >= len(examples):
    return examples
  keep = np.sort(np.random.default_rng(seed).choice(len(examples), size=n, replace=False))
  return [examples[i] for i in keep]
