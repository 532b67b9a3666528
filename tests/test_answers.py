"""Answer extraction and equivalence: hand-checked cases, reasoning-gym as an independent judge."""

import numpy as np
import pytest

from realm_jax.data.answers import extract_answer, is_equivalent, normalize_number, score_batch


@pytest.mark.parametrize(
    "text, expected",
    [
        # 1. <answer> tags win over everything, the last one counts.
        ("<answer>5</answer> and later <answer> 7 </answer> \\boxed{9}\n#### 11", "7"),
        ("<answer></answer> but the number 5", None),  # an empty answer is no answer
        ("<ANSWER>Yes</ANSWER>", "Yes"),
        # 2. \boxed with nested braces beats #### and numbers.
        ("so \\boxed{\\frac{1}{2}} is it\n#### 3", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("unclosed \\boxed{4 and then 8", "8"),
        # 3. #### line.
        ("steps 3 + 4\n#### 1,234\nmore 99", "1,234"),
        # 4. Answer: line.
        ("[R2] base = 3 x 3 = 9\nAnswer: 13", "13"),
        ("reasoning 4\nFinal answer: No", "No"),
        # 5. last number; digits glued to letters (rule ids) are not numbers.
        ("we get 12 apples, then 15.5 remain", "15.5"),
        ("by [R2] and R3", None),
        ("5-3 gives the answer 2.", "2"),
        ("she pays -4 now", "-4"),
        ("it is 3/4 of the cake", "3/4"),
        ("a rise of 12%", "12%"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "s, value",
    [
        ("12", 12.0),
        ("-12", -12.0),
        ("+3", 3.0),
        ("1,234", 1234.0),
        ("1,234,567.5", 1234567.5),
        ("$12.50", 12.5),
        ("-$12", -12.0),
        ("$-12", -12.0),
        ("\\$5", 5.0),
        ("€3", 3.0),
        ("£ 7", 7.0),
        ("12 €", 12.0),
        ("12 kg", 12.0),
        ("12kg", 12.0),
        ("40 km/h", 40.0),
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{8}", -0.125),
        ("12%", 12.0),
        (".5", 0.5),
        ("12.", 12.0),
        ("1e3", 1000.0),
        ("x = 5", 5.0),
        ("−3", -3.0),
        ("1,5", None),
        ("1,2345", None),
        ("3/0", None),
        ("12 or 13", None),
        ("Yes", None),
        ("", None),
        ("--5", None),
    ],
)
def test_normalize_number(s, value):
  assert normalize_number(s) == value


@pytest.mark.parametrize(
    "predicted, gold",
    [
        ("12", "12"),
        ("12.0", "12"),
        ("012", "12"),
        ("1,234", "1234"),
        ("$12.50", "12.5"),
        ("12.50 dollars", "12.5"),
        ("12 kg", "12"),
        ("12 mg", "12 kg"),  # units are dropped, not converted
        ("0.75", "3/4"),
        ("\\frac{3}{4}", "0.75"),
        ("12%", "12"),  # percent rule: as written ...
        ("12%", "0.12"),  # ... or divided by 100
        ("0.12", "12%"),
        ("-5", "−5"),
        ("0.3333333", "1/3"),  # within rel_tol 1e-6
        ("12586100868344725", "12586100868344725"),
        ("Yes.", "yes"),
        ("  New   York ", "new york"),
        ("(Q ∧ P)", "Q ∧ P"),
    ],
)
def test_equivalent(predicted, gold):
  assert is_equivalent(predicted, gold)
  assert is_equivalent(gold, predicted)


@pytest.mark.parametrize(
    "predicted, gold",
    [
        ("13", "12"),
        ("-12", "12"),
        ("12", "0.12"),  # no % sign: no division by 100
        ("1200", "12%"),
        ("1000001", "1000000"),  # whole numbers compare exactly, whatever their size
        ("12586100868344726", "12586100868344725"),
        ("0.333", "1/3"),
        ("1.5", "1,5"),  # "1,5" is not a number: a number never equals text
        ("twelve", "12"),
        ("No", "Yes"),
        ("", ""),
        ("...", "!"),
    ],
)
def test_not_equivalent(predicted, gold):
  assert not is_equivalent(predicted, gold)


def test_tolerances_are_parameters():
  assert not is_equivalent("1.01", "1")
  assert is_equivalent("1.01", "1", rel_tol=0.02)
  assert is_equivalent("0.0000005", "0")  # abs_tol 1e-6 (one side is not whole)
  assert not is_equivalent("0.0000005", "0", abs_tol=1e-9)


def test_score_batch():
  texts = [
      "<answer>42</answer>",
      "so \\boxed{41}",
      "#### 1,000",
      "nothing at all",
      "Answer: $7.00",
      "<answer>yes</answer>",
  ]
  golds = ["42", "42", "1000", "3", "7", "Yes"]
  scores = score_batch(texts, golds)
  assert scores.dtype == np.float32 and scores.shape == (6,)
  np.testing.assert_array_equal(scores, np.array([1, 0, 1, 0, 1, 1], np.float32))
  assert score_batch([], []).shape == (0,)
  with pytest.raises(ValueError, match="2 texts but 1 gold"):
    score_batch(["a", "b"], ["a"])


def _perturbations(task, gold):
  if task == "syllogism":
    return [gold, {"Yes": "No", "No": "Yes"}[gold], "Maybe"]
  g = int(gold)
  return [gold, str(g + 1), str(g * 2), str(g - 10), "banana"]


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "gsm_symbolic", "syllogism"])
def test_agrees_with_reasoning_gym_judge(task):
  rg = pytest.importorskip("reasoning_gym")
  dataset = rg.create_dataset(task, size=40, seed=11)
  checked = 0
  for entry in dataset:
    gold = entry["answer"]
    for candidate in _perturbations(task, gold):
      theirs = dataset.score_answer(candidate, entry) == 1.0
      ours = is_equivalent(candidate, gold)
      assert ours == theirs, (task, entry["question"], gold, candidate)
      ours_in_text = score_batch([f"Let me think.\n<answer>{candidate}</answer>"], [gold])[0] == 1.0
      assert ours_in_text == theirs
      checked += 1
  assert checked >= 120
