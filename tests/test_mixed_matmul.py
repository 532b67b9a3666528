"""bf16 matmul operands with fp32 accumulation under fp32 compute (`ModelConfig.matmul_dtype`).

The reference values are numpy float64 products of operands rounded to bf16 by hand:
with those roundings the only remaining error is fp32 accumulation (~1e-6 here).
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import model
from realm_jax.model import layers, sampling, spec
from realm_jax.train import step as train_step

U = 2.0 ** -8  # bf16 unit roundoff
CFG = model.ModelConfig(vocab_size=128, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, init_std=0.1, tie_embeddings=True)
MIXED = dataclasses.replace(CFG, matmul_dtype="bfloat16")
PARAMS = model.init_params(CFG, jax.random.key(0))


def _bf16(a) -> np.ndarray:
  """a rounded to bf16 (round to nearest even), as float64."""
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def _batch(B=4, T=20):
  rng = np.random.default_rng(0)
  mask = np.ones((B, T), bool)
  mask[1, :4] = mask[2, :9] = False  # left padding
  return np.where(mask, rng.integers(1, CFG.vocab_size, (B, T)), 0), mask


def test_matmul_and_its_gradients_equal_products_of_bf16_rounded_operands():
  kx, kw, kg = jax.random.split(jax.random.key(1), 3)
  x, w, g = (jax.random.normal(k, s) for k, s in ((kx, (48, 32)), (kw, (32, 40)), (kg, (48, 40))))
  y = layers.matmul(x, w, "bfloat16", "float32")
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), _bf16(x) @ _bf16(w), atol=1e-5, rtol=0)
  assert np.abs(np.asarray(y) - np.asarray(x, np.float64) @ np.asarray(w)).max() > 1e-3  # rounded
  dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(layers.matmul(x, w, "bfloat16", "float32") * g),
                            argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(np.asarray(dx), _bf16(g) @ _bf16(w).T, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(dw), _bf16(x).T @ _bf16(g), atol=1e-5, rtol=0)
  assert dx.dtype == dw.dtype == jnp.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("copy_transpose", [True, False])  # the CPU layout, the others'
def test_weight_grad_layouts_equal_x_transpose_times_g(copy_transpose, dtype):
  kx, kg = jax.random.split(jax.random.key(8), 2)
  x, g = jax.random.normal(kx, (24, 16), dtype), jax.random.normal(kg, (24, 40), dtype)
  got = jax.jit(layers.weight_grad, static_argnums=2)(x, g, copy_transpose)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _bf16(x).T @ _bf16(g) if dtype == "bfloat16"
                             else np.asarray(x).T @ np.asarray(g), atol=1e-4)


def _dots(hlo: str) -> list[tuple[str, str, str, str]]:
  """(lhs type, rhs type, op name, runner) of every dot in optimized HLO text. Operand
  names are looked up within the dot's own computation (fused computations reuse
  `param_0`...); runner is the calling fusion's library kind (e.g. "__ynn_fusion"), or
  "" for a dot XLA:CPU runs itself (its DotThunk, which has no bf16 x bf16 -> fp32)."""
  kinds = {c: k for c, k in re.findall(r"calls=%([\w.\-]+).*?\"kind\":\"(\w+)\"", hlo)}
  out = []
  for block in re.split(r"\n(?=\S)", hlo):  # one computation per unindented header
    head = block.split("\n")[0]
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", block))
    types.update(re.findall(r"[(,] ?([\w.\-]+): (\w+)\[", head))
    runner = kinds.get(head.split(" ")[0].lstrip("%"), "")
    for a, b, name in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\).*?op_name=\"([^\"]*)\"",
                                 block):
      out.append((types[a], types[b], name, runner))
  return out


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot lowering")
def test_every_matmul_of_a_mixed_training_step_runs_as_a_bf16_library_dot_on_cpu():
  """XLA:CPU hands a bf16 x bf16 -> fp32 dot to its fast library (YNNPACK) only when the
  operands are row-major, the weight in either orientation; others it converts to fp32, or,
  where a later pass folds a transpose into the dot, cannot run at all. The weight
  gradient's transposed copy (`layers.transposed_copy`), the tied head's untransposed
  embedding and the barrier before the head's dw transpose keep every dot library-run
  (a fusion of a library kind: "__ynn_fusion" with jax 0.10).
  Forward, dx and dw of the 7 projections of the (scanned) layer and of the head: 24 bf16
  dots. Only attention's einsums stay fp32, by design."""
  tokens, mask = _batch()
  loss = lambda p: -jnp.sum(train_step.token_logprobs(p, MIXED, tokens, mask))
  dots = _dots(jax.jit(jax.grad(loss)).lower(PARAMS).compile().as_text())
  low = [(name, runner) for a, b, name, runner in dots if (a, b) == ("bf16", "bf16")]
  assert len(low) == 3 * 7 + 3 and all(r for _, r in low), low  # every one library-run
  for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
    assert sum(f"/{proj}/" in n for n, _ in low) == 3, (proj, low)
  rest = [d for d in dots if d[:2] != ("bf16", "bf16")]
  assert rest and all(d[:2] == ("f32", "f32") and "self_attn/BK" in d[2] for d in rest), rest


