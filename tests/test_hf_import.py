"""HF checkpoint import/export against transformers (torch CPU, fp32, eager).

Tiny random models of every supported architecture are saved with
transformers, loaded with realm_jax and compared on logits (policy: fp32
logits within 1e-4) for a left-padded full forward and for cached decoding.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from realm_jax.model import hf as hf_import
from realm_jax import model

ATOL = 1e-4  # fp32 logits policy

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            max_position_embeddings=128)
# Not the importer's defaults (1, 4), so a loader that ignored them would fail.
LLAMA3_ROPE = {'rope_type': 'llama3', 'factor': 4.0, 'low_freq_factor': 2.0,
               'high_freq_factor': 8.0, 'original_max_position_embeddings': 128}
HF_CONFIGS = {
    'llama': (transformers.LlamaConfig, dict(TINY, rope_theta=10000.0)),
    # head_dim 8: wavelengths 6.3, 63, 628, 6283 against 128/8..128/2 = 16..64 cover the
    # kept, smoothed and scaled bands of llama3 scaling.
    'llama3_rope': (transformers.LlamaConfig, dict(TINY, rope_theta=10000.0, rope_scaling=LLAMA3_ROPE)),
    'llama_tied': (transformers.LlamaConfig, dict(TINY, tie_word_embeddings=True)),
    'qwen2': (transformers.Qwen2Config, dict(TINY, rope_theta=1e6)),
    'qwen3': (transformers.Qwen3Config, dict(TINY, head_dim=16, rope_theta=1e6)),
}
MODEL_CLASSES = {transformers.LlamaConfig: transformers.LlamaForCausalLM,
                 transformers.Qwen2Config: transformers.Qwen2ForCausalLM,
                 transformers.Qwen3Config: transformers.Qwen3ForCausalLM}

# Left-padded batch: row 0 unpadded, rows 1-2 with 2 and 5 pads.
MASK = np.array([[1] * 9, [0] * 2 + [1] * 7, [0] * 5 + [1] * 4], bool)
TOKENS = np.random.default_rng(0).integers(0, 97, MASK.shape) * MASK


def make_hf_model(name: str, seed: int = 0):
  cls, kw = HF_CONFIGS[name]
  torch.manual_seed(seed)
  m = MODEL_CLASSES[cls](cls(**kw, attn_implementation='eager')).eval()
  with torch.no_grad():  # norms at 1 and biases at 0 would hide layout mistakes
    for pname, p in m.named_parameters():
      if pname.endswith('norm.weight'):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif pname.endswith('bias'):
        p.copy_(0.2 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  return m


def hf_logits(m, tokens, mask) -> np.ndarray:
  mask_t = torch.tensor(np.asarray(mask), dtype=torch.long)
  pos = torch.clamp(mask_t.cumsum(-1) - 1, min=0)
  with torch.no_grad():
    out = m(input_ids=torch.tensor(np.asarray(tokens)), attention_mask=mask_t, position_ids=pos)
  return out.logits.float().numpy()


@pytest.fixture(scope='module', params=list(HF_CONFIGS))
def saved(request, tmp_path_factory):
  m = make_hf_model(request.param)
  path = tmp_path_factory.mktemp(request.param)
  m.save_pretrained(path)
  return request.param, m, path


def test_config_fields(saved):
  name, m, path = saved
  cfg, params = hf_import.load_hf(path)
  hf = m.config
  assert (cfg.vocab_size, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
          cfg.mlp_dim) == (97, 2, 32, 4, 2, 64)
  assert cfg.head_dim == (16 if name == 'qwen3' else 8)
  assert cfg.tie_embeddings == (name == 'llama_tied') and ('lm_head' in params) != cfg.tie_embeddings
  assert cfg.rms_eps == pytest.approx(1e-5) and cfg.rope_theta == hf.rope_parameters['rope_theta']
  assert (cfg.rope_scaling is not None) == (name == 'llama3_rope')
  if cfg.rope_scaling is not None:
    rs = cfg.rope_scaling
    assert (rs.factor, rs.low_freq_factor, rs.high_freq_factor,
            rs.original_max_position_embeddings) == (4.0, 2.0, 8.0, 128)
  assert cfg.qkv_bias == (name == 'qwen2') and cfg.qk_norm == (name == 'qwen3')
  assert cfg.param_dtype == 'float32'


def test_left_padded_forward_matches_hf(saved):
  _, m, path = saved
  cfg, params = hf_import.load_hf(path)
  ours = np.asarray(model.apply(params, cfg, TOKENS, MASK)[0])
  ref = hf_logits(m, TOKENS, MASK)
  np.testing.assert_allclose(ours[MASK], ref[MASK], atol=ATOL, rtol=0)


def test_cached_decoding_matches_hf_full_forward(saved):
  """Prefill 4 slots at once (pads included), then one token per call."""
  _, m, path = saved
  cfg, params = hf_import.load_hf(path)
  B, T = TOKENS.shape
  ref = hf_logits(m, TOKENS, MASK)
  cache = model.init_cache(cfg, B, T + 3)  # spare slots stay invalid
  kv_mask = np.concatenate([MASK, np.zeros((B, 3), bool)], 1)
  positions = np.asarray(model.positions_from_mask(MASK))
  step = jax.jit(lambda p, tok, pos, cache, i: model.apply(
      p, cfg, tok, positions_BT=pos, cache=cache, cache_index=i, kv_mask_BS=kv_mask))
  got = []
  for start, stop in [(0, 4)] + [(t, t + 1) for t in range(4, T)]:
    logits, cache = step(params, TOKENS[:, start:stop], positions[:, start:stop], cache, start)
    got.append(np.asarray(logits))
  got = np.concatenate(got, 1)
  np.testing.assert_allclose(got[MASK], ref[MASK], atol=ATOL, rtol=0)


def test_save_hf_round_trip_through_transformers(saved, tmp_path):
  name, m, path = saved
  cfg, params = hf_import.load_hf(path)
  hf_import.save_hf(tmp_path, cfg, params)
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation='eager')
  assert type(again) is type(m)
  want = dict(m.state_dict())
  for k, v in again.state_dict().items():
    torch.testing.assert_close(v, want[k], rtol=0, atol=0, msg=k)
  np.testing.assert_allclose(hf_logits(again, TOKENS, MASK)[MASK], hf_logits(m, TOKENS, MASK)[MASK],
                             atol=ATOL, rtol=0)


@pytest.mark.parametrize('family', ['llama', 'qwen2', 'qwen3'])
def test_save_hf_from_random_init_gives_same_logits(family, tmp_path):
  cfg = model.ModelConfig(vocab_size=61, num_layers=2, d_model=24, num_heads=6, num_kv_heads=2,
                          head_dim=8, mlp_dim=40, family=family, qkv_bias=family == 'qwen2',
                          qk_norm=family == 'qwen3', tie_embeddings=family == 'qwen2',
                          rope_scaling=model.RopeScaling(factor=2.0, original_max_position_embeddings=32)
                          if family == 'llama' else None, rms_eps=1e-5, init_std=0.2)
  params = model.init_params(cfg, jax.random.key(1))
  rng = np.random.default_rng(2)  # move norms off 1 and biases off 0
  params = jax.tree.map(lambda x: jnp.asarray(x + 0.2 * rng.standard_normal(x.shape), x.dtype), params)
  hf_import.save_hf(tmp_path, cfg, params)
  m = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation='eager').eval()
  assert type(m).__name__ == hf_import.FAMILY_ARCHITECTURE[family]
  tokens = TOKENS % 61
  ours = np.asarray(model.apply(params, cfg, tokens, MASK)[0])
  np.testing.assert_allclose(ours[MASK], hf_logits(m, tokens, MASK)[MASK], atol=ATOL, rtol=0)
  cfg2, params2 = hf_import.load_hf(tmp_path)
  assert dataclasses.replace(cfg2, init_std=cfg.init_std) == cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, params2)


def test_sharded_checkpoint(tmp_path):
  m = make_hf_model('qwen3', seed=3)
  m.save_pretrained(tmp_path, max_shard_size='20KB')
  index = json.loads((tmp_path / 'model.safetensors.index.json').read_text())
  assert len(set(index['weight_map'].values())) > 2
  assert not (tmp_path / 'model.safetensors').exists()
  cfg, params = hf_import.load_hf(tmp_path)
  ours = np.asarray(model.apply(params, cfg, TOKENS, MASK)[0])
  np.testing.assert_allclose(ours[MASK], hf_logits(m, TOKENS, MASK)[MASK], atol=ATOL, rtol=0)


def test_bf16_checkpoint_dtype_and_override(tmp_path):
  m = make_hf_model('llama', seed=4).to(torch.bfloat16)
  m.save_pretrained(tmp_path)
  cfg, params = hf_import.load_hf(tmp_path)
  assert cfg.param_dtype == cfg.dtype == 'bfloat16'
  q = params['model']['layers']['self_attn']['q_proj']['kernel']
  assert q.dtype == jnp.bfloat16
  want = m.model.layers[1].self_attn.q_proj.weight.detach().float().numpy().T
  np.testing.assert_array_equal(np.asarray(q[1], np.float32), want)  # bf16 -> bf16 is exact
  cfg32, params32 = hf_import.load_hf(tmp_path, dtype='float32')
  assert cfg32.param_dtype == 'float32'
  assert params32['model']['norm']['weight'].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(params32['model']['layers']['self_attn']['q_proj']['kernel'][1]),
                                want)


# ---------------------------------------------------------------- bad input
@pytest.fixture
def llama_dir(tmp_path):
  make_hf_model('llama').save_pretrained(tmp_path)
  return tmp_path


def test_unsupported_architecture_names_file_field_and_supported(llama_dir):
  cfg_path = llama_dir / 'config.json'
  hf = json.loads(cfg_path.read_text())
  hf['architectures'] = ['MistralForCausalLM']
  cfg_path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match='architectures') as e:
    hf_import.load_hf(llama_dir)
  msg = str(e.value)
  assert str(cfg_path) in msg and 'MistralForCausalLM' in msg
  assert all(a in msg for a in ('LlamaForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM'))


def test_unsupported_rope_type(llama_dir):
  cfg_path = llama_dir / 'config.json'
  hf = json.loads(cfg_path.read_text())
  hf['rope_parameters'] = {'rope_type': 'yarn', 'factor': 2.0, 'rope_theta': 1e4}
  cfg_path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    hf_import.load_hf(llama_dir)


def _rewrite(path, edit):
  tensors = load_file(str(path))
  edit(tensors)
  save_file(tensors, str(path), metadata={'format': 'pt'})


def test_missing_tensor_names_tensor_and_file(llama_dir):
  st = llama_dir / 'model.safetensors'
  _rewrite(st, lambda t: t.pop('model.layers.1.mlp.up_proj.weight'))
  with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing") as e:
    hf_import.load_hf(llama_dir)
  assert str(st) in str(e.value)


def test_misshapen_tensor_names_expected_and_actual(llama_dir):
  st = llama_dir / 'model.safetensors'
  _rewrite(st, lambda t: t.update({'model.layers.0.self_attn.k_proj.weight': np.zeros((8, 32), np.float32)}))
  with pytest.raises(ValueError) as e:
    hf_import.load_hf(llama_dir)
  msg = str(e.value)
  assert "'model.layers.0.self_attn.k_proj.weight'" in msg and str(st) in msg
  assert 'shape (8, 32), expected (16, 32)' in msg


def test_unexpected_tensor_is_an_error(llama_dir):
  _rewrite(llama_dir / 'model.safetensors',
           lambda t: t.update({'model.layers.0.self_attn.o_proj.bias': np.zeros(32, np.float32)}))
  with pytest.raises(ValueError, match=r"unexpected tensors \['model\.layers\.0\.self_attn\.o_proj\.bias'\]"):
    hf_import.load_hf(llama_dir)


def test_truncated_safetensors_names_file(llama_dir):
  st = llama_dir / 'model.safetensors'
  data = st.read_bytes()
  st.write_bytes(data[:len(data) - 100])
  with pytest.raises(ValueError, match='truncated') as e:
    hf_import.load_hf(llama_dir)
  assert str(st) in str(e.value)


def test_missing_shard_names_index(tmp_path):
  make_hf_model('llama').save_pretrained(tmp_path, max_shard_size='20KB')
  shard = sorted(tmp_path.glob('model-*.safetensors'))[-1]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=shard.name):
    hf_import.load_hf(tmp_path)


def test_save_hf_rejects_mismatched_architecture(tmp_path):
  cfg = model.ModelConfig(vocab_size=8, num_layers=1, d_model=8, num_heads=2, num_kv_heads=1,
                          head_dim=4, mlp_dim=8, family='qwen2', qkv_bias=True)
  with pytest.raises(ValueError, match='LlamaForCausalLM cannot hold this model'):
    hf_import.save_hf(tmp_path, cfg, {}, architecture='LlamaForCausalLM')
  assert not (tmp_path / 'model.safetensors').exists()


def test_invalid_config_values_name_the_file(llama_dir):
  cfg_path = llama_dir / 'config.json'
  hf = json.loads(cfg_path.read_text())
  hf['num_key_value_heads'] = 3  # 4 query heads are not a multiple of 3
  cfg_path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match='num_heads=4 must be a multiple of num_kv_heads=3') as e:
    hf_import.load_hf(llama_dir)
  assert str(cfg_path) in str(e.value)
