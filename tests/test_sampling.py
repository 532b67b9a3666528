"""Sampler tests: cached decoding against full recomputation, log-probs against
teacher forcing, sampling supports against numpy, stops, padding, layout, compiles."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import model as model_lib
from realm_jax.model import sampling

# Large init so logits are well separated (no near-ties in argmax / supports).
CFG = model_lib.ModelConfig(vocab_size=61, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                            head_dim=8, mlp_dim=64, init_std=0.3, max_seq_len=64)
LP_TOL = 1e-5  # fp32 log-prob policy


@pytest.fixture(scope="module")
def params():
  return jax.jit(model_lib.init_params, static_argnums=0)(CFG, jax.random.key(0))


_full_logits = jax.jit(lambda p, t, m: model_lib.apply(p, CFG, t, m)[0])


def left_pad(prompts, T, pad=0):
  toks = np.full((len(prompts), T), pad, np.int32)
  mask = np.zeros((len(prompts), T), bool)
  for i, p in enumerate(prompts):
    toks[i, T - len(p):] = p
    mask[i, T - len(p):] = True
  return jnp.asarray(toks), jnp.asarray(mask)


def random_prompts(seed, lengths):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(1, CFG.vocab_size, n)) for n in lengths]


def log_softmax_np(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def teacher_forced(params, roll):
  """fp64 log-softmax of the full forward's logits predicting each position t (from t-1)."""
  logits = np.asarray(_full_logits(params, roll.tokens, roll.mask), np.float64)
  pred = np.zeros_like(logits)
  pred[:, 1:] = logits[:, :-1]
  return pred


def gather(x_NTV, tok_NT):
  return np.take_along_axis(x_NTV, np.asarray(tok_NT)[..., None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------


def test_config_validation():
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.SamplingConfig(max_new_tokens=0)
  with pytest.raises(ValueError, match="temperature"):
    sampling.SamplingConfig(max_new_tokens=4, temperature=-0.5)
  with pytest.raises(ValueError, match="top_k"):
    sampling.SamplingConfig(max_new_tokens=4, top_k=-1)
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match="top_p"):
      sampling.SamplingConfig(max_new_tokens=4, top_p=bad)
  with pytest.raises(ValueError, match="stop_ids"):
    sampling.SamplingConfig(max_new_tokens=4, stop_ids=(3, -1))
  with pytest.raises(ValueError, match="num_samples"):
    sampling.SamplingConfig(max_new_tokens=4, num_samples=0)
  scfg = sampling.SamplingConfig(max_new_tokens=4, stop_ids=[5, 7])
  assert scfg.stop_ids == (5, 7) and hash(scfg) == hash(sampling.SamplingConfig(4, stop_ids=(5, 7)))


def test_first_argmax_matches_numpy_with_ties():
  x = np.array([[1., 3., 3., 0.], [5., 5., 5., 5.], [-1., -2., 0., -0.5]], np.float32)
  np.testing.assert_array_equal(sampling.first_argmax(jnp.asarray(x)), np.argmax(x, -1))


def test_categorical_is_the_inverse_cdf():
  """On a grid of n quantiles u, each token is drawn n * q(v) times (+-1), zero-weight never."""
  rng = np.random.default_rng(1)
  V, n = 300, 20000  # V not a multiple of the block: exercises padding
  logw = rng.normal(0, 2, V).astype(np.float32)
  logw[rng.choice(V, 40, replace=False)] = -np.inf
  u = (np.arange(n) + 0.5) / n
  draws, lse = sampling.categorical(jnp.broadcast_to(jnp.asarray(logw), (n, V)),
                                    jnp.asarray(u, jnp.float32))
  draws = np.asarray(draws)
  q = np.exp(log_softmax_np(logw))
  finite = logw[np.isfinite(logw)].astype(np.float64)
  np.testing.assert_allclose(lse, np.log(np.sum(np.exp(finite))), atol=LP_TOL)
  counts = np.bincount(draws, minlength=V)
  assert np.all(counts[np.isinf(logw)] == 0)
  np.testing.assert_allclose(counts, n * q, atol=2)
  # Independent reference: searchsorted on the fp64 CDF, except at the rare boundaries.
  ref = np.searchsorted(np.cumsum(q), u, side="right")
  assert np.mean(draws == ref) > 0.999
  # Extreme uniforms (1.0 included, which fp32 rounding of u * total can reach)
  # still land on positive-weight tokens.
  ext = np.asarray(sampling.categorical(jnp.asarray(np.stack([logw, logw])),
                                        jnp.asarray([0.0, 1.0], jnp.float32))[0])
  assert np.all(np.isfinite(logw[ext]))


def test_greedy_cached_decoding_equals_full_recompute(params):
  M = 6
  toks, mask = left_pad(random_prompts(2, [5, 3]), 5)
  scfg = sampling.SamplingConfig(max_new_tokens=M, temperature=0.0)
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(0), scfg)
  T = toks.shape[1]
  for j in range(M):
    # Full recomputation (no cache) on the sequence so far; later slots are
    # blanked and masked (fixed shape, one compile; causality hides them).
    visible = np.arange(T + M) < T + j
    seq = jnp.where(visible, roll.tokens, 0)
    logits = np.asarray(_full_logits(params, seq, roll.mask & visible))[:, T + j - 1]
    np.testing.assert_array_equal(np.asarray(roll.tokens[:, T + j]), np.argmax(logits, -1))
    np.testing.assert_allclose(np.asarray(roll.model_logprobs[:, T + j]),
                               log_softmax_np(logits).max(-1), atol=LP_TOL)
  assert np.all(np.asarray(roll.logprobs) == 0)  # greedy samples a point mass
  np.testing.assert_array_equal(roll.lengths, [M, M])
  assert np.all(np.asarray(roll.truncated))


