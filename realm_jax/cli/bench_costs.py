"""What a model shape costs, from its shapes alone: FLOPs per phase and the compiled
per-device memory of one RL update (`realm-jax bench --memory CONFIG --mesh D,F,T`).

Named shapes (`MODELS`, random weights; Qwen2.5 and SmolLM2 as in their HF config.json):

  name           V       L   D     N / K heads  H    F      head
  bench          8192    4   256   8 / 4        32   1024   untied   (the fixed bench model)
  smollm2        49152   30  576   9 / 3        64   1536   tied     (rope theta 1e5, eps 1e-5)
  qwen2.5-0.5b   151936  24  896   14 / 2       64   4864   tied     (qkv bias, theta 1e6, eps 1e-6)
  qwen2.5-1.5b   151936  28  1536  12 / 2       128  8960   tied
  qwen2.5-7b     152064  28  3584  28 / 4       128  18944  untied

FLOP counts (useful work, causal; the embedding lookup is a gather, not a matmul):

    P_mm          = L (D N H + 2 D K H + N H D + 3 D F) + D V     matmul weights incl. lm_head
    attn(pairs)   = 4 N H L * pairs     QK^T and PV, 2 FLOPs per multiply-add
    causal(a, b)  = sum_{t=a+1..b} t    (query, key) pairs of positions a..b-1 over keys 0..t

    sampling prefill = B [2 (P_mm - D V) T + 2 D V + attn(causal(0, T))]   (last slot's logits)
    sampling decode  = B [2 P_mm (M - 1) + attn(causal(T, T + M - 1))]     (M - 1 tokens fed back)
    training step    = B [6 P_mm T + 3 attn(causal(0, T))]                (backward = 2x forward)

    GRPO step, B prompts x G samples (N = B G rows), prompt T, M new, T' = T + M:
    rollout   = prefill of the B prompts + decode of the N rows   (prompts prefilled once)
    reference = N [2 (P_mm - D V) T' + 2 D V (M + 1) + attn(causal(0, T'))]   (head on M + 1 slots)
    update    = 3 reference       (one forward + backward; the old policy is this one, no pass)

A phase's FLOP-limit time is its FLOPs over a matmul peak: the time it would
take at that rate.

Memory (`update_memory`): `rl.step.make_rl_step` with the run's optimizer
(`train.step.make_optimizer`: clip 1.0, AdamW) and the loop's update batch
(`rl.batch.UpdateBatch`: no old log-probs, no routes), jitted with the
shardings the training loop uses (params by their logical axes, optimizer
state like its params, counters replicated, batch rows over data x fsdp),
lowered on ShapeDtypeStructs and compiled: no weight is materialised. bf16
params carry fp32 masters in the optimizer state (`train.precision`), so a
param costs 2 + 4 (master) + 8 (two moments) = 14 bytes of state, fp32 ones
12. The mesh's D*F*T devices are the default backend's when it has that many,
else XLA:CPU host devices, which `request_host_devices` must ask for before
JAX starts its backends (the CLI does that first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time

import jax

from realm_jax import errors, model as model_lib
from realm_jax.model import sampling
from realm_jax.rl import losses, step as rl_step
from realm_jax.rl import batch as rl_batch
from realm_jax.train import precision, sharding, step as train_step


def _qwen25(V: int, L: int, D: int, N: int, K: int, H: int, F: int, tied: bool):
  return model_lib.ModelConfig(
      vocab_size=V, num_layers=L, d_model=D, num_heads=N, num_kv_heads=K, head_dim=H, mlp_dim=F,
      family="qwen2", rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, tie_embeddings=tied,
      max_seq_len=32768, param_dtype="float32", dtype="float32")


MODELS = {
    "bench": model_lib.ModelConfig(
        vocab_size=8192, num_layers=4, d_model=256, num_heads=8, num_kv_heads=4, head_dim=32,
        mlp_dim=1024, family="llama", rope_theta=10000.0, rms_eps=1e-5, tie_embeddings=False,
        param_dtype="float32", dtype="float32", init_std=0.02,
        scan_layers=False),  # an implementation choice, not part of the fixed model: 4 layers unroll
    "smollm2": model_lib.ModelConfig(  # the peers' `--shape smollm2`
        vocab_size=49152, num_layers=30, d_model=576, num_heads=9, num_kv_heads=3, head_dim=64,
        mlp_dim=1536, family="llama", rope_theta=100000.0, rms_eps=1e-5, tie_embeddings=True,
        max_seq_len=8192, param_dtype="float32", dtype="float32", init_std=0.02),
    "qwen2.5-0.5b": _qwen25(151936, 24, 896, 14, 2, 64, 4864, tied=True),
    "qwen2.5-1.5b": _qwen25(151936, 28, 1536, 12, 2, 128, 8960, tied=True),
    "qwen2.5-7b": _qwen25(152064, 28, 3584, 28, 4, 128, 18944, tied=False),
}


# ----------------------------------------------------------------------------
# FLOP counts (see the module docstring).


def matmul_params(cfg: model_lib.ModelConfig) -> int:
  """P_mm: weights that multiply activations per token, lm_head included (biases not)."""
  D, N, K, H, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                      cfg.vocab_size)
  return cfg.num_layers * (D * N * H + 2 * D * K * H + N * H * D + 3 * D * F) + D * V


def causal_pairs(start: int, end: int) -> int:
  """(query, key) pairs when positions start..end-1 each attend keys 0..t."""
  return sum(t + 1 for t in range(start, end))


def attention_flops(cfg: model_lib.ModelConfig, pairs: int) -> int:
  return 4 * cfg.num_heads * cfg.head_dim * cfg.num_layers * pairs


def sampling_flops(cfg: model_lib.ModelConfig, B: int, T: int, M: int) -> dict[str, int]:
  DV = cfg.d_model * cfg.vocab_size
  P = matmul_params(cfg)
  prefill = B * (2 * (P - DV) * T + 2 * DV + attention_flops(cfg, causal_pairs(0, T)))
  decode = B * (2 * P * (M - 1) + attention_flops(cfg, causal_pairs(T, T + M - 1)))
  return {"prefill": prefill, "decode": decode, "total": prefill + decode}


def train_flops(cfg: model_lib.ModelConfig, B: int, T: int) -> int:
  return B * (6 * matmul_params(cfg) * T + 3 * attention_flops(cfg, causal_pairs(0, T)))


def grpo_flops(cfg: model_lib.ModelConfig, B: int, G: int, T: int, M: int) -> dict[str, int]:
  """Per phase of one GRPO step; the reward is host work (0)."""
  N, S, DV = B * G, T + M, cfg.d_model * cfg.vocab_size
  rollout = sampling_flops(cfg, B, T, M)["prefill"] + sampling_flops(cfg, N, T, M)["decode"]
  reference = N * (2 * (matmul_params(cfg) - DV) * S + 2 * DV * (M + 1)
                   + attention_flops(cfg, causal_pairs(0, S)))
  return {"rollout": rollout, "reference": reference, "update": 3 * reference,
          "total": rollout + 4 * reference}


def flop_limits(flops: dict[str, int], peak_gflops: float) -> dict[str, float]:
  """Seconds each FLOP count takes at the matmul peak (GFLOP/s)."""
  return {k: v / (peak_gflops * 1e9) for k, v in flops.items()}


# ----------------------------------------------------------------------------
# Compiled memory of one RL update.

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def request_host_devices(n: int) -> None:
  """Ask XLA:CPU for at least n host devices (XLA_FLAGS); read once, when JAX starts its
  backends, so later calls change nothing in this process."""
  flags = os.environ.get("XLA_FLAGS", "")
  have = re.search(_DEVICE_FLAG + r"=(\d+)", flags)
  if have and int(have.group(1)) >= n:
    return
  flags = re.sub(_DEVICE_FLAG + r"=\d+", "", flags)
  os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_FLAG}={n}".strip()


def mesh_devices(n: int) -> list:
  """n devices of the default backend, else n XLA:CPU host devices."""
  for devices in (jax.devices(), jax.devices("cpu")):
    if len(devices) >= n:
      return list(devices[:n])
  raise errors.ConfigError(
      f"--mesh needs {n} devices; this process has {jax.device_count()} "
      f"{jax.default_backend()} and {len(jax.devices('cpu'))} CPU devices (XLA_FLAGS is read "
      f"when JAX starts: set {_DEVICE_FLAG}={n} there)")


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'D,F,T' -> (data, fsdp, tensor), each a positive int."""
  parts = text.split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise errors.ConfigError(f"--mesh {text!r}: expected three positive integers D,F,T "
                             "(data, fsdp, tensor sizes), e.g. 1,8,1")
  return tuple(int(p) for p in parts)


