"""`realm-jax generate`: load a model and its tokenizer, sample one completion."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from realm_jax.data import pipeline as data
from realm_jax.model import sampling


def generate_text(model_path: str, prompt: str, *, chat: bool = False, max_new_tokens: int = 64,
                  temperature: float = 0.0, seed: int = 0) -> str:
  from realm_jax.model import gguf as gguf_import, pretrained
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
