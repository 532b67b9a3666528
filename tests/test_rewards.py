"""Reward scorers: answer, format, verification; matrix, weights, safety."""

import numpy as np
import pytest

from realm_jax.rl import mrpv, rewards

TOL = 1e-6

GOOD_WITH = ("<verify>A: correct; B: wrong</verify>\n<think>2 + 2 = 4"
             "</think>\n<answer>4</answer>")
GOOD_WITHOUT = "<think>2 + 2 = 4</think><answer>4</answer>"


def test_answer_reward():
  completions = [GOOD_WITH, "<think>x</think><answer>5</answer>",
                 "I do not know.", "<answer>1/2</answer>", "<answer></answer>"]
  golds = ["4", "4", "4", "0.5", "4"]
  np.testing.assert_array_equal(
      rewards.answer_reward(["q"] * 5, completions, golds), [1, 0, 0, 1, 0])
  assert rewards.answer_reward(["q"] * 5, completions, golds).dtype == np.float32
  with pytest.raises(ValueError, match="golds"):
    rewards.answer_reward(["q"], ["a"], [])


@pytest.mark.parametrize("completion, shown, expected", [
    (GOOD_WITH, True, 1),
    ("  \n" + GOOD_WITH + "\n\n", True, 1),           # surrounding whitespace
    ("<verify>A: correct</verify><think>line 1\nline 2</think>"
     "<answer>4</answer>", True, 1),                  # multi-line content
    (GOOD_WITHOUT, True, 0),                          # verify missing
    (GOOD_WITHOUT, False, 1),
    (GOOD_WITH, False, 0),                            # verify without routes
    ("<think>x</think><answer>4</answer> extra", False, 0),   # trailing text
    ("Sure! <think>x</think><answer>4</answer>", False, 0),   # leading text
    ("<answer>4</answer><think>x</think>", False, 0),         # wrong order
    ("<think> </think><answer>4</answer>", False, 0),         # blank think
    ("<think>x</think><answer>4</answer><answer>5</answer>", False, 0),
    ("<think>a <think>b</think></think><answer>4</answer>", False, 0),
    ("<think>x</think><answer>4", False, 0),                  # unclosed
    ("", False, 0),
])
def test_format_reward(completion, shown, expected):
  out = rewards.format_reward(["q"], [completion], routes_shown=np.array([shown]))
  assert out.dtype == np.float32 and out.shape == (1,)
  assert out[0] == expected


def test_format_reward_length_mismatch():
  with pytest.raises(ValueError, match="routes_shown"):
    rewards.format_reward(["q", "q"], ["a", "b"], np.array([True]))


def test_verification_reward_golden():
  # labels [1, 0, 1] for every row.
  #   row 0: verdicts [1, 0, -1], all shown -> hits 1, 1, 0 -> 2/3
  #   row 1: verdicts [1, 1, 1], all shown -> 1, 0, 1 -> 2/3
  #   row 2: verdicts [0, 0, 0], routes 0, 1 shown -> 0, 1 -> 1/2
  #   row 3: verdicts [1, -1, -1], only route 0 shown -> 1
  #   row 4: nothing shown -> 0
  verdicts = np.array([[1, 0, -1], [1, 1, 1], [0, 0, 0], [1, -1, -1],
                       [1, 0, 1]], np.int8)
  labels = np.tile(np.array([True, False, True]), (5, 1))
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]],
                  bool)
  out = rewards.verification_reward(["q"] * 5, [""] * 5, verdicts=verdicts, route_labels=labels,
                                    route_mask=mask)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [2 / 3, 2 / 3, 0.5, 1.0, 0.0], atol=TOL)
  with pytest.raises(ValueError, match="must all be"):
    rewards.verification_reward(["q"] * 5, [""] * 5, verdicts, labels[:, :2], mask)


def test_verification_reward_from_parsed_verdicts():
  completions = ["<verify>A: wrong; B: correct</verify>",
                 "<verify>B: correct</verify>", "no block"]
  verdicts = mrpv.parse_verdicts_batch(completions, 2)
  labels = np.array([[False, True]] * 3)
  out = rewards.verification_reward(["q"] * 3, completions, verdicts, labels,
                                    np.ones((3, 2), bool))
  np.testing.assert_allclose(out, [1.0, 0.5, 0.0], atol=TOL)


PROMPTS = ["2+2?"] * 3


def _batch():
  """(completions, columns) of three rows."""
  return [GOOD_WITH, GOOD_WITHOUT, "<answer>3</answer>"], {
      "golds": ["4", "4", "4"],
      "routes_shown": np.array([True, False, True]),
      "verdicts": np.array([[1, 0], [-1, -1], [1, 1]], np.int8),
      "route_labels": np.array([[True, False]] * 3),
      "route_mask": np.array([[1, 1], [0, 0], [1, 1]], bool),
  }


