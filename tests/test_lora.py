"""LoRA: adapters beside a frozen base, in the model, the steps, the runs and the exports.

Independent references: the plain model on merged weights W + (alpha/r) A B
(the definition), the chain rule dL/dA = s G B^T, dL/dB = s A^T G with G the
plain model's gradient w.r.t. the merged W, and transformers / PEFT loading the
exported folders (fp32 logits within 1e-4, the project's policy).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from realm_jax import configs, model
from realm_jax.model import hf, lora, sampling
from realm_jax.model.config import LoraConfig
from realm_jax.rl import losses, stage as rl_stage, step as rl_step
from realm_jax.rl.batch import UpdateBatch
from realm_jax.train import step as train_step

ATOL = 1e-4  # fp32 logits policy
BASE = model.ModelConfig(vocab_size=61, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                         head_dim=8, mlp_dim=48, rms_eps=1e-5)
RANK, ALPHA = 4, 8.0
CFG = dataclasses.replace(BASE, lora=LoraConfig(rank=RANK, alpha=ALPHA))
MASK = np.array([[1] * 9, [0] * 2 + [1] * 7, [0] * 5 + [1] * 4], bool)
TOKENS = np.random.default_rng(0).integers(0, 61, MASK.shape) * MASK


def _base():
  return model.init_params(BASE, jax.random.key(0))


def _with_b(params, scale=0.3):
  """Adapters with random B (fresh ones have B = 0, which would hide every mistake)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = iter(jax.random.split(jax.random.key(7), len(leaves)))
  return jax.tree_util.tree_unflatten(treedef, [
      x + scale * jax.random.normal(next(keys), x.shape) if p[-1].key == "lora_b" else x
      for p, x in leaves])


def _adapted(cfg=CFG):
  return _with_b(lora.add_adapters(_base(), cfg, jax.random.key(1)))


def _by_hand_merge(params, scale):
  """W + scale A B per adapted projection, written out with numpy."""
  out = jax.tree.map(np.asarray, lora.split(params)[1])
  adapters = lora.split(params)[0]["model"]["layers"]
  for block, projs in adapters.items():
    for name, ab in projs.items():
      w = out["model"]["layers"][block][name]["kernel"]
      out["model"]["layers"][block][name]["kernel"] = w + scale * np.einsum(
          "lir,lro->lio", np.asarray(ab["lora_a"]), np.asarray(ab["lora_b"]))
  return out


