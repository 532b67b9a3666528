"""Text in, text out over the compiled sampler: prompts to left-padded buckets,
rollouts back to completion strings, and batched sampling of many prompts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax.data import pipeline as data
from realm_jax.model import sampling
from realm_jax.train import sharding


def encode_prompts(tok, prompts: list[str], buckets, chat: bool) -> tuple[np.ndarray, np.ndarray, int]:
  """Left-padded prompt tokens at the smallest bucket fitting all; too-long prompts keep their tail."""
  ids = []
  for p in prompts:
    text = tok.apply_chat_template([{"role": "user", "content": p}]) if chat else p
    ids.append(tok.encode(text, add_bos=True))
  too_long = sum(len(x) > buckets[-1] for x in ids)
  ids = [x[-buckets[-1]:] for x in ids]
  length = data.bucket_length(max(len(x) for x in ids), buckets)
  tokens, mask = data.pad_left(ids, length, tok.pad_id)
  return tokens, mask, too_long


def completion_texts(tok, rollout) -> list[str]:
  toks = sharding.to_host(rollout.tokens)
  cm = sharding.to_host(rollout.completion_mask).astype(bool)
  stops = set(tok.stop_ids)
  return [tok.decode([t for t in row[m] if t not in stops]) for row, m in zip(toks, cm)]


def generate_texts(params, model_cfg, tok, prompts: list[str], scfg: sampling.SamplingConfig,
                   batch_size: int, chat: bool, seed: int) -> list[list[str]]:
  """`scfg.num_samples` completions of every prompt, in fixed-shape batches (one compile)."""
  gen = sampling.make_generate_fn(model_cfg, scfg)
  wrap = (lambda p: tok.apply_chat_template([{"role": "user", "content": p}])) if chat else (lambda p: p)
  buckets = (max(len(tok.encode(wrap(p), add_bos=True)) for p in prompts),)  # one shape: one compile
  out: list[list[str]] = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)  # fixed shapes: one compile
    tokens, mask, _ = encode_prompts(tok, chunk, buckets, chat)
    roll = gen(params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(seed + start))
    texts = completion_texts(tok, roll)
    G = scfg.num_samples
    out.extend(texts[i * G:(i + 1) * G] for i in range(real))
  return out
