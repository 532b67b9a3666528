"""Tokenizer tests: SentencePiece training, HF tokenizer.json loading, chat
templates against transformers' own rendering, pickling, dispatch errors."""

import json
import pickle
import random

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from realm_jax.model import tokenizer as tk

WORDS = ('the of and to in is was for on that with as by at from his it an were are which this '
         'be has or had first one their its new after who they two her she been other when time '
         'during there into school more may years over only year most would world city some '
         'where between later three state such then national used made known under many '
         'university united while part season team these american than film second born south '
         'prime factor sum product divide multiply answer reason check route correct wrong').split()


def _corpus(n=400, seed=0):
  rng = random.Random(seed)
  out = []
  for i in range(n):
    words = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(5, 20)))
    out.append(f'{words.capitalize()} {rng.randint(0, 10**6)}.\n'
               f'<think>{rng.choice(WORDS)} {rng.randint(0, 99)}</think><answer>{i}</answer>')
  return out


@pytest.fixture(scope='module')
def sp_tok(tmp_path_factory):
  path = tmp_path_factory.mktemp('sp') / 'tok_test.model'
  return tk.train_sentencepiece(_corpus(), vocab_size=400, out_path=path), path


# ------------------------------------------------------------- SentencePiece
@pytest.mark.parametrize('model_type', ['unigram', 'bpe'])
def test_sp_digits_split_after_space_piece(model_type):
  tok = tk.train_sentencepiece(_corpus(), vocab_size=400, model_type=model_type)
  pieces = [tok.id_to_token(i) for i in tok.encode(' 12345')]
  assert pieces == ['▁', '1', '2', '3', '4', '5']
  pieces = [tok.id_to_token(i) for i in tok.encode('sum 907')]
  assert pieces[-4:] == ['▁', '9', '0', '7']


def test_sp_special_ids_and_tags(sp_tok):
  tok, _ = sp_tok
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert tok.vocab_size == 400
  for tag in tk.COMPLETION_TAGS + tk.CHATML_TOKENS:
    ids = tok.encode(tag)
    assert len(ids) == 1 and tok.id_to_token(ids[0]) == tag
  assert tok.stop_ids == (3, tok.token_to_id('<|im_end|>'))
  assert tok.token_to_id('<no such piece>') is None


@pytest.mark.parametrize('text', [
    'The answer is 42.',
    'Line one\n\n  indented line\twith tab\n',
    '<verify>A: correct; B: wrong</verify>\n<think>3 * 7 = 21</think>\n<answer>21</answer>',
    'unseen characters: é, ß, 漢字, emoji 🙂',
])
def test_sp_round_trip(sp_tok, text):
  tok, _ = sp_tok
  assert tok.decode(tok.encode(text)) == text


def test_sp_concatenation_is_exact(sp_tok):
  # No dummy prefix: prompt and completion tokenized apart decode to prompt + completion.
  tok, _ = sp_tok
  a, b = 'Question: what is 6 * 7?\n', '<think>6 * 7 = 42</think><answer>42</answer>'
  assert tok.decode(tok.encode(a) + tok.encode(b)) == a + b


def test_sp_decode_special_handling(sp_tok):
  tok, _ = sp_tok
  start, end = tok.token_to_id('<|im_start|>'), tok.token_to_id('<|im_end|>')
  ids = [tok.bos_id, start] + tok.encode('user\nhi') + [end, tok.eos_id]
  assert tok.decode(ids) == 'user\nhi'
  assert tok.decode(ids, skip_special=False) == '<s><|im_start|>user\nhi<|im_end|></s>'


def test_sp_chat_template_is_chatml(sp_tok):
  tok, _ = sp_tok
  msgs = [{'role': 'user', 'content': 'What is 2+2?'}]
  text = tok.apply_chat_template(msgs)
  assert text == '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n'
  ids = tok.encode(text)
  assert ids[0] == tok.token_to_id('<|im_start|>')
  assert tok.apply_chat_template(msgs, add_generation_prompt=False) == text[:-len('<|im_start|>assistant\n')]


def test_sp_pickle_and_file_load(sp_tok):
  tok, path = sp_tok
  texts = _corpus(20, seed=1)
  for other in (pickle.loads(pickle.dumps(tok)), tk.load_tokenizer(path),
                tk.SentencePieceTokenizer.load(path)):
    assert isinstance(other, tk.SentencePieceTokenizer)
    assert [other.encode(t, add_bos=True) for t in texts] == [tok.encode(t, add_bos=True) for t in texts]
    assert other.stop_ids == tok.stop_ids


def test_sp_directory_with_tokenizer_model(sp_tok, tmp_path):
  tok, path = sp_tok
  (tmp_path / 'tokenizer.model').write_bytes(path.read_bytes())
  assert tk.load_tokenizer(tmp_path).encode('the cat 12') == tok.encode('the cat 12')


# -------------------------------------------------------------- Hugging Face
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|begin_of_text|>',
            '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
          "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
OTHER = ("{% for m in messages %}\n[{{ m['role'] | upper }}] {{ m['content'] }}{{ eos_token }}\n"
         "{% endfor %}\n{% if add_generation_prompt %}[ASSISTANT] {% endif %}")
MESSAGES = [{'role': 'system', 'content': 'You check reasoning routes.'},
            {'role': 'user', 'content': '  What is 12 + 30?  '},
            {'role': 'assistant', 'content': '<think>12 + 30 = 42</think><answer>42</answer>'},
            {'role': 'user', 'content': 'And 6 * 7?'}]


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_corpus(200), trainer)
  d = tmp_path_factory.mktemp('hf')
  tok.save(str(d / 'tokenizer.json'))
  config = {'bos_token': None, 'pad_token': '<|endoftext|>', 'chat_template': CHATML,
            'eos_token': {'content': '<|im_end|>', 'special': True, 'lstrip': False}}
  (d / 'tokenizer_config.json').write_text(json.dumps(config))
  return d