@pytest.mark.parametrize("tied", [True, False])
def test_mixed_logprobs_are_within_bf16_operand_rounding_of_fp32(tied):
  """Only the matmul operands are rounded (2 layers of 7 projections + the head, tied to
  the embedding or its own [D, V] weight); a log-prob then lands a few U from fp32, and
  the option must change something."""
  tokens, mask = _batch()
  cfg32 = dataclasses.replace(CFG, tie_embeddings=tied)
  params = PARAMS if tied else model.init_params(cfg32, jax.random.key(0))
  lp32 = np.asarray(train_step.token_logprobs(params, cfg32, tokens, mask))
  lpmx = np.asarray(train_step.token_logprobs(
      params, dataclasses.replace(cfg32, matmul_dtype="bfloat16"), tokens, mask))
  assert lpmx.dtype == np.float32
  gap = np.abs(lpmx - lp32)[mask[:, 1:]]
  assert gap.mean() < 2 * U and gap.max() < 8 * U, (gap.mean(), gap.max())
  assert gap.max() > 1e-4  # the option is applied


def test_mixed_gradients_point_where_fp32_gradients_point():
  tokens, mask = _batch()
  loss = lambda p, c: -jnp.mean(train_step.token_logprobs(p, c, tokens, mask))
  g32 = jax.jit(jax.grad(loss), static_argnums=1)(PARAMS, CFG)
  gmx = jax.jit(jax.grad(loss), static_argnums=1)(PARAMS, MIXED)  # compiled as a step is
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g32), jax.tree_util.tree_leaves(gmx)):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    assert b.dtype == np.float32
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cos > 0.999, (jax.tree_util.keystr(path), cos)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 16 * U, (jax.tree_util.keystr(path), rel)


def test_mixed_sampler_logprobs_equal_trainer_logprobs():
  """Sampler (cached decode) and trainer (full recompute) round the same operands the
  same way: most of their log-probs of the sampled tokens agree to fp32 accumulation
  error. Where an accumulation-order difference of one fp32 ulp flips an operand's
  bf16 rounding, a token moves by up to about U; on average the two stay far closer
  to each other than either is to fp32."""
  tokens, mask = _batch(T=12)
  scfg = sampling.SamplingConfig(max_new_tokens=12, num_samples=2)
  roll = sampling.generate(PARAMS, MIXED, jnp.asarray(tokens), jnp.asarray(mask),
                           jax.random.key(1), scfg)
  comp = np.asarray(roll.completion_mask)[:, 1:]
  assert comp.sum() > 40
  sampler = np.asarray(roll.model_logprobs)[:, 1:][comp]
  trainer = np.asarray(train_step.token_logprobs(PARAMS, MIXED, roll.tokens, roll.mask))[comp]
  fp32 = np.asarray(train_step.token_logprobs(PARAMS, CFG, roll.tokens, roll.mask))[comp]
  gap, gap32 = np.abs(sampler - trainer), np.abs(fp32 - trainer)
  assert np.median(gap) < 1e-5 and np.mean(gap > 1e-5) < 0.1, np.sort(gap)[-10:]
  assert gap.max() < 4 * U and gap.mean() < gap32.mean() / 10, (gap.max(), gap.mean(), gap32.mean())


