"""Sharded == unsharded on 8 fake CPU devices (XLA_FLAGS set in conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from realm_jax import model
from realm_jax.train import sharding as sh
from realm_jax.rl import step as rl_step

TOL = 1e-5  # fp32 policy

# Every sharded dimension divides 8: heads 16 (GQA 2:1), kv heads 8, d_model 32.
CFG = model.ModelConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=16, num_kv_heads=8,
                        head_dim=8, mlp_dim=64, max_seq_len=16)
MESHES = [(8, 1, 1), (2, 2, 2),
          pytest.param((1, 1, 8), marks=pytest.mark.slow),
          pytest.param((2, 4, 1), marks=pytest.mark.slow),
          pytest.param((1, 8, 1), marks=pytest.mark.slow)]


def test_eight_devices_present():
  assert jax.device_count() >= 8, (
      f"tests/conftest.py must set XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax "
      f"initialises; found {jax.device_count()} devices")


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, size=(8, 12)).astype(np.int32)
  lengths = np.array([12, 7, 12, 3, 9, 12, 5, 11])
  mask = np.arange(12)[None, :] >= (12 - lengths)[:, None]  # left padded
  return jnp.asarray(np.where(mask, tokens, 0)), jnp.asarray(mask)


def _loss(params, tokens, mask):
  """Mean next-token cross-entropy over real (target) tokens, fp32; aux: logits."""
  logits, _ = model.apply(params, CFG, tokens, mask)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  tgt = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  w = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
  return -(tgt * w).sum() / w.sum(), logits


loss_and_grad = jax.value_and_grad(_loss, has_aux=True)


@pytest.fixture(scope="module")
def reference():
  params = model.init_params(CFG, jax.random.key(1))
  (loss, logits), grads = jax.jit(loss_and_grad)(params, *_batch())
  return params, logits, loss, grads


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_and_grad_match_single_device(shape, reference):
  ref_params, ref_logits, ref_loss, ref_grads = reference
  mesh = sh.make_mesh(sh.MeshConfig(*shape))
  assert dict(mesh.shape) == dict(zip(sh.MESH_AXES, shape))
  sh.check_divisibility(CFG, mesh, batch_size=8)
  p_sh = sh.param_shardings(CFG, mesh)
  b_sh = sh.batch_sharding(mesh)
  params = sh.shard_params(ref_params, p_sh)
  logits_sh = sh.logical_sharding(mesh, P("batch", "length", "vocab"))
  step = jax.jit(loss_and_grad, in_shardings=(p_sh, b_sh, b_sh),
                 out_shardings=((sh.replicated(mesh), logits_sh), p_sh))
  tokens, mask = jax.device_put(_batch(), b_sh)  # placed before entering the mesh context
  with sh.use_mesh(mesh):
    (loss, logits), grads = step(params, tokens, mask)

  # The arrays really carry the declared shardings.
  assert logits.sharding.spec == P(("data", "fsdp"), None, "tensor")
  emb = params["model"]["embed_tokens"]["embedding"]
  assert emb.sharding.spec == P("tensor", "fsdp")
  q = grads["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor")
  n_shards = shape[1] * shape[2]
  assert q.addressable_shards[0].data.size == q.size // n_shards
  # ... and give the single-device numbers.
  np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(loss, ref_loss, atol=TOL, rtol=TOL)
  assert _max_diff(grads, ref_grads) < TOL


def test_use_mesh_activates_logical_constraints():
  mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
  params = jax.eval_shape(lambda: model.init_params(CFG, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((8, 4), jnp.int32)
  fn = lambda p, t: model.forward(p, t, CFG)
  outside = str(jax.make_jaxpr(fn)(params, tokens))
  with sh.use_mesh(mesh):
    inside = str(jax.make_jaxpr(fn)(params, tokens))
  assert "sharding_constraint" not in outside
  assert "sharding_constraint" in inside
  # Rules are gone again after the context.
  assert "sharding_constraint" not in str(jax.make_jaxpr(fn)(params, tokens))


def test_init_params_sharded_matches_host_init():
  mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
  params = sh.init_params_sharded(CFG, jax.random.key(3), mesh)
  ref = model.init_params(CFG, jax.random.key(3))
  assert _max_diff(params, ref) < TOL
  expected = sh.param_shardings(CFG, mesh)
  for arr, s in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert arr.sharding.is_equivalent_to(s, arr.ndim)


def test_opt_state_shardings_follow_params():
  mesh = sh.make_mesh(sh.MeshConfig(1, 4, 2))
  p_sh = sh.param_shardings(CFG, mesh)
  abstract = sh.abstract_params(CFG, p_sh)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  o_sh = sh.opt_state_shardings(opt, abstract, p_sh)
  adam = o_sh[1][0]
  assert adam.count.spec == P()
  assert jax.tree.map(lambda s: s.spec, adam.mu) == jax.tree.map(lambda s: s.spec, p_sh)
  assert jax.tree.map(lambda s: s.spec, adam.nu) == jax.tree.map(lambda s: s.spec, p_sh)
  # The tree is usable as out_shardings of optimizer.init.
  params = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding), abstract)
  state = jax.jit(opt.init, out_shardings=o_sh)(params)
  mu_q = state[1][0].mu["model"]["layers"]["mlp"]["down_proj"]["kernel"]
  assert mu_q.sharding.spec == P(None, "tensor", "fsdp")


def test_batch_shardings():
  mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
  assert sh.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
  assert sh.batch_sharding(mesh, ndim=1).spec == P(("data", "fsdp"))


def test_mesh_config_resolution_and_errors():
  assert sh.MeshConfig().resolve(8) == (8, 1, 1)
  assert sh.MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 2)
  assert sh.MeshConfig(2, 2, 2).resolve(8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sh.MeshConfig(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="fsdp=0"):
    sh.MeshConfig(fsdp=0)
  with pytest.raises(ValueError, match="uses 4 devices but 8 are present"):
    sh.MeshConfig(2, 2, 1).resolve(8)
  with pytest.raises(ValueError, match="multiply to 3, which does not divide the 8 devices"):
    sh.MeshConfig(-1, 3, 1).resolve(8)


def test_check_divisibility_messages():
  cfg = model.ModelConfig(vocab_size=64, num_layers=1, d_model=20, num_heads=8, num_kv_heads=4,
                          head_dim=8, mlp_dim=64)
  with pytest.raises(ValueError) as e:
    sh.check_divisibility(cfg, sh.make_mesh(sh.MeshConfig(1, 1, 8)), batch_size=8)
  assert "num_kv_heads=4 is not divisible by mesh tensor=8; choose tensor in (1, 2, 4)" in str(e.value)
  with pytest.raises(ValueError) as e:
    sh.check_divisibility(cfg, sh.make_mesh(sh.MeshConfig(1, 8, 1)), batch_size=6)
  msg = str(e.value)
  assert "d_model=20 is not divisible by mesh fsdp=8; choose fsdp in (1, 2, 4, 5, 10, 20)" in msg
  assert "batch_size=6 is not divisible by mesh data*fsdp=8" in msg
  sh.check_divisibility(cfg, sh.make_mesh(sh.MeshConfig(4, 2, 1)), batch_size=8)  # fine


def test_compiled_memory_estimate_golden_and_check_fits():
  mesh = sh.make_mesh(sh.MeshConfig(8, 1, 1))
  s = sh.batch_sharding(mesh)
  x = jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=s)
  est = sh.compiled_memory_estimate(jax.jit(lambda a: a * 2.0, out_shardings=s), x)
  per_device = 1024 * 256 * 4 // 8  # one fp32 row block of 128 x 256
  assert est["argument_bytes"] == per_device
  assert est["output_bytes"] == per_device
  assert est["total_bytes"] == (est["argument_bytes"] + est["output_bytes"] + est["temp_bytes"]
                                - est["alias_bytes"])
  donated = sh.compiled_memory_estimate(
      jax.jit(lambda a: a * 2.0, out_shardings=s, donate_argnums=0), x)
  assert donated["alias_bytes"] == per_device
  assert sh.check_fits(est, device_memory=10 * per_device) is True
  with pytest.raises(MemoryError, match=r"exceeds 100% of the device memory 0.00 GiB"):
    sh.check_fits(est, device_memory=per_device)
  # CPU devices report no memory limit: the host's (MemTotal, or a lower cgroup limit) is
  # the most any of them can use
  with open("/proc/meminfo") as f:
    total = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemTotal:"))
  assert sh.device_memory_bytes() == sh.host_memory_bytes() <= total
  assert sh.host_memory_bytes() > total // 2  # no cgroup limit below half the host here
  assert sh.check_fits(est) is True
  with pytest.raises(MemoryError, match=r"raise the stage's microbatches, enable model.remat"):
    sh.check_fits(dict(est, total_bytes=total + 1))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_microbatched_rl_step_matches_single_device_one_pass(shape):
  """Strided microbatches of a batch sharded over the data axes: same update as
  the unsharded step without microbatches."""
  from realm_jax.rl import losses
  from realm_jax.train import step as train_step
  params = model.init_params(CFG, jax.random.key(2))
  tokens, mask = _batch()
  rng = np.random.default_rng(2)
  cmask = jnp.asarray(np.arange(12)[None, :] >= np.array([6, 8, 7, 11, 6, 9, 6, 10])[:, None])
  from realm_jax.rl.batch import UpdateBatch
  batch = UpdateBatch(tokens=tokens, mask=mask, completion_mask=cmask.astype(jnp.int32),
                      ref_logp=jnp.asarray(rng.normal(-4, 0.3, (8, 11)), jnp.float32),
                      adv=jnp.asarray(rng.normal(size=8), jnp.float32))
  opt = optax.sgd(1.0)
  loss_cfg = losses.LossConfig(kl_coef=0.04)
  step = rl_step.make_rl_step(CFG, opt, loss_cfg, completion_len=6)
  want, want_m = step(train_step.init_state(jax.tree.map(jnp.copy, params), opt), batch)

  mesh = sh.make_mesh(sh.MeshConfig(*shape))
  state, shardings = train_step.shard_state(train_step.init_state(params, opt), opt, CFG, mesh)
  step_sh = rl_step.make_rl_step(CFG, opt, loss_cfg, shardings=shardings, completion_len=6,
                                    microbatches=2)
  with sh.use_mesh(mesh):
    got, got_m = step_sh(state, jax.tree.map(lambda v: sh.put(v, shardings.batch), batch))
  assert _max_diff(got.params, want.params) < TOL
  assert float(got_m["loss"]) == pytest.approx(float(want_m["loss"]), abs=TOL)