def test_logprobs_equal_teacher_forced(params):
  temperature = 0.7
  toks, mask = left_pad(random_prompts(3, [6, 4]), 6)
  scfg = sampling.SamplingConfig(max_new_tokens=8, temperature=temperature, num_samples=2)
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(1), scfg)
  pred = teacher_forced(params, roll)
  cm = np.asarray(roll.completion_mask)
  model_lp = gather(log_softmax_np(pred), roll.tokens)
  sampled_lp = gather(log_softmax_np(pred / temperature), roll.tokens)
  np.testing.assert_allclose(np.asarray(roll.model_logprobs)[cm], model_lp[cm], atol=LP_TOL)
  np.testing.assert_allclose(np.asarray(roll.logprobs)[cm], sampled_lp[cm], atol=LP_TOL)
  assert np.all(np.asarray(roll.logprobs)[~cm] == 0)
  assert np.all(np.asarray(roll.model_logprobs)[~cm] == 0)


def support_np(x, top_k, top_p):
  """bool support of top-k then top-p (nucleus) over logits x [..., V], in fp64."""
  x = np.asarray(x, np.float64)
  keep = np.ones(x.shape, bool)
  if top_k:
    kth = np.sort(x, -1)[..., -top_k][..., None]
    keep &= x >= kth
  if top_p < 1:
    xs = np.where(keep, x, -np.inf)
    p = np.exp(log_softmax_np(xs))
    order = np.argsort(-xs, -1)
    ps = np.take_along_axis(p, order, -1)
    before = np.cumsum(ps, -1) - ps
    keep_sorted = before < top_p
    inv = np.argsort(order, -1)
    keep &= np.take_along_axis(keep_sorted, inv, -1)
  return keep


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (7, 0.8)])
def test_top_k_top_p_stay_in_support(params, top_k, top_p):
  temperature = 1.3
  toks, mask = left_pad(random_prompts(4, [5, 5, 3, 4]), 5)
  scfg = sampling.SamplingConfig(max_new_tokens=12, temperature=temperature, top_k=top_k,
                                 top_p=top_p, num_samples=8)
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(2), scfg)
  pred = teacher_forced(params, roll) / temperature
  cm = np.asarray(roll.completion_mask)
  keep = support_np(pred, top_k, top_p)
  tok = np.asarray(roll.tokens)
  in_support = gather(keep, tok)
  assert np.all(in_support[cm]), "a token outside the top-k/top-p support was sampled"
  # Log-probs of the renormalised filtered distribution.
  filtered = np.where(keep, pred, -np.inf)
  expected = gather(log_softmax_np(filtered), tok)
  np.testing.assert_allclose(np.asarray(roll.logprobs)[cm], expected[cm], atol=LP_TOL)
  # Not vacuous: the support was explored beyond the argmax.
  assert np.mean(tok[cm] != np.argmax(pred, -1)[cm]) > 0.1


