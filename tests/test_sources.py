"""Sources: the GSM8K and route-file fixtures (hand-written), bad input, reasoning-gym, specs."""

import json
import pathlib

import numpy as np
import pytest

from realm_jax.data.records import Example
from realm_jax.errors import ConfigError, DataError, DataWarning
from realm_jax.data.sources import (
    DataFormatError,
    domain_examples,
    gym_score,
    label_route,
    load_gsm8k_jsonl,
    load_route_file,
    load_source,
    read_gsm8k_jsonl,
    reasoning_gym_examples,
)

DATA = pathlib.Path(__file__).parent / "data"
GSM = DATA / "gsm8k_small.jsonl"
ROUTES = DATA / "routes_small.jsonl"


def _write(tmp_path, lines, name="bad.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def test_gsm8k_fixture():
  examples, report = read_gsm8k_jsonl(GSM)
  assert [e.answer for e in examples] == ["31", "6", "2000", "210", "6"]
  assert [e.id for e in examples] == [f"gsm8k_small-{i}" for i in range(1, 6)]
  assert all(e.domain == "gsm8k" and e.routes == () for e in examples)
  assert (
      examples[0].cot
      == "Tom has 3 * 12 = 36 pencils.\nAfter giving away 5 he has 36 - 5 = 31 pencils."
  )
  assert (
      examples[3].question == "Sara reads 15 pages a day. How many pages does she read in 2 weeks?"
  )
  assert report.n_lines == 5 and report.n_examples == 5 and report.n_excluded == 0


def test_gsm8k_counts_unusable_items(tmp_path):
  path = _write(
      tmp_path,
      [
          json.dumps({"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}),
          json.dumps({"question": "   ", "answer": "#### 3"}),
          "",
          json.dumps({"question": "2 + 2?", "answer": "it is four"}),
          json.dumps({"question": "3 + 3?", "answer": "6\n####  "}),
      ],
  )
  examples, report = read_gsm8k_jsonl(path)
  assert [e.answer for e in examples] == ["2"]
  assert report.empty_questions == [2]
  assert report.missing_answers == [4, 5]  # blank line 3 is skipped, line numbers are the file's
  assert report.n_lines == 4 and report.n_examples == 1
  with pytest.warns(UserWarning, match="without a gold answer"):
    assert len(load_gsm8k_jsonl(path)) == 1


@pytest.mark.parametrize(
    "bad_line, field",
    [
        ('{"question": "q", "answer": "#### 1"', "<line>"),
        ('["question", "answer"]', "<line>"),
        ('{"question": "q"}', "answer"),
        ('{"answer": "#### 1"}', "question"),
        ('{"question": 7, "answer": "#### 1"}', "question"),
    ],
)
def test_gsm8k_malformed_line_names_file_line_and_field(tmp_path, bad_line, field):
  good = json.dumps({"question": "1 + 1?", "answer": "#### 2"})
  path = _write(tmp_path, [good, good, bad_line])
  with pytest.raises(DataFormatError) as info:
    read_gsm8k_jsonl(path)
  message = str(info.value)
  assert f"{path}:3:" in message and f"field '{field}'" in message


def test_route_file_fixture_labels():
  examples, _ = read_gsm8k_jsonl(GSM)
  labelled, report = load_route_file(ROUTES, examples)
  assert [e.id for e in labelled] == [e.id for e in examples]
  by_id = {e.id: e for e in labelled}
  # Hand-labelled from tests/data/routes_small.jsonl (gold: 31, 6, 2000, 210).
  q1, q2, q3, q4, q5 = (by_id[f"gsm8k_small-{i}"].routes for i in range(1, 6))
  assert [(r.positive, r.answer, r.source, r.error) for r in q1] == [
      (True, "31", "teacher-a", None),
      (False, "41", "teacher-b", "wrong_answer"),
  ]
  assert [(r.positive, r.answer, r.error) for r in q2] == [
      (True, "6", None),
      (False, None, "no_answer"),
  ]
  assert [(r.positive, r.answer) for r in q3] == [(True, "2,000"), (False, "950")]
  assert [(r.positive, r.answer, r.source) for r in q4] == [
      (True, "210 pages", "file:routes_small.jsonl")
  ]
  assert q5 == ()
  assert report.n_lines == 8 and report.n_positive == 4 and report.n_negative == 3
  assert report.no_answer == [4] and report.unknown_ids == [8]


def test_route_file_keeps_existing_routes_and_int_ids(tmp_path):
  ex = Example("17", "2 + 3?", "5", None, "custom")
  path = _write(tmp_path, [json.dumps({"question_id": 17, "route": "<answer>5</answer>"})])
  first, _ = load_route_file(path, [ex])
  second, _ = load_route_file(path, first)
  assert [r.positive for r in second[0].routes] == [True, True]


@pytest.mark.parametrize(
    "bad_line, field",
    [
        ('{"route": "Answer: 1"}', "question_id"),
        ('{"question_id": "a"}', "route"),
        ('{"question_id": "a", "route": 5}', "route"),
        ('{"question_id": "a", "route": "x", "source": null}', "source"),
        ('{"question_id": true, "route": "x"}', "question_id"),
    ],
)
def test_route_file_malformed(tmp_path, bad_line, field):
  path = _write(
      tmp_path, [json.dumps({"question_id": "a", "route": "Answer: 1"}), bad_line], "routes.jsonl"
  )
  with pytest.raises(DataFormatError, match=rf"routes.jsonl:2: field '{field}'"):
    load_route_file(path, [Example("a", "q", "1", None, "custom")])


def test_label_route():
  assert label_route("so $12.50 in all.\nAnswer: $12.50", "12.5", "s").positive
  wrong = label_route("<answer>13</answer>", "12", "s")
  assert (wrong.positive, wrong.answer, wrong.error) == (False, "13", "wrong_answer")
  assert label_route("no idea", "12", "s").error == "no_answer"


def test_domain_examples_and_specs():
  a = domain_examples("tariff", 4, 0, 1)
  assert a == load_source("domain:tariff", 4, 0, 1)
  assert all(e.domain == "tariff" for e in a)
  subset = load_source(f"gsm8k:{GSM}", 3, seed=0)
  ids = [e.id for e in subset]
  assert len(ids) == 3 and ids == sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1]))
  assert subset == load_source(f"gsm8k:{GSM}", 3, seed=0)
  assert len(load_source(f"gsm8k:{GSM}", None, seed=0)) == 5
  assert len(load_source(f"gsm8k:{GSM}", 50, seed=0)) == 5


