"""Teachers: labels by verification with a fake model, domain pools, pool files and stats."""

import json
import pathlib

import numpy as np
import pytest

from realm_jax.data.domains import get_domain
from realm_jax.data.records import Example, Route
from realm_jax.data.sources import DataFormatError, read_gsm8k_jsonl
from realm_jax.errors import DataError, DataWarning
from realm_jax.data.teachers import (
    domain_teacher,
    file_teacher,
    model_teacher,
    read_route_pool,
    route_pool_stats,
    teacher_prompt,
    write_route_pool,
)

DATA = pathlib.Path(__file__).parent / "data"


def _examples():
  return [
      Example("q1", "What is 2 + 3?", "5", None, "custom"),
      Example("q2", "What is 10% of 50?", "5", None, "custom"),
  ]


def test_teacher_prompt():
  plain = teacher_prompt("What is 2 + 3?", None)
  assert "What is 2 + 3?" in plain and "Rules" not in plain and "correct final answer" not in plain
  assert plain.endswith('End with a line "Answer: <final answer>".')
  guided = teacher_prompt("Q?", "[R1] add.", gold="5")
  assert (
      "Rules:\n[R1] add." in guided
      and "The correct final answer is 5." in guided
      and "[R1]" in guided
  )
  assert (
      guided.index("Rules:") < guided.index("Question: Q?") < guided.index("correct final answer")
  )


def test_model_teacher_labels_by_verification():
  outputs = [
      "2 + 3 = 5\nAnswer: 5",  # q1 right
      "2 + 3 = 6\nAnswer: 6",  # q1 wrong
      "I am not sure.",  # q1 no answer
      "10% of 50 is <answer>5.0</answer>",  # q2 right (5.0 == 5)
      "50 / 10 = \\boxed{4}",  # q2 wrong
      "#### $5",  # q2 right
  ]
  calls = []

  def fake_generate(prompts):
    calls.append(list(prompts))
    return outputs

  pool = model_teacher(_examples(), fake_generate, rule_book="[R1] Add.", samples_per_question=3)
  assert len(calls) == 1 and len(calls[0]) == 6
  assert all("What is 2 + 3?" in p for p in calls[0][:3]) and all(
      "10% of 50" in p for p in calls[0][3:]
  )
  assert all("[R1] Add." in p and "correct final answer" not in p for p in calls[0])
  labels = [[(r.positive, r.error) for r in ex.routes] for ex in pool]
  assert labels == [
      [(True, None), (False, "wrong_answer"), (False, "no_answer")],
      [(True, None), (False, "wrong_answer"), (True, None)],
  ]
  assert [r.text for ex in pool for r in ex.routes] == outputs
  assert all(r.source == "model" for ex in pool for r in ex.routes)


def test_model_teacher_rationalize_and_errors():
  seen = []

  def echo(prompts):
    seen.extend(prompts)
    return ["Answer: 5"] * len(prompts)

  pool = model_teacher(
      _examples(), echo, rule_book=None, samples_per_question=1, rationalize=True, source="m"
  )
  assert all("The correct final answer is 5." in p for p in seen)
  assert all(r.positive and r.source == "m" for ex in pool for r in ex.routes)
  with pytest.raises(ValueError, match="returned 1 completions for 4 prompts"):
    model_teacher(_examples(), lambda p: ["x"], None, samples_per_question=2)
  with pytest.raises(ValueError, match="samples_per_question"):
    model_teacher(_examples(), echo, None, samples_per_question=0)


def test_domain_teacher():
  tax = get_domain("tax")
  examples = tax.generate(0, 10, 1)
  pool = domain_teacher("tax", examples, np.random.default_rng(0), num_negative=3)
  for ex, orig in zip(pool, examples):
    assert ex.id == orig.id and len(ex.routes) == 4
    gold, *negatives = ex.routes
    assert gold.positive and gold.answer == ex.answer and gold.text.endswith(f"Answer: {ex.answer}")
    assert all(not r.positive and r.error and r.answer != ex.answer for r in negatives)
  with pytest.raises(ValueError, match="of domain 'tax'"):
    domain_teacher(get_domain("dosing"), examples, np.random.default_rng(0), 1)


def test_file_teacher_warns_and_labels():
  examples, _ = read_gsm8k_jsonl(DATA / "gsm8k_small.jsonl")
  with pytest.warns(UserWarning, match="without an extractable answer"):
    pool = file_teacher(DATA / "routes_small.jsonl", examples)
  assert sum(len(ex.routes) for ex in pool) == 7


