"""Tokenizers: one small interface, SentencePiece and Hugging Face backends.

Conventions
- `encode` never adds special tokens except an optional BOS (`add_bos=True`,
  the tokenizer has one and the text does not already start with it); chat
  templates write their own control tokens as text, which both backends
  match as single tokens.
- `stop_ids` is EOS followed by every end-of-turn token the vocabulary has
  (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, `<|end_of_text|>`).
- `pad_id` is the configured pad token, else EOS (batches are left padded
  and masked, so the pad value never reaches a loss).
- Chat templates, chosen from the configured `chat_template` string:
  ChatML (contains `<|im_start|>`; SmolLM2, Qwen):
      `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, generation
      prompt `<|im_start|>assistant\\n`. Default system prompts that some
      hub templates inject are NOT added: what you pass is what is rendered.
  Llama-3 (contains `<|start_header_id|>`): BOS, then per message
      `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content.strip()}<|eot_id|>`,
      generation prompt `<|start_header_id|>assistant<|end_header_id|>\\n\\n`.
  Any other string is rendered with jinja2 the way transformers does
  (sandboxed, trim_blocks, lstrip_blocks); jinja2 is optional.
  No template: ChatML when the vocabulary has `<|im_start|>` (tokenizers
  trained by `train_sentencepiece` do), else the base-model template
  `{Role}: {content}\\n\\n` per message with generation prompt `Assistant:`.
- Every tokenizer pickles by value (model bytes / tokenizer JSON), so grain
  worker processes can hold one.
"""

from __future__ import annotations

import abc
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import tokenizers

COMPLETION_TAGS = ('<verify>', '</verify>', '<think>', '</think>', '<answer>', '</answer>')
CHATML_TOKENS = ('<|im_start|>', '<|im_end|>')
END_OF_TURN_TOKENS = ('<|im_end|>', '<|eot_id|>', '<|endoftext|>', '<|end_of_text|>')


# ----------------------------------------------------------------- templates
def render_chatml(messages: Sequence[dict], add_generation_prompt: bool) -> str:
  text = ''.join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
  return text + ('<|im_start|>assistant\n' if add_generation_prompt else '')


def render_llama3(messages: Sequence[dict], add_generation_prompt: bool, bos_token: str) -> str:
  text = bos_token + ''.join(
      f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
      for m in messages)
  return text + ('<|start_header_id|>assistant<|end_header_id|>\n\n' if add_generation_prompt else '')


def render_plain(messages: Sequence[dict], add_generation_prompt: bool) -> str:
  text = ''.join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
  return text + ('Assistant:' if add_generation_prompt else '')


def render_jinja(template: str, messages: Sequence[dict], add_generation_prompt: bool,
                 bos_token: str, eos_token: str) -> str:
  try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
  except ImportError as e:  # jinja2 is optional
    raise ImportError('this chat_template is neither ChatML nor Llama-3; rendering it needs '
                      '`pip install jinja2`') from e

  def raise_exception(message):
    raise ValueError(f'chat template: {message}')

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.filters['tojson'] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
  env.globals['raise_exception'] = raise_exception
  return env.from_string(template).render(
      messages=list(messages), add_generation_prompt=add_generation_prompt,
      bos_token=bos_token, eos_token=eos_token)


# ----------------------------------------------------------------- interface
class Tokenizer(abc.ABC):
  """Backend-independent tokenizer; subclasses set the fields in `_finish`."""

  bos_id: int | None
  eos_id: int
  pad_id: int
  stop_ids: tuple[int, ...]
  chat_template: str | None

  @abc.abstractmethod
  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Token ids of `text`; BOS first when `add_bos` (see `_with_bos`)."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    """Text of `ids`; with `skip_special`, BOS/EOS/pad and chat control tokens vanish."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, added tokens included."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int | None:
    """Id of a whole token string, None when absent."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str:
    """Token string of an id."""

  def _with_bos(self, ids: list[int], add_bos: bool) -> list[int]:
    # A chat template may already write BOS (Llama-3's <|begin_of_text|>,
    # SmolLM2-Instruct's bos <|im_start|>): never double it.
    if add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
      return [self.bos_id] + ids
    return ids

  def _finish(self, bos_id, eos_id, pad_id, chat_template, source) -> None:
    if eos_id is None:
      raise ValueError(f'{source}: tokenizer has no EOS token; pass eos explicitly')
    self.bos_id, self.eos_id = bos_id, eos_id
    self.pad_id = eos_id if pad_id is None else pad_id
    stops = [eos_id] + [self.token_to_id(t) for t in END_OF_TURN_TOKENS]
    self.stop_ids = tuple(dict.fromkeys(i for i in stops if i is not None))
    self.chat_template = chat_template

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Renders `[{'role': ..., 'content': ...}, ...]` to text (see module docstring)."""
    t = self.chat_template
    bos = '' if self.bos_id is None else self.id_to_token(self.bos_id)
    if t is None:
      if self.token_to_id('<|im_start|>') is not None:
        return render_chatml(messages, add_generation_prompt)
      return render_plain(messages, add_generation_prompt)
    if '<|im_start|>' in t:
      return render_chatml(messages, add_generation_prompt)
    if '<|start_header_id|>' in t:
      return render_llama3(messages, add_generation_prompt, bos)
    return render_jinja(t, messages, add_generation_prompt, bos, self.id_to_token(self.eos_id))


