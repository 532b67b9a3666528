"""Pretrained weights and tokenizers from a path: an HF model directory or a `.gguf` file."""

from __future__ import annotations

import os
from pathlib import Path

from realm_jax.model import gguf as gguf_import, hf as hf_import, tokenizer
from realm_jax.model import ModelConfig, Params


def _kind(path: str | os.PathLike) -> str:
  p = Path(path)
  if p.is_file() and p.suffix == '.gguf':
    return 'gguf'
  if p.is_dir():
    return 'hf'
  raise FileNotFoundError(f'{p}: expected a Hugging Face model directory (config.json + '
                          'safetensors) or a .gguf file' + ('' if p.exists() else '; it does not exist'))


def load_pretrained(path: str | os.PathLike, dtype: str | None = None) -> tuple[ModelConfig, Params]:
  """(ModelConfig, params) from an HF directory (`load_hf`) or a GGUF file (`load_gguf`)."""
  if _kind(path) == 'gguf':
    return gguf_import.load_gguf(path, dtype)
  return hf_import.load_hf(path, dtype)


def load_pretrained_tokenizer(path: str | os.PathLike) -> tokenizer.Tokenizer:
  """The tokenizer that goes with `load_pretrained(path)`."""
  if _kind(path) == 'gguf':
    return gguf_import.load_gguf_tokenizer(path)
  return tokenizer.load_tokenizer(path)