@pytest.mark.parametrize(
    "spec, match",
    [
        ("tariff", "expected one of domain:<name>, gym:<task>, gsm8k:<path>"),
        ("web:foo", "expected one of"),
        ("domain:", "expected one of"),
        ("domain:shipping", "valid domains: dosing, tariff, tax"),
        ("gym:sudoku", "supported tasks: basic_arithmetic, chain_sum, gsm_symbolic, syllogism"),
    ],
)
def test_bad_specs(spec, match):
  with pytest.raises(ValueError, match=match):
    load_source(spec, 3, 0)


def test_missing_gsm8k_file(tmp_path):
  with pytest.raises(FileNotFoundError):
    load_source(f"gsm8k:{tmp_path / 'nope.jsonl'}", 3, 0)


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "gsm_symbolic", "syllogism"])
def test_reasoning_gym_examples(task):
  rg = pytest.importorskip("reasoning_gym")
  examples = reasoning_gym_examples(task, 6, seed=4)
  reference = list(rg.create_dataset(task, size=6, seed=4))
  assert [e.question for e in examples] == [r["question"] for r in reference]
  assert [e.answer for e in examples] == [r["answer"] for r in reference]
  assert examples == reasoning_gym_examples(task, 6, seed=4)
  json.dumps([e.to_dict() for e in examples])  # the stored entry is JSON-safe
  for ex in examples:
    assert ex.domain == f"gym:{task}"
    assert gym_score(ex, ex.answer) == 1.0
    if task == "gsm_symbolic":
      assert ex.cot and "####" not in ex.cot
    else:
      assert ex.cot is None


def test_gym_score_rejects_other_examples():
  with pytest.raises(ValueError, match="did not come from reasoning-gym"):
    gym_score(Example("a", "q", "1", None, "custom"), "1")


def test_bad_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "routes.jsonl"
  good = json.dumps({"question_id": "a", "route": "Answer: 1"}).encode()
  path.write_bytes(good + b"\n" + b'{"question_id": "a", "route": "caf\xe9"}\n')
  with pytest.raises(DataFormatError, match=r"routes.jsonl:2: field '<line>': invalid UTF-8 at "
                                            r"byte 34"):
    load_route_file(path, [Example("a", "q", "1", None, "custom")])


def test_utf8_bom_and_crlf_are_read(tmp_path):
  path = tmp_path / "g.jsonl"
  line = json.dumps({"question": "1 + 1?", "answer": "#### 2"}).encode()
  path.write_bytes(b"\xef\xbb\xbf" + line + b"\r\n" + line + b"\r\n")
  examples, report = read_gsm8k_jsonl(path)
  assert [e.answer for e in examples] == ["2", "2"] and report.n_lines == 2


