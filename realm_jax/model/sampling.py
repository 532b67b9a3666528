"""Compiled autoregressive sampling with a KV cache: prefill, then a fixed-shape decode loop.

Conventions
- Prompts are left padded: `prompt_tokens_BT` int32, `prompt_mask_BT` (1 = real
  token); every row's last slot T-1 must be a real token.
- N = B * G rows, prompt-major: prompt b's G samples are rows b*G .. b*G+G-1.
  The B prompts are prefilled once and the cache is repeated G times.
- Output arrays are [N, T + M] (prompt slots then M = max_new_tokens completion
  slots). A completion runs up to and including its first stop token; slots
  after it hold `pad_id` and are masked out.
- Randomness: `u = uniform(rng, [M, N])` is drawn once; step j of row r
  samples with `u[j, r]` (inverse CDF), so the G-sample layout equals sampling the prompts
  repeated G times with G = 1.
- The distribution actually sampled from is

      q(v) ∝ exp(l_v / tau)   restricted to top-k, then to top-p (nucleus),

  with l the fp32 model logits. `logprobs` are log q of the sampled tokens,
  `model_logprobs` are log softmax(l) (untempered); both are 0 outside the
  completion. Greedy (tau = 0) samples argmax l (first index on ties) from a
  point mass, so its `logprobs` are 0.
- Top-k keeps logits >= the k-th largest; top-p keeps the smallest
  probability-sorted prefix whose mass reaches p (tokens tied at a boundary
  are kept).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from realm_jax import model as model_lib

# Block size of the two-level inverse-CDF sampler (see `categorical`).
_CDF_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample completions; hashable, so it is a static jit argument."""
  max_new_tokens: int
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1.0 = off
  stop_ids: tuple[int, ...] = ()
  num_samples: int = 1  # G, samples per prompt
  pad_id: int = 0
  # Decode runs in this many phases of about M / phases steps; phase p keeps
  # only the cache slots that its steps can reach (T + its last step), so early
  # steps attend over a shorter cache. 1 = one cache of T + M slots throughout.
  # Between phases the cache is copied into the next, larger buffer, so for a
  # moment both are live: use 1 where the KV cache nearly fills device memory.
  cache_phases: int = 4

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError(
          f"SamplingConfig.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
    if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0
            and math.isfinite(self.temperature)):
      raise ValueError(f"SamplingConfig.temperature must be a finite number >= 0 (0 = greedy), "
                       f"got {self.temperature!r}")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
    if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
    stop = tuple(self.stop_ids) if not isinstance(self.stop_ids, int) else (self.stop_ids,)
    if any(not isinstance(s, int) or s < 0 for s in stop):
      raise ValueError(f"SamplingConfig.stop_ids must be non-negative ints, got {self.stop_ids!r}")
    object.__setattr__(self, "stop_ids", stop)
    if not isinstance(self.num_samples, int) or self.num_samples < 1:
      raise ValueError(f"SamplingConfig.num_samples must be an int >= 1, got {self.num_samples!r}")
    if not isinstance(self.pad_id, int) or self.pad_id < 0:
      raise ValueError(f"SamplingConfig.pad_id must be an int >= 0, got {self.pad_id!r}")
    if not isinstance(self.cache_phases, int) or self.cache_phases < 1:
      raise ValueError(
          f"SamplingConfig.cache_phases must be an int >= 1, got {self.cache_phases!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  @property
  def plain(self) -> bool:
    """Sampling from the untempered, unfiltered model: q == softmax(l)."""
    return self.temperature == 1 and self.top_k == 0 and self.top_p == 1


@flax.struct.dataclass
class Rollout:
  """Prompt + completion for N = B * G rows (prompt-major); arrays are [N, T + M]."""
  tokens: jax.Array  # int32
  mask: jax.Array  # bool, real tokens (prompt and completion)
  completion_mask: jax.Array  # bool, generated tokens up to and including the stop
  lengths: jax.Array  # int32 [N], completion lengths
  logprobs: jax.Array  # float32, log q of the sampled tokens
  model_logprobs: jax.Array  # float32, log softmax(l) of the sampled tokens
  truncated: jax.Array  # bool [N], budget hit without a stop token


@flax.struct.dataclass
class DecodeState:
  """Carry of the decode loop; completion buffers are [N, M]."""
  step: jax.Array  # int32, tokens generated so far
  tokens_NM: jax.Array
  logprobs_NM: jax.Array
  model_logprobs_NM: jax.Array
  lengths_N: jax.Array
  done_N: jax.Array  # a stop token was emitted
  cache: model_lib.KVCache  # layer-list decode layout (model.unstack_cache)


# ----------------------------------------------------------------------------
# Pure per-step math.


def first_argmax(x_NV: jax.Array) -> jax.Array:
  """argmax over the last axis, lowest index on ties (as `jnp.argmax`).

  Written as max + masked min-index: two plain reductions, which XLA:CPU runs
  much faster than the variadic (value, index) reduce of `jnp.argmax`.
  """
  V = x_NV.shape[-1]
  m = jnp.max(x_NV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(x_NV == m, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def filter_logits(logits_NV: jax.Array, scfg: SamplingConfig) -> jax.Array:
  """Unnormalised log q: l / tau, -inf outside the top-k and top-p support."""
  x = logits_NV.astype(jnp.float32) / scfg.temperature
  V = x.shape[-1]
  sorted_desc = None
  if 0 < scfg.top_k < V:
    sorted_desc, _ = jax.lax.top_k(x, scfg.top_k)
    x = jnp.where(x >= sorted_desc[:, -1:], x, -jnp.inf)
  if scfg.top_p < 1:
    if sorted_desc is None:
      sorted_desc = -jnp.sort(-x, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    thresh = jnp.min(jnp.where(mass_before < scfg.top_p, sorted_desc, jnp.inf), axis=-1,
                     keepdims=True)
    x = jnp.where(x >= thresh, x, -jnp.inf)
  return x


def categorical(logw_NV: jax.Array, u_N: jax.Array, block: int = _CDF_BLOCK
                ) -> tuple[jax.Array, jax.Array]:
  """Inverse-CDF draw from q ∝ exp(logw) with one uniform u in [0, 1) per row.

  Returns (index, logsumexp(logw)): the index i with
  C(i-1) <= u * C(V-1) < C(i), C the running sum of w = exp(logw - max logw).
  Two levels (blocks of `block` tokens, then inside the chosen block) keep the
  scans short; the pick is clamped to the last index of positive weight, so a
  token of zero weight (-inf) is never drawn. One exp over V serves both the
  draw and the normaliser, far cheaper on CPU than Gumbel-max's V random numbers.
  """
  N, V = logw_NV.shape
  nb = -(-V // block)
  logw = logw_NV.astype(jnp.float32)
  if nb * block != V:
    logw = jnp.pad(logw, ((0, 0), (0, nb * block - V)), constant_values=-jnp.inf)
  m_N = jnp.max(logw, axis=-1)
  w_NbK = jnp.exp(logw - m_N[:, None]).reshape(N, nb, block)

  def pick(w_NX, r_N):
    """First index whose running sum exceeds r, clamped to the last positive weight."""
    cum_NX = jnp.cumsum(w_NX, axis=-1)
    idx = jnp.sum(cum_NX <= r_N[:, None], axis=-1, dtype=jnp.int32)
    iota = jnp.arange(w_NX.shape[-1], dtype=jnp.int32)
    last = jnp.max(jnp.where(w_NX > 0, iota, 0), axis=-1)
    idx = jnp.minimum(idx, last)
    before = jnp.take_along_axis(cum_NX - w_NX, idx[:, None], axis=-1)[:, 0]
    return idx, r_N - before

  w_Nb = jnp.sum(w_NbK, axis=-1)
  total_N = jnp.sum(w_Nb, axis=-1)
  b, r_N = pick(w_Nb, u_N.astype(jnp.float32) * total_N)
  w_NK = jnp.take_along_axis(w_NbK, b[:, None, None], axis=1)[:, 0]
  j, _ = pick(w_NK, r_N)
  return b * block + j, m_N + jnp.log(total_N)


def sample_step(logits_NV: jax.Array, u_N: jax.Array, scfg: SamplingConfig
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One token per row: (token [N] int32, log q(token), log softmax(l)(token)).

  u_N: one uniform in [0, 1) per row (the inverse-CDF draw; unused if greedy).
  """
  logits_NV = logits_NV.astype(jnp.float32)
  N = logits_NV.shape[0]
  pick = lambda x_NV, tok_N: jnp.take_along_axis(x_NV, tok_N[:, None], axis=-1)[:, 0]
  if scfg.greedy:
    tok = first_argmax(logits_NV)
    return tok, jnp.zeros((N,), jnp.float32), pick(logits_NV, tok) - jax.nn.logsumexp(logits_NV, -1)
  if scfg.plain:  # q == softmax(l): one pass gives the draw and both log-probs
    tok, lse_N = categorical(logits_NV, u_N)
    lp = pick(logits_NV, tok) - lse_N
    return tok, lp, lp
  logw_NV = filter_logits(logits_NV, scfg)
  tok, lse_q_N = categorical(logw_NV, u_N)
  return (tok, pick(logw_NV, tok) - lse_q_N,
          pick(logits_NV, tok) - jax.nn.logsumexp(logits_NV, axis=-1))


# ----------------------------------------------------------------------------
# Prefill + decode loop.


def decode_phases(T: int, M: int, phases: int, align: int = 8) -> list[tuple[int, int]]:
  """Split decode steps 1 .. M-1 into at most `phases` runs: [(end, slots)].

  A run covers the steps before `end` (the previous run's end, or 1, up to
  end - 1); its cache holds `slots` >= T + end - 1 slots, the ones those steps
  write and read, rounded up to a multiple of `align` (at most T + M).
  Empty for M = 1 (no decode step).
  """
  steps = M - 1
  out: list[tuple[int, int]] = []
  for p in range(1, min(phases, steps) + 1):
    end = 1 + -(-steps * p // min(phases, steps))
    slots = min(T + M, -(-(T + end - 1) // align) * align)
    if not out or end > out[-1][0]:
      out.append((end, slots))
  return out


def _record(state: DecodeState, logits_NV, u_MN, scfg: SamplingConfig) -> DecodeState:
  """Sample completion token `state.step` (with uniforms `u_MN[step]`) and write it."""
  u_N = jax.lax.dynamic_index_in_dim(u_MN, state.step, axis=0, keepdims=False)
  tok, lp, mlp = sample_step(logits_NV, u_N, scfg)
  live = ~state.done_N
  tok = jnp.where(live, tok, scfg.pad_id)
  zero = jnp.zeros_like(lp)
  j = state.step
  upd = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, j))
  is_stop = jnp.zeros_like(live)
  for s in scfg.stop_ids:
    is_stop = is_stop | (tok == s)
  return state.replace(
      step=j + 1,
      tokens_NM=upd(state.tokens_NM, tok),
      logprobs_NM=upd(state.logprobs_NM, jnp.where(live, lp, zero)),
      model_logprobs_NM=upd(state.model_logprobs_NM, jnp.where(live, mlp, zero)),
      lengths_N=state.lengths_N + live.astype(jnp.int32),
      done_N=state.done_N | (live & is_stop),
  )


@functools.partial(jax.jit, static_argnames=("cfg", "scfg"))
def generate(params: model_lib.Params, cfg: model_lib.ModelConfig, prompt_tokens_BT: jax.Array,
             prompt_mask_BT: jax.Array, rng: jax.Array, scfg: SamplingConfig) -> Rollout:
  """Sample `scfg.num_samples` completions of each left-padded prompt.

  Jitted with `cfg` and `scfg` static: one compilation per (shapes, cfg,
  scfg), reused by every later call (`make_generate_fn` shares it).
  """
  if prompt_tokens_BT.ndim != 2:
    raise ValueError(f"prompt_tokens_BT must be [B, T], got shape {prompt_tokens_BT.shape}")
  B, T = prompt_tokens_BT.shape
  if prompt_mask_BT.shape != (B, T):
    raise ValueError(
        f"prompt_mask_BT shape {prompt_mask_BT.shape} != prompt_tokens_BT shape {(B, T)}")
  G, M = scfg.num_samples, scfg.max_new_tokens
  N, S = B * G, T + M
  if S > cfg.max_seq_len:
    raise ValueError(f"prompt length {T} + max_new_tokens {M} = {S} exceeds "
                     f"ModelConfig.max_seq_len={cfg.max_seq_len}")
  tokens_BT = prompt_tokens_BT.astype(jnp.int32)
  mask_BT = prompt_mask_BT.astype(bool)

  # Decode layout: one weight and cache buffer per layer, sliced once here so
  # the loop body reads and updates them in place (see model.py).
  params = model_lib.unstack_layers(params)
  # Decode phases: (last step + 1, cache slots). Step j feeds token j-1 at slot
  # T + j - 1, so a phase ending before step e needs slots [0, T + e - 1).
  phases = decode_phases(T, M, scfg.cache_phases)
  S0 = phases[0][1] if phases else S
  # Prefill the B prompts into slots [0, T); generated slots are valid keys
  # from the start (causality hides the ones not yet written).
  kv_mask_BS = jnp.concatenate([mask_BT, jnp.ones((B, M), bool)], axis=1)
  cache = model_lib.unstack_cache(model_lib.init_cache(cfg, B, S0))
  logits_B1V, cache = model_lib.apply(params, cfg, tokens_BT, mask_BT, cache=cache, cache_index=0,
                                      kv_mask_BS=kv_mask_BS[:, :S0], last_only=True)
  rep = lambda x: jnp.repeat(x, G, axis=0) if G > 1 else x
  cache = jax.tree.map(rep, cache)
  kv_mask_NS = rep(kv_mask_BS)
  prompt_len_N = rep(jnp.sum(mask_BT, axis=1, dtype=jnp.int32))

  state = DecodeState(
      step=jnp.zeros((), jnp.int32),
      tokens_NM=jnp.full((N, M), scfg.pad_id, jnp.int32),
      logprobs_NM=jnp.zeros((N, M), jnp.float32),
      model_logprobs_NM=jnp.zeros((N, M), jnp.float32),
      lengths_N=jnp.zeros((N,), jnp.int32),
      done_N=jnp.zeros((N,), bool),
      cache=cache,
  )
  # Every draw of the rollout at once: the decode loop then runs no RNG (on
  # CPU the per-step threefry rounds cost about as much as the model's ops).
  u_MN = (jnp.zeros((M, N), jnp.float32) if scfg.greedy
          else jax.random.uniform(rng, (M, N), jnp.float32))
  state = _record(state, rep(logits_B1V[:, 0]), u_MN, scfg)

  for end, slots in phases:
    state = state.replace(cache=model_lib.grow_cache(state.cache, slots))
    kv_mask = kv_mask_NS[:, :slots]

    def cond(s: DecodeState, end=end):
      return (s.step < end) & ~jnp.all(s.done_N)

    def body(s: DecodeState, kv_mask=kv_mask):
      # Feed completion token step-1 (slot T+step-1), then sample token `step`.
      j = s.step - 1
      last_N1 = jax.lax.dynamic_slice_in_dim(s.tokens_NM, j, 1, axis=1)
      logits_N1V, cache = model_lib.apply(
          params, cfg, last_N1, positions_BT=(prompt_len_N + j)[:, None], cache=s.cache,
          cache_index=T + j, kv_mask_BS=kv_mask)
      s = s.replace(cache=cache)
      return _record(s, logits_N1V[:, 0], u_MN, scfg)

    state = jax.lax.while_loop(cond, body, state)

  comp_mask_NM = jnp.arange(M)[None, :] < state.lengths_N[:, None]
  zeros_NT = jnp.zeros((N, T), jnp.float32)
  return Rollout(
      tokens=jnp.concatenate([rep(tokens_BT), state.tokens_NM], axis=1),
      mask=jnp.concatenate([rep(mask_BT), comp_mask_NM], axis=1),
      completion_mask=jnp.concatenate([jnp.zeros((N, T), bool), comp_mask_NM], axis=1),
      lengths=state.lengths_N,
      logprobs=jnp.concatenate([zeros_NT, state.logprobs_NM], axis=1),
      model_logprobs=jnp.concatenate([zeros_NT, state.model_logprobs_NM], axis=1),
      truncated=~state.done_N,
  )


def make_generate_fn(cfg: model_lib.ModelConfig, scfg: SamplingConfig, shardings=None
                     ) -> Callable[[model_lib.Params, jax.Array, jax.Array, jax.Array], Rollout]:
  """`fn(params, prompt_tokens_BT, prompt_mask_BT, rng) -> Rollout`.

  Without `shardings` it shares `generate`'s cache. With `shardings =
  (params_shardings, batch_sharding, replicated)` (a mesh run) the rollout is
  its own jit with explicit in/out shardings: params as placed, prompts and
  every Rollout field split on their leading (batch) axis.
  """
  if shardings is None:
    def fn(params, prompt_tokens_BT, prompt_mask_BT, rng):
      return generate(params, cfg, prompt_tokens_BT, prompt_mask_BT, rng, scfg)
    return fn
  params_sh, batch_sh, replicated = shardings

  def generate_sharded(params, prompt_tokens_BT, prompt_mask_BT, rng):
    return generate.__wrapped__(params, cfg, prompt_tokens_BT, prompt_mask_BT, rng, scfg)

  return jax.jit(generate_sharded, in_shardings=(params_sh, batch_sh, batch_sh, replicated),
                 out_shardings=batch_sh)
