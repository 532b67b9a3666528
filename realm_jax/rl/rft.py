"""RFT baseline: fine-tune on the model's own correct samples (rejection sampling).

Each round samples `samples_per_question` completions per training question
(no routes), keeps the distinct ones whose answer verifies, and runs the
supervised loop on them. Unlike MRPV it never learns from wrong processes.

Resume: round r trains as phase `rft<r>` with its own checkpoints; a resumed
run regenerates the samples of finished rounds from the same params and seeds
(so the same pairs), finds their checkpoints final and moves on. Each round's
`rft` metrics row is written once (`MetricsWriter.write_once`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from realm_jax.data import answers
from realm_jax.model import sampling
from realm_jax.rl import mrpv
from realm_jax.rl.config import RFTConfig
from realm_jax.train import generation, sft as distill
from realm_jax.train.config import SFTConfig


def correct_samples(prompts: list[str], samples: list[list[str]], golds: list[str]
                    ) -> list[tuple[str, str]]:
  """Distinct (prompt, completion) pairs whose extracted answer equals the gold."""
  pairs = []
  for prompt, outs, gold in zip(prompts, samples, golds):
    seen = set()
    for text in outs:
      if text not in seen and answers.is_correct(text, gold):
        seen.add(text)
        pairs.append((prompt, text))
  return pairs


def update_batch_size(num_pairs: int, batch_size: int, process_count: int = 1) -> int:
  """Rows per update: `batch_size`, or all the pairs a round kept when fewer (a
  weak model's few correct samples still train), rounded down to a multiple of
  the process count; 0 means no update."""
  return min(batch_size, num_pairs) // process_count * process_count


def run_rft(ctx: Any, sft_ctx: distill.SFTContext, params: Any, cfg: RFTConfig) -> Any:
  """`cfg.rounds` rounds of sample, filter, fine-tune; `ctx` is the run's context
  (`cfg`, `model_cfg`, `tokenizer`, `data.train`, `chat`). Returns the new params."""
  train = ctx.data.train
  mcfg = ctx.cfg.rl.mrpv
  max_new = ctx.cfg.rl.max_new_tokens if cfg.max_new_tokens is None else cfg.max_new_tokens
  scfg = sampling.SamplingConfig(max_new_tokens=max_new,
                                 temperature=cfg.temperature,
                                 stop_ids=tuple(ctx.tokenizer.stop_ids),
                                 num_samples=cfg.samples_per_question,
                                 pad_id=ctx.tokenizer.pad_id)
  for r in range(cfg.rounds):
    start = (r * cfg.questions) % len(train)
    chunk = (train[start:] + train[:start])[:cfg.questions]
    prompts = [mrpv.build_prompt(ex.question, [], mcfg) for ex in chunk]
    samples = generation.generate_texts(params, ctx.model_cfg, ctx.tokenizer, prompts, scfg,
                                        max(1, 64 // cfg.samples_per_question), ctx.chat,
                                        ctx.cfg.seed + 1000 * r)
    pairs = correct_samples(prompts, samples, [ex.answer for ex in chunk])
    sft_ctx.writer.write_once("rft", r, {"round": r, "kept_samples": len(pairs),
                                         "questions": len(chunk)})
    batch = update_batch_size(len(pairs), cfg.batch_size, jax.process_count())
    if batch == 0:
      print(f"[realm-jax] rft round {r}: {len(pairs)} correct samples, skipping the update")
      continue
    if batch < cfg.batch_size:
      print(f"[realm-jax] rft round {r}: only {len(pairs)} correct samples, batches of {batch}")
    sft_cfg = SFTConfig(steps=cfg.steps_per_round, batch_size=batch, lr=cfg.lr, warmup=cfg.warmup,
                        route_share=0.0)
    params = distill.run_sft(f"rft{r}", dataclasses.replace(sft_ctx, seed=sft_ctx.seed + r),
                             params, pairs, sft_cfg)
  return params