def sized_config(name: str, dtype: str = "bfloat16", remat: bool = True) -> model_lib.ModelConfig:
  if name not in MODELS:
    raise errors.ConfigError(f"--memory {name!r}: unknown config; use one of {', '.join(MODELS)}")
  return dataclasses.replace(MODELS[name], param_dtype=dtype, dtype=dtype, remat=remat,
                             scan_layers=True)


def update_memory(cfg: model_lib.ModelConfig, mesh_sizes: tuple[int, int, int], *,
                  batch_prompts: int = 8, group_size: int = 4, prompt_len: int = 64,
                  new_tokens: int = 128, microbatches: int = 4) -> dict:
  """Per-device bytes of one compiled RL update (module docstring), with the state's bytes
  (whole and per device, from its shardings) and the compile time."""
  N, T = batch_prompts * group_size, prompt_len + new_tokens
  if N % microbatches:
    raise errors.ConfigError(f"--microbatches {microbatches} must divide the update's "
                             f"{N} rows (--batch-prompts x --group-size)")
  mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_sizes), mesh_devices(math.prod(mesh_sizes)))
  try:
    sharding.check_divisibility(cfg, mesh, N)
  except ValueError as e:
    raise errors.ConfigError(f"--mesh {','.join(map(str, mesh_sizes))}: {e}") from None
  optimizer = train_step.make_optimizer(1e-6, 0, 1000, 0.0, 1.0)
  scfg = sampling.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0,
                                 num_samples=group_size)
  loss_cfg = losses.LossConfig(kl_coef=0.04, kl_estimator="k3", aggregation="seq_mean_token_mean")
  t0 = time.perf_counter()
  with sharding.use_mesh(mesh):
    param_sh = sharding.param_shardings(cfg, mesh)
    params = sharding.abstract_params(cfg)
    state_sh = train_step.TrainState(
        step=sharding.replicated(mesh), params=param_sh,
        opt_state=precision.opt_state_shardings(optimizer, params, param_sh))
    shardings = train_step.StepShardings(state=state_sh, batch=sharding.leading_axis_sharding(mesh),
                                         replicated=sharding.replicated(mesh))
    state = train_step.abstract_state(
        jax.eval_shape(lambda p: train_step.init_state(p, optimizer), params), shardings)
    batch = rl_batch.abstract(rl_batch.UpdateBatch, {"N": N, "T": T, "L": T - 1}, shardings.batch,
                              absent=("old_logp", "route"))
    step = rl_step.make_rl_step(cfg, optimizer, loss_cfg, shardings=shardings,
                                completion_len=new_tokens, microbatches=microbatches, scfg=scfg)
    est = sharding.compiled_memory_estimate(step, state, batch)
  leaves = jax.tree.leaves(state)
  shard_bytes = lambda x: math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
  return {**est, "compile_s": time.perf_counter() - t0,
          "params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
          "state_bytes": sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves),
          "state_bytes_per_device": sum(shard_bytes(x) for x in leaves),
          "devices": f"{len(mesh.devices.flat)} x {mesh.devices.flat[0].platform}"}


