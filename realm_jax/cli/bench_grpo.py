"""One full GRPO step, timed on a fixed work (see `realm-jax bench`).

Work: 8 prompts x group 4 = 32 completions, 64 random prompt tokens, 128 new
tokens at temperature 1 with no early stop, a cheap host-side reward (share of
even token ids in the completion), GRPO advantages, reference log-probs with
beta = 0.04 (k3 KL in the loss), one AdamW update (lr 1e-6, the run's
optimizer `train.step.make_optimizer`: global-norm clipping at 1.0), loss
aggregation `seq_mean_token_mean`. The phases are the RL loop's own: its
compiled sampler, its log-prob function and its jitted update
(`rl.step.make_rl_step` on an `rl.batch.UpdateBatch`). A step is blocked
until the new params are ready. The first step (compiles) is excluded; the
median of the rest is reported with a per-phase split.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax import model
from realm_jax.model import sampling
from realm_jax.rl import advantages, losses
from realm_jax.rl import step as rl_step
from realm_jax.rl.batch import UpdateBatch
from realm_jax.train import step as train_step

PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS, BETA, LR = 8, 4, 64, 128, 0.04, 1e-6
WORK = (PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS)
# Reference pass and update run 8 completions at a time (same numbers); remat off.
MICROBATCHES = 4


def microbatches_for(cfg: model.ModelConfig) -> int:
  """Microbatches of the reference pass and the update: 4 (8 completions each) for the bench
  model; 8 (4 each) for vocabularies of 32k and more, whose logits dominate a microbatch's
  activations (SmolLM2's shape on the 2-core CPU, 2026-12-06: 51.8 s per step and 6.1 GB peak
  RSS with 8, against 54.1 s and 8.8 GB with 4)."""
  return 8 if cfg.vocab_size >= 32768 else MICROBATCHES


def even_token_reward(completion_tokens_NT: np.ndarray, completion_mask_NT: np.ndarray) -> np.ndarray:
  """Share of even token ids among each completion's tokens (the benchmark's dummy reward)."""
  even = (completion_tokens_NT % 2 == 0) & completion_mask_NT
  return (even.sum(1) / np.maximum(completion_mask_NT.sum(1), 1)).astype(np.float32)


def run_grpo_bench(cfg: model.ModelConfig, repeats: int = 5, seed: int = 0, params=None,
                   microbatches: int = MICROBATCHES, work: tuple[int, int, int, int] | None = None
                   ) -> dict:
  """`repeats` timed GRPO steps after one warm-up step; `params`: the starting weights
  (default random); `work`: (prompts, group, prompt tokens, new tokens), default the fixed
  work above."""
  B, G, T, M = work or WORK  # prompts, samples per prompt, prompt tokens, new tokens
  if params is None:
    params = model.init_params(cfg, jax.random.key(seed))
  ref_params = params  # read only; the update donates (and so consumes) its copy
  optimizer = train_step.make_optimizer(LR, 0, 10 ** 6, 0.0, 1.0)
  state = train_step.init_state(jax.tree.map(lambda x: x.copy(), params), optimizer)
  scfg = sampling.SamplingConfig(max_new_tokens=M, temperature=1.0, stop_ids=(),
                                 num_samples=G)
  generate = sampling.make_generate_fn(cfg, scfg)
  logprob_fn = rl_step.make_logprob_fn(cfg, scfg, M, microbatches)
  loss_cfg = losses.LossConfig(kl_coef=BETA, kl_estimator="k3", aggregation="seq_mean_token_mean")
  update = rl_step.make_rl_step(cfg, optimizer, loss_cfg, completion_len=M,
                                microbatches=microbatches, scfg=scfg)
  rng = np.random.default_rng(seed)
  prompt_mask = jnp.ones((B, T), jnp.int32)

  def one_step(state, i):
    prompts = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, T)), jnp.int32)
    t0 = time.perf_counter()
    roll = generate(state.params, prompts, prompt_mask, jax.random.key(1000 + i))
    toks = np.asarray(roll.tokens)
    t1 = time.perf_counter()
    cmask = np.asarray(roll.completion_mask).astype(bool)
    adv = advantages.grpo(jnp.asarray(even_token_reward(toks, cmask)), G)
    t2 = time.perf_counter()
    ref_logp = jax.block_until_ready(logprob_fn(ref_params, roll.tokens, roll.mask))
    t3 = time.perf_counter()
    batch = UpdateBatch(tokens=roll.tokens, mask=roll.mask,
                        completion_mask=roll.completion_mask.astype(jnp.int32), adv=adv,
                        ref_logp=ref_logp, sampler_logp=roll.logprobs[:, 1:])
    state, _ = update(state, batch)
    jax.block_until_ready(state.params)
    t4 = time.perf_counter()
    return state, {"step": t4 - t0, "rollout": t1 - t0, "reward": t2 - t1, "reference": t3 - t2,
                   "update": t4 - t3}

  times = []
  for i in range(repeats + 1):
    state, t = one_step(state, i)
    times.append(t)
  timed = times[1:]
  med = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
  n = B * G
  return {
      "what": f"GRPO step: rollout {B}x{G} prompts of {T} + {M} "
              "tokens + reward + advantages + reference log-probs (beta 0.04) + one AdamW "
              "update (clip 1.0), seq_mean_token_mean",
      "work": [B, G, T, M],
      "first_step_s_incl_compile": times[0]["step"],
      "step_times_s": [t["step"] for t in timed],
      "median_step_s": med["step"],
      "phase_median_s": {k: v for k, v in med.items() if k != "step"},
      "completion_tokens_per_s": n * M / med["step"],
      "microbatches": microbatches,
  }