def test_stop_tokens(params):
  M, pad = 8, 0
  toks, mask = left_pad(random_prompts(5, [4, 6]), 6)
  base = sampling.generate(params, CFG, toks, mask, jax.random.key(0),
                           sampling.SamplingConfig(max_new_tokens=M, temperature=0.0))
  comp = np.asarray(base.tokens)[:, 6:]
  # A stop id that row 0 emits (not first) and row 1 never does.
  stop = next(int(t) for t in comp[0, 1:] if t not in comp[1])
  scfg = sampling.SamplingConfig(max_new_tokens=M, temperature=0.0, stop_ids=(stop,), pad_id=pad)
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(0), scfg)
  L0 = int(np.argmax(comp[0] == stop)) + 1
  np.testing.assert_array_equal(roll.lengths, [L0, M])
  np.testing.assert_array_equal(roll.truncated, [False, True])
  cm = np.asarray(roll.completion_mask)
  assert cm[:, :6].sum() == 0
  np.testing.assert_array_equal(cm[0, 6:], np.arange(M) < L0)
  np.testing.assert_array_equal(cm[1, 6:], np.ones(M, bool))
  out = np.asarray(roll.tokens)
  np.testing.assert_array_equal(out[0, 6:6 + L0], comp[0, :L0])  # ends at the stop token
  assert out[0, 6 + L0 - 1] == stop
  assert np.all(out[0, 6 + L0:] == pad)
  np.testing.assert_array_equal(out[1], np.asarray(base.tokens)[1])
  np.testing.assert_array_equal(np.asarray(roll.mask)[:, 6:], cm[:, 6:])
  assert np.all(np.asarray(roll.model_logprobs)[0, 6 + L0:] == 0)
  # A stop as the very first token: length 1; all rows done ends the loop.
  first = sampling.SamplingConfig(max_new_tokens=M, temperature=0.0,
                                  stop_ids=tuple(int(t) for t in comp[:, 0]))
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(0), first)
  np.testing.assert_array_equal(roll.lengths, [1, 1])
  assert not np.any(np.asarray(roll.truncated))
  assert np.all(np.asarray(roll.tokens)[:, 7:] == 0)


def test_left_padding_gives_same_greedy_continuation(params):
  prompts = random_prompts(6, [4, 7, 2])
  scfg = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)
  toks, mask = left_pad(prompts, 7)
  batch = sampling.generate(params, CFG, toks, mask, jax.random.key(0), scfg)
  for i in (0, 2):  # the two padded rows, each alone and unpadded
    p = prompts[i]
    alone_t, alone_m = left_pad([p], len(p))
    alone = sampling.generate(params, CFG, alone_t, alone_m, jax.random.key(0), scfg)
    np.testing.assert_array_equal(np.asarray(batch.tokens)[i, 7:],
                                  np.asarray(alone.tokens)[0, len(p):])
    np.testing.assert_allclose(np.asarray(batch.model_logprobs)[i, 7:],
                               np.asarray(alone.model_logprobs)[0, len(p):], atol=LP_TOL)


def test_group_layout_is_a_repeat_of_the_prompts(params):
  B, G = 2, 3
  toks, mask = left_pad(random_prompts(7, [5, 3]), 5)
  scfg = sampling.SamplingConfig(max_new_tokens=6, temperature=1.0, num_samples=G)
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(3), scfg)
  assert roll.tokens.shape == (B * G, 5 + 6) and roll.lengths.shape == (B * G,)
  out = np.asarray(roll.tokens)
  for b in range(B):
    for g in range(G):
      np.testing.assert_array_equal(out[b * G + g, :5], np.asarray(toks)[b])
      np.testing.assert_array_equal(np.asarray(roll.mask)[b * G + g, :5], np.asarray(mask)[b])
    assert len({tuple(r) for r in out[b * G:(b + 1) * G, 5:]}) > 1  # independent samples
  # Temperature 1 (the no-sort path): both log-probs are the model's.
  cm = np.asarray(roll.completion_mask)
  model_lp = gather(log_softmax_np(teacher_forced(params, roll)), roll.tokens)
  np.testing.assert_allclose(np.asarray(roll.model_logprobs)[cm], model_lp[cm], atol=LP_TOL)
  np.testing.assert_array_equal(roll.logprobs, roll.model_logprobs)
  # Same as sampling the prompts repeated G times with G = 1 (row r draws u[r]).
  rep = sampling.generate(params, CFG, jnp.repeat(toks, G, 0), jnp.repeat(mask, G, 0),
                          jax.random.key(3),
                          sampling.SamplingConfig(max_new_tokens=6, temperature=1.0))
  np.testing.assert_array_equal(out, np.asarray(rep.tokens))
  np.testing.assert_allclose(np.asarray(roll.logprobs), np.asarray(rep.logprobs), atol=LP_TOL)


