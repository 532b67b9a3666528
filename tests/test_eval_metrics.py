"""`evaluate_params`' metrics against hand-counted values: the sampler is replaced by
scripted completions, so greedy accuracy, route verdicts, pass@k and maj@k are each checked
against what a reader counts on the scripts below."""

import types

import numpy as np
import pytest

from realm_jax.data.records import Example, Route
from realm_jax.evaluation import accuracy
from realm_jax.rl import mrpv

POS = ("the rule applies, so 5", "count again: 7")
NEG = ("the rule does not apply, so 4", "one more: 8")
EXAMPLES = [Example(id=f"q{i}", question=f"question {i}?", answer=gold, cot=None, domain="t",
                    routes=(Route(POS[i], gold, True, "t"), Route(NEG[i], "x", False, "t")))
            for i, gold in enumerate(("5", "7"))]
MRPV = mrpv.MRPVConfig(num_routes=2, min_positive=1, min_negative=1, all_same_share=0.0)
TOK = types.SimpleNamespace(stop_ids=(1,), pad_id=0)
GREEDY = ["<verify>A: correct; B: wrong</verify> <answer>5</answer>",  # right
          "<verify>A: wrong; B: correct</verify> <answer>8</answer>"]  # wrong
SAMPLES = [["<answer>4</answer>", "<answer>4</answer>", "<answer>5</answer>"],  # pass, maj 4
           ["<answer>7</answer>", "so the answer is 7.0", "no idea"]]  # pass, maj 7 (= 7.0)


def _fake(calls):
  def generate_texts(params, model_cfg, tok, prompts, scfg, batch_size, chat, seed):
    calls.append((scfg, batch_size, seed))
    assert len(prompts) == 2
    return [[g] for g in GREEDY] if scfg.temperature == 0 else SAMPLES
  return generate_texts


@pytest.mark.parametrize("with_routes", [False, True])
def test_greedy_pass_and_majority_counted_by_hand(monkeypatch, with_routes):
  calls = []
  monkeypatch.setattr(accuracy.generation, "generate_texts", _fake(calls))
  cfg = accuracy.EvalConfig(num_questions=2, k=3, temperature=0.7, batch_size=9)
  res = accuracy.evaluate_params(None, None, TOK, EXAMPLES, cfg, MRPV, with_routes=with_routes,
                                 seed=5)
  assert res["correct"] == [1, 0] and res["accuracy"] == 0.5 and res["n"] == 2
  assert res["pass@3"] == 1.0  # both questions have a right sample
  assert res["maj@3"] == 0.5  # q0's majority is 4 (wrong); q1's is 7, "7.0" voting with it
  (greedy, gb, gs), (sampled, sb, ss) = calls
  assert (greedy.temperature, greedy.num_samples, gb, gs) == (0.0, 1, 9, 5)
  assert (sampled.temperature, sampled.num_samples, sb, ss) == (0.7, 3, 3, 6)  # 9 // k rows
  if not with_routes:
    assert "verification_accuracy" not in res
    return
  # q0's completion calls A correct, q1's calls B correct: a question scores 1 when the route
  # it calls correct is its positive one, else 0 (both verdicts wrong). Where each route
  # landed is read off the prompt text (here both positives are shown as A: 1 and 0).
  prompts, _, _ = accuracy.eval_prompts(EXAMPLES, MRPV, True, 5)
  pos_first = [p.index(POS[i]) < p.index(NEG[i]) for i, p in enumerate(prompts)]
  assert res["verification_accuracy"] == pytest.approx(np.mean([pos_first[0], not pos_first[1]]))


def test_no_sampling_at_k_1_or_when_not_asked(monkeypatch):
  calls = []
  monkeypatch.setattr(accuracy.generation, "generate_texts", _fake(calls))
  res = accuracy.evaluate_params(None, None, TOK, EXAMPLES, accuracy.EvalConfig(k=3), MRPV,
                                 with_routes=False, sample=False)
  assert len(calls) == 1 and "pass@3" not in res and res["accuracy"] == 0.5
  res = accuracy.evaluate_params(None, None, TOK, EXAMPLES, accuracy.EvalConfig(k=1), MRPV,
                                 with_routes=False)
  assert len(calls) == 2 and not any(k.startswith(("pass@", "maj@")) for k in res)
