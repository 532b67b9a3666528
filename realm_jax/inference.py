"""`realm-jax generate`: load a model and its tokenizer, sample one completion."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from realm_jax import data, sampling


def generate_text(model_path: str, prompt: str, *, chat: bool = False, max_new_tokens: int = 64,
                  temperature: float = 0.0, seed: int = 0) -> str:
  from realm_jax import gguf_import, pretrained
  path = gguf_import.smollm2_gguf_path() if model_path == "smollm2" else model_path
  cfg, params = pretrained.load_pretrained(path)
  tok = pretrained.load_pretrained_tokenizer(path)
  text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
  ids = tok.encode(text, add_bos=True)
  tokens, mask = data.pad_left([ids], len(ids), tok.pad_id)
  scfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                 stop_ids=tuple(tok.stop_ids), num_samples=1,
                                 pad_id=tok.pad_id)
  roll = sampling.generate(params, cfg, jnp.asarray(tokens), jnp.asarray(mask),
                           jax.random.key(seed), scfg)
  out = [int(t) for t, m in zip(roll.tokens[0], roll.completion_mask[0]) if m]
  return tok.decode([t for t in out if t not in tok.stop_ids])


def generate_texts(params, model_cfg, tok, prompts: list[str], scfg: sampling.SamplingConfig,
                   batch_size: int, chat: bool, seed: int) -> list[list[str]]:
  """`scfg.num_samples` completions of every prompt, in fixed-shape batches (one compile)."""
  from realm_jax.rl_loop import completion_texts, encode_prompts
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