def test_fresh_randomness_every_step_and_row(params):
  """At a huge temperature q is nearly uniform, so reused uniforms would repeat tokens."""
  toks, mask = left_pad(random_prompts(12, [3, 3]), 3)
  scfg = sampling.SamplingConfig(max_new_tokens=12, temperature=1e4, num_samples=4)
  roll = sampling.generate(params, CFG, toks, mask, jax.random.key(4), scfg)
  out = np.asarray(roll.tokens)[:, 3:]
  assert min(len(set(row)) for row in out) >= 6  # 12 near-uniform draws from 61 tokens
  assert len({tuple(row) for row in out}) == out.shape[0]


def test_decode_layout_matches_stacked_cache(params):
  """model.apply with a layer-list cache (the sampler's layout) == stacked cache."""
  B, S = 2, 6
  toks = jnp.asarray(np.random.default_rng(8).integers(0, CFG.vocab_size, (B, S)), jnp.int32)
  kv = jnp.ones((B, S), bool)
  step = jax.jit(lambda p, t, c, i: model_lib.apply(
      p, CFG, t, positions_BT=i + jnp.arange(t.shape[1])[None], cache=c, cache_index=i,
      kv_mask_BS=kv))
  stacked = model_lib.init_cache(CFG, B, S)
  listed = model_lib.unstack_cache(model_lib.init_cache(CFG, B, S))
  unstacked = model_lib.unstack_layers(params)
  a, stacked = step(params, toks[:, :3], stacked, 0)
  b, listed = step(unstacked, toks[:, :3], listed, 0)
  np.testing.assert_allclose(a, b, atol=1e-4)
  for t in range(3, S):
    a, stacked = step(params, toks[:, t:t + 1], stacked, t)
    b, listed = step(unstacked, toks[:, t:t + 1], listed, t)
    np.testing.assert_allclose(a, b, atol=1e-4)
  assert isinstance(listed["k"], tuple) and len(listed["k"]) == CFG.num_layers
  np.testing.assert_allclose(model_lib.stack_cache(listed)["k"], stacked["k"], atol=1e-5)
  with pytest.raises(ValueError, match="layer-list cache"):
    model_lib.apply(unstacked, CFG, toks)


def test_decode_loop_updates_cache_in_place():
  """The compiled decode loops write each layer's cache buffers in place: inside
  each phase's while body the only ops producing cache-shaped arrays are the
  2 L dynamic-update-slices (no per-step copy or transpose of the cache)."""
  B, T, M = 3, 5, 7
  K, H = CFG.num_kv_heads, CFG.head_dim
  params = jax.eval_shape(lambda: model_lib.init_params(CFG, jax.random.key(0)))
  scfg = sampling.SamplingConfig(max_new_tokens=M, temperature=1.0, cache_phases=2)
  phases = sampling.decode_phases(T, M, 2)
  assert phases == [(4, 8), (7, 12)]  # steps 1-3 reach slot 7 (of 8), steps 4-6 slot 10 (of 12)
  hlo = sampling.generate.lower(params, CFG, jax.ShapeDtypeStruct((B, T), jnp.int32),
                                jax.ShapeDtypeStruct((B, T), bool), jax.random.key(0),
                                scfg).compile().as_text()
  bodies, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      name = head.group(1)
      bodies[name] = []
    elif name:
      bodies[name].append(line)
  S = "|".join(str(slots) for _, slots in phases)
  cache_shape = re.compile(rf"= f32\[{B},{K},({H},({S})|({S}),{H})\]\S* (\w+)\(")
  slots_seen, decode_loops = set(), 0
  for b in re.findall(r"while\(.*body=%([\w.\-]+)", hlo):  # also the RNG's loop, no cache
    writers = [(n, m.group(4), int(m.group(2) or m.group(3))) for line in bodies[b]
               for m in [cache_shape.search(line)] if m
               for n in [line.split("=")[0].strip()]]
    if not writers:
      continue
    decode_loops += 1
    assert len(writers) == 2 * CFG.num_layers, writers
    for n, op, _ in writers:
      assert op == "fusion" and "dynamic-update-slice" in n and "copy" not in n, n
    slots_seen |= {S for _, _, S in writers}
  assert decode_loops == len(phases) and slots_seen == {8, 12}