def test_empty_and_oversized_routes_are_refused_and_counted(tmp_path):
  lines = [
      {"question_id": "a", "route": "Answer: 1"},
      {"question_id": "a", "route": "   \n\t"},
      {"question_id": "a", "route": ""},
      {"question_id": "a", "route": "x" * 40 + " Answer: 1"},  # 50 characters
      {"question_id": "a", "route": "x" * 39 + " Answer: 1"},  # 49
  ]
  path = _write(tmp_path, [json.dumps(x) for x in lines], "routes.jsonl")
  ex = [Example("a", "q", "1", None, "custom")]
  labelled, report = load_route_file(path, ex, max_route_chars=49)
  assert [r.text for r in labelled[0].routes] == ["Answer: 1", "x" * 39 + " Answer: 1"]
  assert report.empty_routes == [2, 3] and report.too_long == [4] and report.n_refused == 3
  assert "data.max_route_chars=49" in report.summary() and "lines [4]" in report.summary()
  labelled, report = load_route_file(path, ex)  # the default limit keeps both long ones
  assert len(labelled[0].routes) == 3 and report.too_long == []


def test_default_route_limit_is_above_every_builtin_route():
  from realm_jax.data import teachers
  from realm_jax.data.config import MAX_ROUTE_CHARS
  for name in ("tariff", "dosing", "tax"):
    for difficulty in (0, 3, 8):
      examples = domain_examples(name, 40, 0, difficulty)
      pool = teachers.domain_teacher(name, examples, np.random.default_rng(0), 4)
      assert max(len(r.text) for e in pool for r in e.routes) < MAX_ROUTE_CHARS / 2


def test_non_numeric_gold_answers_are_warned_with_counts(tmp_path):
  path = _write(tmp_path, [
      json.dumps({"question": "a?", "answer": "#### seven"}),
      json.dumps({"question": "b?", "answer": "#### 7 apples"}),
      json.dumps({"question": "c?", "answer": "#### 1,234"}),
      json.dumps({"question": "d?", "answer": "#### -0.5"}),
      json.dumps({"question": "e?", "answer": "#### 3/4"}),
  ])
  examples, report = read_gsm8k_jsonl(path)
  assert [e.answer for e in examples] == ["seven", "7 apples", "1234", "-0.5", "3/4"]
  assert report.non_numeric_answers == [1, 2] and report.n_excluded == 0
  with pytest.warns(DataWarning, match=r"2 kept items have a gold answer .* not a plain number "
                                       r"\(lines \[1, 2\]\)"):
    load_gsm8k_jsonl(path)


def test_empty_sources_are_errors(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n\n")
  with pytest.raises(DataError, match="empty.jsonl: no usable examples"):
    load_source(f"gsm8k:{empty}", None, 0)
  unusable = _write(tmp_path, [json.dumps({"question": " ", "answer": "#### 1"})])
  with pytest.raises(DataError, match=r"no usable examples .*1 with an empty question"):
    read_gsm8k_jsonl(unusable)
  with pytest.raises(DataError, match="no routes"):
    load_route_file(empty, [Example("a", "q", "1", None, "custom")])


def test_spec_errors_are_config_errors():
  for spec in ("tariff", "domain:shipping", "gym:sudoku"):
    with pytest.raises(ConfigError):
      load_source(spec, 3, 0)


def test_data_route_file_adds_the_file_routes_to_the_training_questions():
  """data.route_file through `build_run_data`: each training question keeps its own perturbed
  routes and gains the file's, as hand-labelled above; eval questions gain none; with
  max_route_chars below every route's length, all are refused."""
  from realm_jax.data.config import DataConfig
  from realm_jax.rl import corpus
  file_routes = {  # id -> (positive, answer) of the file's routes, from routes_small.jsonl
      "gsm8k_small-1": [(True, "31"), (False, "41")], "gsm8k_small-2": [(True, "6"), (False, None)],
      "gsm8k_small-3": [(True, "2,000"), (False, "950")], "gsm8k_small-4": [(True, "210 pages")],
      "gsm8k_small-5": []}
  spec = dict(source=f"gsm8k:{GSM}", num_train=4, num_eval=1, num_valid=0, seed=3)
  plain = corpus.build_run_data(DataConfig(**spec))
  with pytest.warns(DataWarning):  # the file names a question that is not in the data
    withf = corpus.build_run_data(DataConfig(**spec, route_file=str(ROUTES)))
  assert [e.id for e in withf.train] == [e.id for e in plain.train] and len(plain.train) == 4
  assert withf.eval == plain.eval
  for before, after in zip(plain.train, withf.train):
    n = len(before.routes)
    assert after.routes[:n] == before.routes
    assert [(r.positive, r.answer) for r in after.routes[n:]] == file_routes[after.id]
  assert sum(len(file_routes[e.id]) for e in withf.train) >= 5  # the file's routes landed
  with pytest.warns(DataWarning):
    none = corpus.build_run_data(DataConfig(**spec, route_file=str(ROUTES), max_route_chars=5))
  assert [e.routes for e in none.train] == [e.routes for e in plain.train]
