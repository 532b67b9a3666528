"""Text in, text out over the compiled sampler: prompts to left-padded buckets,
rollouts back to completion strings, and batched sampling of many prompts.

`chat_prompt(tok, p)` is the one place a prompt is wrapped as a single user turn
of the tokenizer's chat template (with the assistant header after it); every
stage that feeds a chat model (SFT pairs, RL rollouts, evaluation, `generate`)
goes through it, so the model is trained and tested on the same format."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax.data import pipeline as data
from realm_jax.model import sampling
from realm_jax.train import sharding


def chat_prompt(tok, prompt: str) -> str:
  """`prompt` as one user turn of `tok`'s chat template, ready for the assistant's reply."""
  return tok.apply_chat_template([{"role": "user", "content": prompt}])


def encode_prompts(tok, prompts: list[str], buckets, chat: bool) -> tuple[np.ndarray, np.ndarray, int]:
  """Left-padded prompt tokens at the smallest bucket fitting all; too-long prompts keep their tail."""
  ids = [tok.encode(chat_prompt(tok, p) if chat else p, add_bos=True) for p in prompts]
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
  longest = max(len(tok.encode(chat_prompt(tok, p) if chat else p, add_bos=True)) for p in prompts)
  buckets = (longest,)  # one shape: one compile
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