def test_decode_phases_split_steps_and_size_caches():
  # 127 decode steps in 4 runs of 32, 32, 32, 31; cache slots T + end - 1, rounded up to 8.
  assert sampling.decode_phases(64, 128, 4) == [(33, 96), (65, 128), (97, 160), (128, 192)]
  assert sampling.decode_phases(64, 128, 1) == [(128, 192)]
  assert sampling.decode_phases(5, 3, 4) == [(2, 8), (3, 8)]  # 2 steps: at most 2 runs, <= T + M
  assert sampling.decode_phases(5, 1, 4) == []  # M = 1: prefill only
  assert sampling.decode_phases(7, 10, 3, align=1) == [(4, 10), (7, 13), (10, 16)]
  with pytest.raises(ValueError, match="cache_phases"):
    sampling.SamplingConfig(max_new_tokens=4, cache_phases=0)


@pytest.mark.parametrize("temperature,stop", [(0.0, None), (1.0, None), (0.8, 7)])
def test_phased_decode_equals_one_cache(params, temperature, stop):
  """Shorter caches in early phases change no token and no log-prob: the slots
  they drop are ones no earlier step may attend to."""
  toks, mask = left_pad(random_prompts(9, [7, 2, 5]), 7)
  kw = dict(max_new_tokens=13, temperature=temperature, num_samples=2,
            stop_ids=() if stop is None else (stop,))
  one = sampling.generate(params, CFG, toks, mask, jax.random.key(4),
                          sampling.SamplingConfig(cache_phases=1, **kw))
  for phases in (2, 5, 12):
    assert len(sampling.decode_phases(7, 13, phases)) > 1
    many = sampling.generate(params, CFG, toks, mask, jax.random.key(4),
                             sampling.SamplingConfig(cache_phases=phases, **kw))
    np.testing.assert_array_equal(many.tokens, one.tokens)
    np.testing.assert_array_equal(many.completion_mask, one.completion_mask)
    np.testing.assert_allclose(many.logprobs, one.logprobs, atol=LP_TOL)
    np.testing.assert_allclose(many.model_logprobs, one.model_logprobs, atol=LP_TOL)


def test_compiled_once_per_shape(params, fresh_compiles):
  compiles = []

  def listener(event, duration, **kw):
    if (event == "/jax/core/compile/backend_compile_duration"
        and "generate" in kw.get("fun_name", "")):
      compiles.append(kw["fun_name"])

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # A config no other test uses, so nothing is cached yet.
    scfg = sampling.SamplingConfig(max_new_tokens=3, temperature=0.9, num_samples=2)
    fn = sampling.make_generate_fn(CFG, scfg)
    t1, m1 = left_pad(random_prompts(9, [3, 2]), 4)
    t2, m2 = left_pad(random_prompts(10, [4, 1]), 4)
    r1 = fn(params, t1, m1, jax.random.key(0))
    r2 = fn(params, t2, m2, jax.random.key(1))
    r3 = sampling.generate(params, CFG, t1, m1, jax.random.key(0), scfg)
    jax.block_until_ready((r1, r2, r3))
    assert len(compiles) == 1, compiles
    np.testing.assert_array_equal(r1.tokens, r3.tokens)
    fn(params, *left_pad(random_prompts(11, [5]), 5), jax.random.key(0))  # new shape
    assert len(compiles) == 2, compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_sharded_rollout_equals_single_device(params):
  """The mesh rollout (explicit in/out shardings) gives the single-device numbers."""
  from realm_jax.train import sharding as sh
  assert jax.device_count() >= 8, "the suite runs with 8 fake CPU devices (tests/conftest.py)"
  # vocab 61 is prime, so no tensor axis here; data x fsdp splits the 4 prompts.
  mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=1), jax.devices()[:4])
  scfg = sampling.SamplingConfig(max_new_tokens=5, temperature=0.0, num_samples=2)
  tokens, mask = left_pad(random_prompts(21, [3, 5, 2, 4]), 6)
  want = sampling.generate(params, CFG, tokens, mask, jax.random.key(3), scfg)
  with sh.use_mesh(mesh):
    p_sh = sh.param_shardings(CFG, mesh)
    batch = sh.leading_axis_sharding(mesh)
    fn = sampling.make_generate_fn(CFG, scfg, (p_sh, batch, sh.replicated(mesh)))
    placed = jax.tree.map(sh.put, params, p_sh)
    got = fn(placed, sh.put(np.asarray(tokens), batch), sh.put(np.asarray(mask), batch),
             jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_allclose(np.asarray(got.model_logprobs), np.asarray(want.model_logprobs),
                             atol=1e-5)
  assert got.tokens.sharding.spec[0] == ("data", "fsdp")
