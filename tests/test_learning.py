"""The learning check: GRPO through the library's own RL step raises held-out accuracy.

A verifiable task small enough for a CPU test: the question is six letters from
a..j, the answer is the position (0..9) of the first letter in the alphabet
("cbjadf" -> 2). A 2-layer model is trained briefly with SFT on 400 questions
(the fixed, weak start: ~1/3 greedy accuracy), then GRPO runs 120 steps of 16
prompts x 8 samples at T = 1 on 2,000 training questions, rewarded only by the
answer check. Greedy accuracy on 256 held-out questions (never trained on) is
compared paired, before and after.

The check fails when any part that makes the policy gradient point the right
way breaks: the sign of the gradient, the completion mask (which tokens the
loss trains), the grouping of advantages (which samples are compared), or the
alignment of rewards to rows. Each was broken in turn in a scratch copy; see
the closing note of the issue that added this test for what it printed.
"""

import dataclasses

import jax
import numpy as np

from realm_jax import model
from realm_jax.data import pipeline as data
from realm_jax.data.records import Example
from realm_jax.evaluation import paired
from realm_jax.model import sampling, tokenizer as tok_lib
from realm_jax.rl import loop as rl_loop, mrpv
from realm_jax.rl.config import RLConfig
from realm_jax.train import generation, step as train_step

LETTERS = "abcdefghij"
PROMPTS, GROUP, RL_STEPS, RL_LR = 16, 8, 120, 1e-3


def _gold(q: str) -> str:
  return str(LETTERS.index(q[0]))


def _questions():
  rng = np.random.default_rng(0)
  qs = sorted({"".join(rng.choice(list(LETTERS), 6)) for _ in range(3000)})
  rng.shuffle(qs)
  return qs[:2000], qs[2000:2256]


def _greedy_correct(params, cfg, tok, questions) -> np.ndarray:
  scfg = sampling.SamplingConfig(max_new_tokens=3, temperature=0.0, stop_ids=tuple(tok.stop_ids),
                                 pad_id=tok.pad_id)
  outs = generation.generate_texts(params, cfg, tok, [q + "=" for q in questions], scfg, 64,
                                   chat=False, seed=0)
  return np.array([o[0].strip() == _gold(q) for o, q in zip(outs, questions)])


def test_grpo_learns():
  train_q, eval_q = _questions()
  assert not set(train_q) & set(eval_q)
  tok = tok_lib.train_sentencepiece([q + "=" + _gold(q) for q in train_q[:500]]
                                    + [LETTERS + "0123456789="], 300, hard_vocab_limit=False,
                                    user_symbols=())
  cfg = model.ModelConfig(vocab_size=tok.vocab_size, num_layers=2, d_model=64, num_heads=4,
                          num_kv_heads=2, head_dim=16, mlp_dim=128, max_seq_len=64)

  # The fixed weak start: 40 SFT steps on 400 of the training questions.
  opt = train_step.make_optimizer(3e-3, 0, 40, 0.0, 1.0)
  state = train_step.init_state(model.init_params(cfg, jax.random.key(0)), opt)
  sft = train_step.make_sft_step(cfg, opt)
  batches = data.sft_batches([(q + "=", _gold(q)) for q in train_q[:400]], tok, 16, (16,), 0)
  for _ in range(40):
    state, _ = sft(state, next(batches))
  start = state.params
  before = _greedy_correct(start, cfg, tok, eval_q)

  # GRPO on the answer reward alone, no routes, no KL.
  rcfg = RLConfig(steps=RL_STEPS, batch_prompts=PROMPTS, group_size=GROUP, lr=RL_LR, warmup=0,
                  max_new_tokens=3, routes="never",
                  mrpv=mrpv.MRPVConfig(without_routes_template="{question}=", w_ans=1.0,
                                       w_ver=0.0, w_fmt=0.0),
                  loss=dataclasses.replace(RLConfig().loss, kl_coef=0.0))
  ctx = rl_loop.RLContext(model_cfg=cfg, tokenizer=tok, prompt_buckets=(16,),
                          route_buckets=(16,), seed=0)
  opt = train_step.make_optimizer(rcfg.lr, rcfg.warmup, rcfg.steps, 0.0, 1.0)
  rl = rl_loop.RLLoop(ctx, rcfg, rcfg.eaai, opt)
  ref = jax.tree.map(lambda x: x.copy(), start)
  state = train_step.init_state(start, opt)
  examples = [Example(id=q, question=q, answer=_gold(q), cot="", domain="first-letter")
              for q in train_q]
  rollout_acc = []
  for s in range(RL_STEPS):
    batch = [examples[(s * PROMPTS + i) % len(examples)] for i in range(PROMPTS)]
    state, m = rl.step(state, ref, batch, s, 0)
    rollout_acc.append(m["accuracy"])
  after = _greedy_correct(state.params, cfg, tok, eval_q)

  result = paired.paired_compare(before, after)
  early, late = np.mean(rollout_acc[:10]), np.mean(rollout_acc[-10:])
  print(f"held-out greedy accuracy {result.acc_a:.3f} -> {result.acc_b:.3f}; "
        f"{result.summary('start', 'GRPO')}; rollout accuracy {early:.3f} -> {late:.3f}")
  assert result.diff >= 0.15 and result.p_value < 1e-4, result.summary("start", "GRPO")
  assert late > early + 0.1, (early, late)