def test_reward_matrix_and_combine_golden():
  # answer:       [1, 1, 0]
  # verification: [1 (both right), 0 (none shown), 0.5 (B wrong)]
  # format:       [1, 1, 0]
  # weights (1, 0.5, 0.1): [1 + 0.5 + 0.1, 1 + 0 + 0.1, 0 + 0.25 + 0] =
  #   [1.6, 1.1, 0.25]
  r, names, metrics = rewards.reward_matrix(rewards.default_scorers(), PROMPTS, *_batch())
  assert names == ["answer", "verification", "format"]
  assert r.dtype == np.float32 and r.shape == (3, 3)
  np.testing.assert_allclose(r, [[1, 1, 1], [1, 0, 1], [0, 0.5, 0]],
                             atol=TOL)
  np.testing.assert_allclose(metrics["reward/verification"], 0.5, atol=TOL)
  assert metrics["reward/answer_errors"] == 0.0
  weights = mrpv.MRPVConfig(w_ans=1.0, w_ver=0.5, w_fmt=0.1).reward_weights
  total = rewards.combine(r, [weights[n] for n in names])
  assert total.dtype == np.float32
  np.testing.assert_allclose(total, [1.6, 1.1, 0.25], atol=TOL)
  with pytest.raises(ValueError, match="weights"):
    rewards.combine(r, [1.0, 2.0])


def test_safe_scorer_zeroes_and_counts_failures():
  def length_unless_boom(prompts, completions, **_):
    out = []
    for c in completions:
      if "boom" in c:
        raise RuntimeError("strange completion")
      out.append(len(c))
    return np.array(out, np.float32)

  batch = (["p"] * 4, ["ab", "boom", "abcd", "boom!"], {})
  scores, errors = rewards.safe_scorer(length_unless_boom)(*batch)
  np.testing.assert_array_equal(scores, [2, 0, 4, 0])
  assert errors == 2
  r, _, metrics = rewards.reward_matrix({"len": length_unless_boom}, *batch)
  np.testing.assert_array_equal(r[:, 0], [2, 0, 4, 0])
  assert metrics["reward/len_errors"] == 2.0
  # Non-finite scores are zeroed and counted too.
  nan_scorer = lambda p, c, **_: np.array([1.0, np.nan, np.inf, 0.5])
  scores, errors = rewards.safe_scorer(nan_scorer)(*batch)
  np.testing.assert_array_equal(scores, [1.0, 0.0, 0.0, 0.5])
  assert errors == 2
  # A scorer with a wrong output shape is a bug: loud.
  with pytest.raises(ValueError, match="shape"):
    rewards.safe_scorer(lambda p, c, **_: np.zeros(3), "bad")(*batch)


def test_non_string_completion_scores_zero_in_matrix():
  _, columns = _batch()
  r, names, metrics = rewards.reward_matrix(
      {"answer": rewards.default_scorers()["answer"]}, PROMPTS,
      [GOOD_WITH, None, "<answer>4</answer>"], columns)
  np.testing.assert_array_equal(r[:, 0], [1, 0, 1])
  assert metrics["reward/answer_errors"] == 1.0


def test_batch_fields_must_share_length():
  completions, columns = _batch()
  columns["golds"] = ["4"]
  with pytest.raises(ValueError, match="length N"):
    rewards.reward_matrix(rewards.default_scorers(), PROMPTS, completions, columns)


def test_a_reward_reads_its_columns_by_name_and_ignores_the_rest():
  def shown_bonus(prompts, completions, routes_shown, **_):
    return np.where(routes_shown, 2.0, 0.0) + np.array([len(p) for p in prompts])
  completions, columns = _batch()
  r, _, _ = rewards.reward_matrix({"b": shown_bonus}, ["a", "bb", "ccc"], completions, columns)
  np.testing.assert_array_equal(r[:, 0], [3.0, 2.0, 5.0])


def test_group_signal_names_the_columns_that_move_each_group():
  # G = 3, four groups; columns answer (w 1), verification (w 0.5), format (w 0.1)
  #   g0: answer 1,0,1 varies; verification constant; format constant -> answer alone
  #   g1: answer all 1; verification 1, 0.5, 1 varies; format constant -> verification alone
  #   g2: answer all 0; verification constant; format 1,0,1 varies       -> format alone
  #   g3: answer 1,0,0 and verification 0,1,1 vary                       -> neither alone
  r = np.array([[1, 1, 1], [0, 1, 1], [1, 1, 1],
                [1, 1, 1], [1, .5, 1], [1, 1, 1],
                [0, 0, 1], [0, 0, 0], [0, 0, 1],
                [1, 0, 1], [0, 1, 1], [0, 1, 1]], np.float32)
  names = ["answer", "verification", "format"]
  m = rewards.group_signal(r, names, [1.0, 0.5, 0.1], 3)
  assert m["signal/answer_varies"] == 2 / 4 and m["signal/answer_only"] == 1 / 4
  assert m["signal/verification_varies"] == 2 / 4 and m["signal/verification_only"] == 1 / 4
  assert m["signal/format_varies"] == 1 / 4 and m["signal/format_only"] == 1 / 4
  # weight 0 on verification: it still varies, but never moves a group; g3 is answer's alone
  m0 = rewards.group_signal(r, names, [1.0, 0.0, 0.1], 3)
  assert m0["signal/verification_varies"] == 2 / 4 and m0["signal/verification_only"] == 0
  assert m0["signal/answer_only"] == 2 / 4
  with pytest.raises(ValueError, match="whole groups of 5"):
    rewards.group_signal(r, names, [1.0, 0.5, 0.1], 5)
  with pytest.raises(ValueError, match="2 weights"):
    rewards.group_signal(r, names, [1.0, 0.5], 3)