def test_matmul_dtype_reaches_the_model_config_from_the_spec():
  assert spec.ModelSpec().model_dtypes("cpu")["matmul_dtype"] is None  # auto: compute dtype
  assert spec.ModelSpec(matmul_dtype="bfloat16").model_dtypes("cpu") == {
      "param_dtype": "float32", "dtype": "float32", "matmul_dtype": "bfloat16"}
  for bad in ("int8", "float16"):  # fp16 would underflow the backward's cotangents
    with pytest.raises(ValueError, match=f"model.matmul_dtype='{bad}'"):
      spec.ModelSpec(matmul_dtype=bad)
  with pytest.raises(ValueError, match="ModelConfig.matmul_dtype='float16'"):
    dataclasses.replace(CFG, matmul_dtype="float16")
  with pytest.raises(ValueError, match="ModelConfig.matmul_dtype='fp8'"):
    dataclasses.replace(CFG, matmul_dtype="fp8")


def test_mixed_grads_on_a_mesh_equal_the_single_device_ones():
  """The weight gradient's row-major copy of a batch-sharded activation is a reshape XLA
  must partition; on a (data, fsdp, tensor) = (2, 2, 2) mesh of fake devices the step gives
  the single-device numbers (up to fp32 summation order and the bf16 roundings it flips)."""
  from jax.sharding import PartitionSpec as P
  from realm_jax.train import sharding as sh
  tokens, mask = _batch(B=8)
  loss = lambda p, t, m: -jnp.mean(train_step.token_logprobs(p, MIXED, t, m))
  want_loss, want = jax.jit(jax.value_and_grad(loss))(PARAMS, tokens, mask)
  mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
  p_sh, b_sh = sh.param_shardings(MIXED, mesh), sh.batch_sharding(mesh)
  step = jax.jit(jax.value_and_grad(loss), in_shardings=(p_sh, b_sh, b_sh),
                 out_shardings=(sh.replicated(mesh), p_sh))
  t, m = jax.device_put((jnp.asarray(tokens), jnp.asarray(mask)), b_sh)
  with sh.use_mesh(mesh):
    got_loss, got = step(sh.shard_params(PARAMS, p_sh), t, m)
  q = got["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor")
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves(got)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.linalg.norm(a - b) < 2 * U * np.linalg.norm(a), jax.tree_util.keystr(path)


def test_training_with_mixed_matmuls_follows_the_fp32_loss_curve():
  """40 Adam steps fitting one batch: the bf16-operand run's loss curve stays within a few
  percent of the fp32 run's while both fall several-fold."""
  import optax
  tokens, mask = _batch()
  loss = lambda p, c: -jnp.mean(train_step.token_logprobs(p, c, tokens, mask))
  opt = optax.adam(3e-3)

  def curve(cfg):
    @jax.jit
    def step(p, s):
      l, g = jax.value_and_grad(loss)(p, cfg)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s, l
    p, s, out = PARAMS, opt.init(PARAMS), []
    for _ in range(40):
      p, s, l = step(p, s)
      out.append(float(l))
    return np.array(out)

  c32, cmx = curve(CFG), curve(MIXED)
  assert c32[-1] < c32[0] / 4 and cmx[-1] < cmx[0] / 4, (c32[[0, -1]], cmx[[0, -1]])
  assert np.max(np.abs(cmx - c32) / c32) < 0.05, np.abs(cmx - c32) / c32


def test_lora_under_mixed_matmuls_starts_as_the_base_and_trains_only_adapters():
  """Zero-initialised B: the adapted mixed model gives exactly the plain mixed model's
  logits (bf16(0) = 0 adds nothing); the loss's gradient reaches B, not yet A (whose
  gradient passes through B = 0)."""
  from realm_jax.model import lora as lora_lib
  from realm_jax.model.config import LoraConfig
  cfg = dataclasses.replace(MIXED, lora=LoraConfig(rank=4, targets=("q_proj", "down_proj")))
  params = model.init_params(cfg, jax.random.key(2))
  trainable, frozen = lora_lib.split(params)
  tokens, mask = _batch()
  base_logits, _ = model.apply(frozen, MIXED, tokens, mask)
  logits, _ = model.apply(params, cfg, tokens, mask)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(base_logits))
  loss = lambda t: -jnp.mean(train_step.token_logprobs(lora_lib.merge(t, frozen), cfg, tokens, mask))
  g = jax.jit(jax.grad(loss))(trainable)
  for proj in (g["model"]["layers"]["self_attn"]["q_proj"], g["model"]["layers"]["mlp"]["down_proj"]):
    assert float(jnp.abs(proj["lora_a"]).max()) == 0 and float(jnp.abs(proj["lora_b"]).max()) > 0