def test_hf_ids_match_tokenizers_library(hf_dir):
  ref = tokenizers.Tokenizer.from_file(str(hf_dir / 'tokenizer.json'))
  for tok in (tk.load_tokenizer(hf_dir), tk.load_tokenizer(hf_dir / 'tokenizer.json')):
    assert isinstance(tok, tk.HFTokenizer)
    for text in _corpus(20, seed=2) + [tok.apply_chat_template(MESSAGES)]:
      assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
      assert tok.decode(tok.encode(text), skip_special=False) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, SPECIALS.index('<|im_end|>'), 0)
    assert tok.stop_ids == (2, 6, 0)  # eos <|im_end|>, then <|eot_id|>, <|endoftext|>
    assert tok.vocab_size == ref.get_vocab_size()
    assert tok.encode('<|im_start|>user')[0] == 1


def test_hf_decode_skips_special_keeps_tags(hf_dir):
  tok = tk.load_tokenizer(hf_dir)
  text = '<|im_start|>assistant\n<think>ok</think><answer>7</answer><|im_end|>'
  assert tok.decode(tok.encode(text)) == 'assistant\n<think>ok</think><answer>7</answer>'


def test_chatml_hand_checked(hf_dir):
  tok = tk.load_tokenizer(hf_dir)
  msgs = [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'U'}]
  assert tok.apply_chat_template(msgs) == (
      '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n')
  assert tok.apply_chat_template(msgs, add_generation_prompt=False) == (
      '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n')


@pytest.mark.parametrize('template', [CHATML, LLAMA3, OTHER], ids=['chatml', 'llama3', 'jinja'])
@pytest.mark.parametrize('gen', [True, False])
def test_chat_template_matches_transformers(hf_dir, template, gen):
  from transformers import PreTrainedTokenizerFast
  ref = PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / 'tokenizer.json'),
                                bos_token='<|begin_of_text|>', eos_token='<|eot_id|>')
  ref.chat_template = template
  tok = tk.HFTokenizer.from_file(hf_dir / 'tokenizer.json', {
      'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>', 'chat_template': template})
  expected = ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
  assert tok.apply_chat_template(MESSAGES, add_generation_prompt=gen) == expected


def test_template_precedence_and_forms(hf_dir, tmp_path):
  for name in ('tokenizer.json', 'tokenizer_config.json'):
    (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
  (tmp_path / 'chat_template.jinja').write_text(LLAMA3)
  tok = tk.load_tokenizer(tmp_path)
  assert tok.chat_template == LLAMA3
  listed = tk.HFTokenizer.from_file(hf_dir / 'tokenizer.json', {
      'eos_token': '<|im_end|>',
      'chat_template': [{'name': 'tool_use', 'template': OTHER}, {'name': 'default', 'template': CHATML}]})
  assert listed.chat_template == CHATML


def test_no_template_falls_back(hf_dir):
  ref = tokenizers.Tokenizer.from_file(str(hf_dir / 'tokenizer.json'))
  tok = tk.HFTokenizer.from_tokenizers_object(ref, bos=None, eos=2)
  assert tok.apply_chat_template([{'role': 'user', 'content': 'x'}]) == (
      '<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n')
  plain = tokenizers.Tokenizer(models.WordLevel({'a': 0, '[UNK]': 1, '</s>': 2}, unk_token='[UNK]'))
  plain.pre_tokenizer = pre_tokenizers.Whitespace()
  base = tk.HFTokenizer.from_tokenizers_object(plain, bos=None, eos='</s>')
  assert base.stop_ids == (2,) and base.pad_id == 2
  assert base.apply_chat_template([{'role': 'user', 'content': 'a'}]) == 'User: a\n\nAssistant:'


def test_hf_pickle_and_specials_by_id(hf_dir):
  ref = tokenizers.Tokenizer.from_file(str(hf_dir / 'tokenizer.json'))
  tok = tk.HFTokenizer.from_tokenizers_object(ref, bos=3, eos='<|eot_id|>', pad=0, chat_template=LLAMA3)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (3, 6, 0)
  assert tok.encode('hi', add_bos=True)[0] == 3
  templated = tok.encode(tok.apply_chat_template(MESSAGES), add_bos=True)
  assert templated[0] == 3 and templated.count(3) == 1  # the template's BOS is not doubled
  other = pickle.loads(pickle.dumps(tok))
  texts = _corpus(20, seed=3)
  assert [other.encode(t, add_bos=True) for t in texts] == [tok.encode(t, add_bos=True) for t in texts]
  assert other.apply_chat_template(MESSAGES) == tok.apply_chat_template(MESSAGES)
  with pytest.raises(ValueError, match='<nope>'):
    tk.HFTokenizer.from_tokenizers_object(ref, bos='<nope>', eos=2)


def test_load_tokenizer_errors(tmp_path):
  bad = tmp_path / 'vocab.txt'
  bad.write_text('a\nb\n')
  with pytest.raises(ValueError, match='vocab.txt.*accepted'):
    tk.load_tokenizer(bad)
  with pytest.raises(ValueError, match='accepted'):
    tk.load_tokenizer(tmp_path)  # a directory without tokenizer files
  with pytest.raises(FileNotFoundError, match='missing.model'):
    tk.load_tokenizer(tmp_path / 'missing.model')
