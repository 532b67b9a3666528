"""The top-level names users rely on: `realm_jax.forward` and `realm_jax.load_pretrained`."""

import jax
import numpy as np
import pytest

import realm_jax
from realm_jax import model
from realm_jax.model import pretrained
from tests.test_hf_import import ATOL, hf_logits, make_hf_model

CFG = model.ModelConfig(vocab_size=97, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64)
TOKENS = np.random.default_rng(0).integers(0, 97, (3, 9))
forward = jax.jit(realm_jax.forward, static_argnums=2)  # the public function, compiled once


def test_the_public_names_are_exported():
  assert set(realm_jax.__all__) == {"ModelConfig", "forward", "load_pretrained", "__version__"}
  assert realm_jax.ModelConfig is model.ModelConfig
  assert realm_jax.load_pretrained is pretrained.load_pretrained


def test_forward_is_the_causal_transformer_on_an_unpadded_batch():
  params = jax.jit(lambda key: model.init_params(CFG, key))(jax.random.key(0))
  logits = np.asarray(forward(params, TOKENS, CFG))
  assert logits.shape == (3, 9, 97) and logits.dtype == np.float32
  # the transformer called directly, all tokens real
  direct = jax.jit(lambda p, t: model.apply(p, CFG, t, np.ones((3, 9), bool))[0])
  np.testing.assert_allclose(logits, direct(params, TOKENS), atol=1e-5, rtol=0)
  # causal: changing token 5 changes no logit before it, and some logit from it on
  changed = TOKENS.copy()
  changed[:, 5] = (changed[:, 5] + 1) % 97
  other = np.asarray(forward(params, changed, CFG))
  np.testing.assert_allclose(other[:, :5], logits[:, :5], atol=1e-5, rtol=0)
  assert np.abs(other[:, 5:] - logits[:, 5:]).max() > 1e-3
  # rows are independent: a row alone gives its logits in the batch
  np.testing.assert_allclose(forward(params, TOKENS[1:2], CFG), logits[1:2], atol=1e-5,
                             rtol=0)
  with pytest.raises(ValueError, match=r"tokens \[B, T\]"):
    realm_jax.forward(params, TOKENS[0], CFG)


def test_load_pretrained_reads_an_hf_folder_and_forward_matches_transformers(tmp_path):
  hf = make_hf_model("llama")
  hf.save_pretrained(tmp_path)
  assert (tmp_path / "model.safetensors").is_file()
  cfg, params = realm_jax.load_pretrained(str(tmp_path))
  assert (cfg.vocab_size, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads) == (
      97, 2, 32, 4, 2)
  ours = np.asarray(realm_jax.forward(params, TOKENS, cfg))
  np.testing.assert_allclose(ours, hf_logits(hf, TOKENS, np.ones(TOKENS.shape, bool)), atol=ATOL,
                             rtol=0)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    realm_jax.load_pretrained(str(tmp_path / "missing"))