def format_table(r: dict) -> str:
  mib = lambda k: f"{r[k] / 2**20:>12,.1f} MiB"
  rows = [("state (whole model)", "state_bytes"), ("state per device", "state_bytes_per_device"),
          ("arguments", "argument_bytes"), ("outputs", "output_bytes"), ("temporaries", "temp_bytes"),
          ("donated (aliased)", "alias_bytes"), ("generated code", "generated_code_bytes"),
          ("total per device", "total_bytes")]
  head = (f"{r['config']} ({r['params'] / 1e9:.3f}B params, {r['dtype']}, remat "
          f"{'on' if r['remat'] else 'off'}) on mesh {r['mesh']} ({r['devices']}); update "
          f"{r['batch_prompts']}x{r['group_size']} rows of {r['prompt_len']}+{r['new_tokens']} "
          f"tokens in {r['microbatches']} microbatches; compiled in {r['compile_s']:.1f} s")
  return "\n".join([head] + [f"  {label:<22}{mib(k)}" for label, k in rows])


def main(argv: list[str]) -> dict:
  ap = argparse.ArgumentParser(prog="realm-jax bench --memory",
                               description=__doc__.splitlines()[0])
  ap.add_argument("--memory", required=True, metavar="CONFIG", help=", ".join(MODELS))
  ap.add_argument("--mesh", default="1,1,1", help="D,F,T: data, fsdp, tensor (default 1,1,1)")
  for flag, default in (("--batch-prompts", 8), ("--group-size", 4), ("--prompt-len", 64),
                        ("--new-tokens", 128), ("--microbatches", 4)):
    ap.add_argument(flag, type=int, default=default, help=f"default {default}")
  ap.add_argument("--dtype", default="bfloat16", help="params and compute (default bfloat16)")
  ap.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument("--json", action="store_true", help="print the result as JSON")
  ap.add_argument("--out", default=None, help="also write the JSON result to this file")
  args = ap.parse_args(argv)
  mesh = parse_mesh(args.mesh)
  for flag in ("batch_prompts", "group_size", "prompt_len", "new_tokens", "microbatches"):
    if getattr(args, flag) < 1:
      raise errors.ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
  if args.dtype not in ("bfloat16", "float32", "float16"):
    raise errors.ConfigError(f"--dtype {args.dtype!r}: use bfloat16, float32 or float16")
  cfg = sized_config(args.memory, args.dtype, args.remat)
  request_host_devices(math.prod(mesh))  # before anything starts JAX's backends
  sizes = {k: getattr(args, k) for k in ("batch_prompts", "group_size", "prompt_len",
                                         "new_tokens", "microbatches")}
  result = {"config": args.memory, "mesh": args.mesh, "dtype": args.dtype, "remat": args.remat,
            **sizes, **update_memory(cfg, mesh, **sizes)}
  return emit(result, args, format_table)


def emit(result: dict, args, text_format) -> dict:
  """Prints `result` (JSON with --json, else `text_format(result)`) and writes its JSON to
  --out when given."""
  text = json.dumps(result, indent=2)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  print(text if args.json else text_format(result))
  return result