# ------------------------------------------------------------- SentencePiece
class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; control pieces (`<s>`, `</s>`, `<pad>`) and ChatML
  tokens count as special."""

  def __init__(self, model_proto: bytes, chat_template: str | None = None, source: str = '<bytes>'):
    self._proto, self._source = model_proto, source
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    sp = self._sp
    none_if_neg = lambda i: None if i < 0 else i
    self._finish(none_if_neg(sp.bos_id()), none_if_neg(sp.eos_id()), none_if_neg(sp.pad_id()),
                 chat_template, source)
    self._special = {i for i in range(sp.get_piece_size()) if sp.is_control(i)}
    self._special |= {i for t in CHATML_TOKENS if (i := self.token_to_id(t)) is not None}

  @classmethod
  def load(cls, path: str | os.PathLike, chat_template: str | None = None) -> SentencePieceTokenizer:
    return cls(Path(path).read_bytes(), chat_template, source=str(path))

  def __getstate__(self):
    return {'model_proto': self._proto, 'chat_template': self.chat_template, 'source': self._source}

  def __setstate__(self, state):
    self.__init__(state['model_proto'], state['chat_template'], state['source'])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def token_to_id(self, token: str) -> int | None:
    i = self._sp.piece_to_id(token)
    return i if self._sp.id_to_piece(i) == token else None

  def id_to_token(self, token_id: int) -> str:
    return self._sp.id_to_piece(token_id)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self._sp.encode(text, out_type=int)
    return self._with_bos(ids, add_bos)

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    # sp.decode drops control pieces; decode runs of ordinary ids and splice
    # special pieces in (or out) so both flags behave as in Hugging Face.
    out, run = [], []
    for i in map(int, ids):
      if i in self._special:
        out.append(self._sp.decode(run))
        run = []
        if not skip_special:
          out.append(self._sp.id_to_piece(i))
      else:
        run.append(i)
    out.append(self._sp.decode(run))
    return ''.join(out)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *,
                        out_path: str | os.PathLike | None = None,
                        model_type: str = 'unigram',
                        user_symbols: Sequence[str] = COMPLETION_TAGS + CHATML_TOKENS,
                        character_coverage: float = 1.0,
                        max_sentence_length: int = 1 << 16,
                        num_threads: int = 1,
                        hard_vocab_limit: bool = True) -> SentencePieceTokenizer:
  """Trains a SentencePiece model for reasoning text and returns it.

  Choices: digits split one per piece (`split_digits`), byte fallback (no
  unknown characters), identity normalisation that keeps whitespace and
  newlines as written, no dummy prefix (so `decode(encode(a) + encode(b)) ==
  a + b`, which prompt/completion concatenation relies on), ids pad=0 unk=1
  bos=2 eos=3, then `user_symbols` (completion tags and ChatML tokens) as
  unsplittable pieces. `out_path` (a `.model` file) is written when given.
  With `hard_vocab_limit=False`, `vocab_size` is an upper bound: a small,
  repetitive corpus (a templated domain) yields fewer pieces instead of failing.
  """
  if model_type not in ('unigram', 'bpe'):
    raise ValueError(f"model_type={model_type!r}; use 'unigram' or 'bpe'")
  writer = io.BytesIO()
  with open(os.devnull, 'w') as devnull:
    try:  # sentencepiece silences its log by redirecting the stderr file descriptor
      sys.stderr.fileno()
      logstream = devnull
    except (AttributeError, io.UnsupportedOperation):  # stderr replaced (e.g. captured)
      logstream = None
    spm.SentencePieceTrainer.Train(
        logstream=logstream, sentence_iterator=iter(texts), model_writer=writer,
        vocab_size=vocab_size, model_type=model_type, split_digits=True, byte_fallback=True,
        user_defined_symbols=list(user_symbols), character_coverage=character_coverage,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        split_by_whitespace=True, max_sentence_length=max_sentence_length,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, num_threads=num_threads,
        hard_vocab_limit=hard_vocab_limit)
  proto = writer.getvalue()
  if out_path is not None:
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_bytes(proto)
  return SentencePieceTokenizer(proto, source=str(out_path or '<trained>'))


# -------------------------------------------------------------- Hugging Face
def _token_content(value) -> str | None:
  """tokenizer_config.json writes special tokens as a string or an AddedToken dict."""
  return value.get('content') if isinstance(value, dict) else value


def _config_template(value) -> str | None:
  """chat_template is a string or a list of {'name', 'template'} (default wins)."""
  if isinstance(value, list):
    named = {t['name']: t['template'] for t in value}
    return named.get('default', next(iter(named.values()), None))
  return value


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizers.Tokenizer` (tokenizer.json) plus its special tokens."""

  def __init__(self, tok: tokenizers.Tokenizer, *, bos: int | str | None, eos: int | str | None,
               pad: int | str | None = None, chat_template: str | None = None,
               source: str = '<tokenizers object>'):
    self._tok, self._source = tok, source
    ids = [self._resolve(t, name) for t, name in ((bos, 'bos'), (eos, 'eos'), (pad, 'pad'))]
    self._finish(*ids, chat_template, source)

  def _resolve(self, token: int | str | None, name: str) -> int | None:
    if token is None or isinstance(token, int):
      return token
    i = self._tok.token_to_id(token)
    if i is None:
      raise ValueError(f'{self._source}: {name} token {token!r} is not in the vocabulary')
    return i

  @classmethod
  def from_tokenizers_object(cls, tok: tokenizers.Tokenizer, bos: int | str | None,
                             eos: int | str | None, pad: int | str | None = None,
                             chat_template: str | None = None) -> HFTokenizer:
    """For tokenizers built in memory (e.g. from GGUF metadata): specials as ids or strings."""
    return cls(tok, bos=bos, eos=eos, pad=pad, chat_template=chat_template)

  @classmethod
  def from_file(cls, tokenizer_json: str | os.PathLike, config: dict | None = None) -> HFTokenizer:
    """tokenizer.json plus the parsed tokenizer_config.json (bos/eos/pad, chat_template)."""
    config = config or {}
    return cls(tokenizers.Tokenizer.from_file(str(tokenizer_json)),
               bos=_token_content(config.get('bos_token')),
               eos=_token_content(config.get('eos_token')),
               pad=_token_content(config.get('pad_token')),
               chat_template=_config_template(config.get('chat_template')),
               source=str(tokenizer_json))

  @classmethod
  def from_pretrained_dir(cls, directory: str | os.PathLike) -> HFTokenizer:
    """A model directory: tokenizer.json, tokenizer_config.json and, when present,
    chat_template.jinja / chat_template.json (which take precedence)."""
    d = Path(directory)
    if not (d / 'tokenizer.json').is_file():
      raise FileNotFoundError(f'{d}: no tokenizer.json in this directory')
    config = {}
    if (d / 'tokenizer_config.json').is_file():
      config = json.loads((d / 'tokenizer_config.json').read_text())
    if (d / 'chat_template.jinja').is_file():
      config['chat_template'] = (d / 'chat_template.jinja').read_text()
    elif (d / 'chat_template.json').is_file():
      config['chat_template'] = json.loads((d / 'chat_template.json').read_text())['chat_template']
    return cls.from_file(d / 'tokenizer.json', config)

  def to_json(self) -> str:
    """The tokenizer.json text."""
    return self._tok.to_str()

  def __getstate__(self):
    return {'json': self._tok.to_str(), 'bos': self.bos_id, 'eos': self.eos_id,
            'pad': self.pad_id, 'chat_template': self.chat_template, 'source': self._source}

  def __setstate__(self, s):
    self.__init__(tokenizers.Tokenizer.from_str(s['json']), bos=s['bos'], eos=s['eos'],
                  pad=s['pad'], chat_template=s['chat_template'], source=s['source'])

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, token_id: int) -> str:
    return self._tok.id_to_token(token_id)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self._tok.encode(text, add_special_tokens=False).ids
    return self._with_bos(ids, add_bos)

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)


# ------------------------------------------------------------------ dispatch
def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """`.model` -> SentencePiece; `tokenizer.json` or a directory holding it -> HF
  (sibling tokenizer_config.json read); a directory holding only
  `tokenizer.model` -> SentencePiece."""
  p = Path(path)
  accepted = ('accepted: a SentencePiece `.model` file, a `tokenizer.json` file, or a '
              'directory containing tokenizer.json (or tokenizer.model)')
  if not p.exists():
    raise FileNotFoundError(f'{p}: no such file or directory; {accepted}')
  if p.is_dir():
    if (p / 'tokenizer.json').is_file():
      return HFTokenizer.from_pretrained_dir(p)
    if (p / 'tokenizer.model').is_file():
      return SentencePieceTokenizer.load(p / 'tokenizer.model')
  elif p.suffix == '.model':
    return SentencePieceTokenizer.load(p)
  elif p.name == 'tokenizer.json':
    return HFTokenizer.from_pretrained_dir(p.parent)
  raise ValueError(f'{p}: not a tokenizer; {accepted}')