def test_adapter_shapes_targets_and_count_by_hand():
  params = lora.add_adapters(_base(), CFG, jax.random.key(1))
  a = lora.split(params)[0]["model"]["layers"]
  assert set(a["self_attn"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
  assert set(a["mlp"]) == {"gate_proj", "up_proj", "down_proj"}
  assert a["self_attn"]["k_proj"]["lora_a"].shape == (2, 32, RANK)
  assert a["self_attn"]["k_proj"]["lora_b"].shape == (2, RANK, 16)
  # per layer r (in + out): q 32+32, k 32+16, v 32+16, o 32+32, gate/up 32+48, down 48+32
  assert lora.num_adapter_params(CFG) == 2 * RANK * (64 + 48 + 48 + 64 + 80 + 80 + 80)
  assert all(np.all(np.asarray(x) == 0) for p, x in jax.tree_util.tree_leaves_with_path(params)
             if p[-1].key == "lora_b")
  only_q = dataclasses.replace(CFG, lora=LoraConfig(rank=2, alpha=2, targets=("q_proj",)))
  a = lora.split(lora.add_adapters(_base(), only_q, jax.random.key(1)))[0]
  assert len(jax.tree.leaves(a)) == 2
  # the base is untouched: the same leaves, not copies
  base = _base()
  merged_back = lora.merge(*lora.split(lora.add_adapters(base, CFG, jax.random.key(1))))
  assert np.array_equal(merged_back["model"]["embed_tokens"]["embedding"],
                        base["model"]["embed_tokens"]["embedding"])


@pytest.mark.parametrize("scan", [True, False])
def test_zero_initialised_adapters_give_exactly_the_base_logits(scan):
  cfg, base = dataclasses.replace(CFG, scan_layers=scan), _base()
  fresh = lora.add_adapters(base, cfg, jax.random.key(1))
  plain = model.apply(base, dataclasses.replace(BASE, scan_layers=scan), TOKENS, MASK)[0]
  assert np.array_equal(model.apply(fresh, cfg, TOKENS, MASK)[0], plain)
  # the frozen base alone under the LoRA config (RL's reference) runs plain
  assert np.array_equal(model.apply(base, cfg, TOKENS, MASK)[0], plain)


@pytest.mark.parametrize("scan", [True, False])
def test_adapter_forward_equals_the_plain_model_on_merged_weights(scan):
  params = _adapted()
  merged = _by_hand_merge(params, ALPHA / RANK)
  got = model.apply(params, dataclasses.replace(CFG, scan_layers=scan), TOKENS, MASK)[0]
  want = model.apply(merged, BASE, TOKENS, MASK)[0]
  assert np.abs(np.asarray(got - want))[MASK].max() < ATOL
  assert np.abs(np.asarray(model.apply(_base(), BASE, TOKENS, MASK)[0] - want))[MASK].max() > 0.1
  for leaf_a, leaf_b in zip(jax.tree.leaves(lora.merged(params, CFG.lora)), jax.tree.leaves(merged)):
    np.testing.assert_allclose(leaf_a, leaf_b, atol=1e-6)


def _ce(params, cfg):
  logits = model.apply(params, cfg, TOKENS, MASK)[0][:, :-1]
  logp = jax.nn.log_softmax(logits)
  tgt = jnp.take_along_axis(logp, jnp.asarray(TOKENS)[:, 1:, None], -1)[..., 0]
  return -jnp.sum(tgt * MASK[:, 1:]) / MASK[:, 1:].sum()


def test_adapter_gradients_follow_the_chain_rule_through_the_merged_weight():
  params, s = _adapted(), ALPHA / RANK
  trainable, frozen = lora.split(params)
  g = jax.grad(lambda t: _ce(lora.merge(t, frozen), CFG))(trainable)
  assert {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(g)} == {"lora_a", "lora_b"}
  G = jax.grad(lambda m: _ce(m, BASE))(_by_hand_merge(params, s))["model"]["layers"]
  for block in ("self_attn", "mlp"):
    for name, ab in g["model"]["layers"][block].items():
      A = np.asarray(trainable["model"]["layers"][block][name]["lora_a"])
      B = np.asarray(trainable["model"]["layers"][block][name]["lora_b"])
      Gw = np.asarray(G[block][name]["kernel"])
      np.testing.assert_allclose(ab["lora_a"], s * np.einsum("lio,lro->lir", Gw, B),
                                 atol=2e-6, rtol=1e-4)
      np.testing.assert_allclose(ab["lora_b"], s * np.einsum("lir,lio->lro", A, Gw),
                                 atol=2e-6, rtol=1e-4)


def _sft_batch(rows=4):
  rng = np.random.default_rng(3)
  tokens = rng.integers(1, 61, (rows, 10)).astype(np.int32)
  mask = np.ones_like(tokens)
  loss_mask = np.zeros_like(tokens)
  loss_mask[:, 5:] = 1
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_sft_steps_move_only_the_adapters_and_keep_optimizer_state_for_them_only():
  params = lora.add_adapters(_base(), CFG, jax.random.key(1))
  before = _leaves(params)
  opt = train_step.make_optimizer(1e-2, 0, 10, 0.1, 1.0)
  state = train_step.init_state(params, opt)
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * lora.num_adapter_params(CFG)  # Adam's mu and nu
  step = train_step.make_sft_step(CFG, opt)
  for _ in range(2):
    state, m = step(state, _sft_batch())
  after = _leaves(state.params)
  assert after.keys() == before.keys()
  for k, v in after.items():
    if "lora_" in k:
      assert not np.array_equal(v, before[k]), k  # B leaves 0 after the first update; A after the second
    else:
      assert np.array_equal(v, before[k]), k      # the base, bit for bit
  assert np.isfinite(float(m["loss"]))


def test_microbatched_unrolled_lora_step_equals_one_pass():
  cfg = dataclasses.replace(CFG, scan_layers=False)
  params = _adapted(cfg)
  opt = optax.sgd(0.1)
  out = {}
  for n in (1, 2):
    state = train_step.init_state(jax.tree.map(jnp.copy, params), opt)
    state, m = train_step.make_sft_step(cfg, opt, microbatches=n)(state, _sft_batch())
    out[n] = (_leaves(state.params), float(m["loss"]))
  assert out[1][1] == pytest.approx(out[2][1], rel=1e-6)
  for k, v in out[1][0].items():
    np.testing.assert_allclose(out[2][0][k], v, atol=1e-6)


def test_rl_step_with_contrast_trains_adapters_and_the_reference_shares_the_base():
  params = lora.add_adapters(_base(), CFG, jax.random.key(1))
  ref = rl_stage.reference_params(params)
  base_leaves = jax.tree.leaves(lora.split(params)[1])
  assert all(a is b for a, b in zip(jax.tree.leaves(lora.split(ref)[1]), base_leaves))
  opt = train_step.make_optimizer(1e-2, 0, 10, 0.0, 1.0)
  state = train_step.init_state(params, opt)
  T, M, N = 10, 4, 4
  rng = np.random.default_rng(5)
  tokens = rng.integers(1, 61, (N, T)).astype(np.int32)
  cmask = np.zeros((N, T), np.int32)
  cmask[:, T - M:] = 1
  logprob = rl_step.make_logprob_fn(CFG, completion_len=M)
  route = dict(tokens=jnp.asarray(rng.integers(1, 61, (4, 8)), jnp.int32),
               mask=jnp.ones((4, 8), jnp.int32), loss_mask=jnp.ones((4, 8), jnp.int32))
  from realm_jax.rl.batch import RouteBatch
  rb = RouteBatch(**route, labels=jnp.asarray([[1, 0], [0, 1]], jnp.int32),
                  valid=jnp.ones((2, 2), bool),
                  ref_logp=rl_step.route_loglik(ref, CFG, route["tokens"], route["mask"],
                                                route["loss_mask"]).reshape(2, 2))
  batch = UpdateBatch(tokens=jnp.asarray(tokens), mask=jnp.ones((N, T), jnp.int32),
                      completion_mask=jnp.asarray(cmask), adv=jnp.asarray([1., -1., .5, -.5]),
                      ref_logp=logprob(ref, tokens, np.ones((N, T))), sampler_logp=None,
                      old_logp=None, route=rb)
  update = rl_step.make_rl_step(CFG, opt, losses.LossConfig(kl_coef=0.04), contrast_coef=0.5,
                                completion_len=M)
  before = _leaves(params)
  for _ in range(2):
    state, m = update(state, batch)
  assert np.isfinite(float(m["loss"])) and "contrast_loss" in m
  after = _leaves(state.params)
  assert all(np.array_equal(after[k], v) == ("lora_" not in k) for k, v in before.items())
  # the reference survived the donated steps and still is the start
  np.testing.assert_array_equal(logprob(ref, tokens, np.ones((N, T))), batch.ref_logp)


def test_sampler_with_adapters_equals_the_sampler_on_merged_weights():
  params = _adapted()
  scfg = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0, pad_id=0)
  prompt, pmask = jnp.asarray(TOKENS, jnp.int32), jnp.asarray(MASK)
  a = sampling.generate(params, CFG, prompt, pmask, jax.random.key(0), scfg)
  b = sampling.generate(lora.merged(params, CFG.lora), BASE, prompt, pmask, jax.random.key(0), scfg)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


# ----------------------------------------------------------------- Hugging Face and PEFT


def _torch_logits(m):
  import torch
  with torch.no_grad():
    return m(input_ids=torch.tensor(TOKENS), attention_mask=torch.tensor(MASK.astype(np.int64))
             ).logits.numpy()


def test_merged_export_loads_in_transformers_with_the_adapter_logits(tmp_path):
  import transformers
  params = _adapted()
  hf.save_hf(tmp_path, BASE, lora.merged(params, CFG.lora))
  m = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
  ours = np.asarray(model.apply(params, CFG, TOKENS, MASK)[0])
  assert np.abs(_torch_logits(m.eval()) - ours)[MASK].max() < ATOL


def test_peft_export_loads_in_peft_with_the_adapter_logits_and_reads_back(tmp_path):
  import transformers
  import peft
  params = _adapted()
  hf.save_hf(tmp_path / "base", BASE, lora.split(params)[1])
  lora.save_peft(tmp_path / "adapter", params, CFG.lora, base_model=str(tmp_path / "base"))
  base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base",
                                                           attn_implementation="eager")
  m = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
  ours = np.asarray(model.apply(params, CFG, TOKENS, MASK)[0])
  theirs = _torch_logits(m)
  assert np.abs(theirs - ours)[MASK].max() < ATOL
  back = lora.load_peft(tmp_path / "adapter", lora.split(params)[1], CFG)
  for k, v in _leaves(params).items():
    np.testing.assert_array_equal(_leaves(back)[k], v)
  with pytest.raises(ValueError, match="r=4, lora_alpha=8.0 do not match"):
    lora.load_peft(tmp_path / "adapter", _base(),
                   dataclasses.replace(CFG, lora=LoraConfig(rank=2, alpha=8.0)))


def test_lora_options_are_checked_with_the_field_named():
  with pytest.raises(ValueError, match="model.lora_rank=-1 must be >= 0"):
    configs.load_experiment("demo", ["model.lora_rank=-1"])
  with pytest.raises(ValueError, match="model.lora_targets=.*name one or more of"):
    configs.load_experiment("demo", ["model.lora_rank=4", "model.lora_targets=qproj"])
  with pytest.raises(ValueError, match="model.lora_alpha=0.0 must be > 0"):
    configs.load_experiment("demo", ["model.lora_rank=4", "model.lora_alpha=0"])
  cfg = configs.load_experiment("demo", ["model.lora_rank=4", "model.lora_targets=q_proj,v_proj"])
  assert cfg.model.lora() == LoraConfig(rank=4, alpha=16.0, targets=("q_proj", "v_proj"))