def test_route_pool_round_trip(tmp_path):
  pool = domain_teacher(
      "dosing", get_domain("dosing").generate(1, 5, 2), np.random.default_rng(1), 2
  )
  pool += model_teacher(_examples(), lambda p: ["Answer: 5", "no"] * (len(p) // 2), None, 2)
  path = tmp_path / "pools" / "pool.jsonl"
  write_route_pool(path, pool)
  assert len(path.read_text().splitlines()) == len(pool)
  assert read_route_pool(path) == pool


def test_read_route_pool_bad_line(tmp_path):
  path = tmp_path / "pool.jsonl"
  good = Example("a", "q", "1", None, "custom", (Route("Answer: 1", "1", True, "s"),)).to_dict()
  bad = dict(good, routes=[{"text": "x", "answer": None, "positive": "yes", "source": "s"}])
  path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(DataFormatError, match=r"pool.jsonl:2: .*positive"):
    read_route_pool(path)


def test_route_pool_stats():
  r = Route
  pool = [
      Example(
          "a",
          "q",
          "1",
          None,
          "d",
          (r("t", "1", True, "x"), r("t", "2", False, "x", "arithmetic_slip")),
      ),
      Example(
          "b",
          "q",
          "1",
          None,
          "d",
          (
              r("t", "1", True, "y"),
              r("t", "3", False, "y", "arithmetic_slip"),
              r("t", None, False, "y", "no_answer"),
          ),
      ),
      Example("c", "q", "1", None, "d"),
  ]
  stats = route_pool_stats(pool)
  assert stats["items"] == 3 and stats["routes"] == 5
  assert stats["positive"] == 2 and stats["negative"] == 3
  assert stats["items_with_positive"] == 2 and stats["items_with_negative"] == 2
  assert stats["positive_share"] == pytest.approx(0.4) and stats["negative_share"] == pytest.approx(
      0.6
  )
  assert stats["error_share"] == pytest.approx({"arithmetic_slip": 2 / 3, "no_answer": 1 / 3})
  assert stats["source_share"] == pytest.approx({"x": 0.4, "y": 0.6})
  assert stats["routes_per_item"] == pytest.approx(5 / 3)
  empty = route_pool_stats([])
  assert empty["routes"] == 0 and empty["positive_share"] == 0.0


def test_records_validate_and_round_trip():
  route = Route("Answer: 2", "2", False, "s", "arithmetic_slip")
  ex = Example("a", "q", "1", "c", "d", [route], {"params": {"x": (1, 2)}})
  assert ex.routes == (route,) and hash(ex) == hash(Example("a", "q", "1", "c", "d", (route,)))
  back = Example.from_dict(json.loads(json.dumps(ex.to_dict())))
  assert back.routes == ex.routes and back.meta == {"params": {"x": [1, 2]}}
  assert ex.with_routes([route]).routes == (route, route) and ex.routes == (route,)
  assert (ex.positive_routes, ex.negative_routes) == ((), (route,))
  with pytest.raises(ValueError, match="positive Route cannot carry an error"):
    Route("t", "1", True, "s", "wrong_answer")
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['extra'\]"):
    Example.from_dict(dict(ex.to_dict(), extra=1))
  with pytest.raises(ValueError, match=r"missing field\(s\) \['answer'\]"):
    Route.from_dict({"text": "t", "positive": True, "source": "s"})
  with pytest.raises(TypeError, match="Example.answer must be a str"):
    Example("a", "q", 1, None, "d")


def test_read_route_pool_refuses_an_llm_route_file_and_says_how_to_attach_it(tmp_path):
  path = tmp_path / "llm.jsonl"
  path.write_text(json.dumps({"question_id": "q1", "route": "Answer: 5"}) + "\n")
  with pytest.raises(DataError) as info:
    read_route_pool(path)
  message = str(info.value)
  assert f"{path}:1: this is an LLM route file" in message
  assert f"realm-jax data routes SOURCE --out FILE --route-file {path}" in message


def test_read_route_pool_refuses_an_empty_pool(tmp_path):
  path = tmp_path / "pool.jsonl"
  path.write_text("")
  with pytest.raises(DataError, match="empty route pool"):
    read_route_pool(path)


def test_file_teacher_warns_about_refused_routes(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text("\n".join(json.dumps(x) for x in [
      {"question_id": "q1", "route": "2 + 3 = 5\nAnswer: 5"},
      {"question_id": "q1", "route": " "},
      {"question_id": "q2", "route": "10% of 50 is 5, so the answer is 5. " * 3 + "Answer: 5"},
  ]) + "\n")
  with pytest.warns(DataWarning, match=r"1 empty \(lines \[2\]\).*1 longer than "
                                       r"data.max_route_chars=100 characters \(lines \[3\]\)"):
    labelled = file_teacher(path, _examples(), max_route_chars=100)
  assert [len(ex.routes) for ex in labelled] == [1, 0]
