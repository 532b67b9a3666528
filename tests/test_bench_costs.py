"""Cost model of the benchmarks: FLOP formulas and named shapes against hand counts, and the
compiled memory of an RL update against hand-counted state bytes and its fsdp invariance."""

import ast
import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from realm_jax import model as model_lib
from realm_jax.cli import bench_costs, main as cli_main

TINY = model_lib.ModelConfig(vocab_size=10, num_layers=2, d_model=4, num_heads=2, num_kv_heads=1,
                             head_dim=2, mlp_dim=6)


def test_matmul_params_hand_count():
  # per layer: q 4*2*2=16, k 4*1*2=8, v 8, o 2*2*4=16, gate/up/down 3*4*6=72 -> 120
  # 2 layers -> 240, lm_head 4*10=40 -> 280
  assert bench_costs.matmul_params(TINY) == 280
  # Independently: every kernel in the params tree (the embedding is a lookup, not a matmul).
  params = jax.jit(model_lib.init_params, static_argnums=0)(TINY, jax.random.key(0))
  kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
             if "kernel" in jax.tree_util.keystr(path)]
  assert sum(int(np.prod(k.shape)) for k in kernels) == 280


def test_flop_formulas_hand_count():
  # attention: 4 * N * H * L = 4 * 2 * 2 * 2 = 32 FLOPs per (query, key) pair
  assert bench_costs.attention_flops(TINY, 1) == 32
  assert bench_costs.causal_pairs(0, 3) == 1 + 2 + 3
  assert bench_costs.causal_pairs(3, 5) == 4 + 5
  f = bench_costs.sampling_flops(TINY, B=2, T=3, M=3)
  # prefill per row: 2*(280-40)*3 + 2*40 (last slot's logits) + 32*6 = 1440 + 80 + 192
  assert f["prefill"] == 2 * 1712
  # decode per row: M-1 = 2 tokens fed: 2*280*2 + 32*(4+5) = 1120 + 288
  assert f["decode"] == 2 * 1408
  assert f["total"] == f["prefill"] + f["decode"]
  # training per row: 6*280*3 + 3*32*6 = 5040 + 576
  assert bench_costs.train_flops(TINY, B=2, T=3) == 2 * 5616


def test_grpo_flops_hand_count():
  # B=1 prompt x G=2, T=3 prompt tokens, M=2 new: T' = 5, N = 2 rows.
  f = bench_costs.grpo_flops(TINY, B=1, G=2, T=3, M=2)
  # rollout: prefill of 1 prompt (2*240*3 + 2*40 + 32*(1+2+3) = 1440+80+192 = 1712)
  #   + decode of 2 rows, 1 token each at position 3 (2*280 + 32*4 = 688)
  assert f["rollout"] == 1712 + 2 * 688
  # reference per row: body 2*240*5 = 2400, head on M+1 = 3 slots 2*40*3 = 240,
  #   attention 32 * (1+2+3+4+5) = 480 -> 3120
  assert f["reference"] == 2 * 3120
  assert f["update"] == 3 * 2 * 3120
  assert f["total"] == 1712 + 2 * 688 + 4 * 2 * 3120
  assert bench_costs.flop_limits({"a": 3e9}, peak_gflops=2.0) == {"a": 1.5}


def test_smollm2_matmul_params_hand_count():
  cfg = bench_costs.MODELS["smollm2"]
  # per layer: q 576x576 = 331,776; k and v 576x192 = 110,592 each; o 576x576 = 331,776;
  # gate/up/down 576x1536 = 884,736 each -> 331,776*2 + 110,592*2 + 884,736*3 = 3,538,944
  # 30 layers = 106,168,320; tied head 576 x 49,152 = 28,311,552
  assert bench_costs.matmul_params(cfg) == 106_168_320 + 28_311_552
  # all params: + embedding (tied: once, counted in the head) ... as P_mm + norms 576*(2*30+1)
  assert cfg.num_params == 134_479_872 + 576 * 61
  shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.key(0)))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 134_479_872 + 576 * 61
  # One sampler call of the bench (32 x 64 + 128): decode feeds 127 tokens per row.
  f = bench_costs.sampling_flops(cfg, 32, 64, 128)
  attn = 4 * 9 * 64 * 30  # 69,120 per (query, key) pair
  assert f["decode"] == 32 * (2 * 134_479_872 * 127 + attn * sum(range(65, 192)))


SHAPE_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "head_dim",
                "mlp_dim", "family", "tie_embeddings", "qkv_bias", "qk_norm")


def test_smollm2_shape_is_the_packaged_model():
  from realm_jax.model import gguf
  want = bench_costs.MODELS["smollm2"]
  got = gguf.config_from_gguf(gguf.open_gguf(gguf.smollm2_gguf_path()))
  for f in SHAPE_FIELDS:
    assert getattr(got, f) == getattr(want, f), f
  assert got.rope_theta == want.rope_theta and got.rms_eps == pytest.approx(want.rms_eps)


def test_bench_shapes_are_the_peers_shapes():
  peers = pathlib.Path(__file__).resolve().parents[2] / "shared/peers/tunix_bench.py"
  if not peers.exists():  # the peers' harnesses live beside the repository, not in it
    pytest.skip("no ../shared/peers beside this checkout")
  # The peers' module-level constants, read without importing it (it needs Tunix).
  consts = {n.targets[0].id: n.value for n in ast.parse(peers.read_text()).body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
  shapes = {ast.literal_eval(k): {kw.arg: ast.literal_eval(kw.value) for kw in v.keywords}
            for k, v in zip(consts["SHAPES"].keys, consts["SHAPES"].values)}  # {name: dict(...)}
  norm_eps = ast.literal_eval(consts["NORM_EPS"])
  for name in ("bench", "smollm2"):
    p, c = shapes[name], bench_costs.MODELS[name]
    assert (p["VOCAB"], p["N_LAYERS"], p["D_MODEL"], p["N_HEADS"], p["N_KV_HEADS"], p["HEAD_DIM"],
            p["MLP_DIM"], p["ROPE_THETA"], p["TIED"], norm_eps) == (
        c.vocab_size, c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim,
        c.mlp_dim, c.rope_theta, c.tie_embeddings, c.rms_eps), name


def _qwen05_hand_params(layers: int) -> tuple[int, int]:
  """(params with a d_model axis, which fsdp splits; the others: biases and norms)."""
  D, V, F = 896, 151936, 4864
  per_layer = D * 896 + 2 * D * 128 + 896 * D + 3 * D * F  # q, k, v, o kernels; MLP
  return V * D + layers * per_layer, layers * (896 + 2 * 128 + 2 * D) + D


def test_update_memory_shards_state_over_fsdp():
  cfg = dataclasses.replace(bench_costs.sized_config("qwen2.5-0.5b"), num_layers=2)
  sizes = dict(batch_prompts=2, group_size=4, prompt_len=8, new_tokens=8, microbatches=1)
  one = bench_costs.update_memory(cfg, (1, 1, 1), **sizes)
  eight = bench_costs.update_memory(cfg, (1, 8, 1), **sizes)
  split, whole = _qwen05_hand_params(2)
  assert one["params"] == eight["params"] == split + whole
  # bf16 params + fp32 masters + two fp32 Adam moments: 2 + 4 + 4 + 4 bytes a param.
  N, T = 8, 16
  batch = N * T * (4 + 1 + 4) + N * 4 + 2 * N * (T - 1) * 4  # tokens, mask, cmask; adv; 2 logps
  assert one["argument_bytes"] == pytest.approx(14 * (split + whole) + batch, rel=1e-4)
  assert eight["argument_bytes"] == pytest.approx(14 * (split / 8 + whole) + batch / 8, rel=1e-4)
  assert one["argument_bytes"] / eight["argument_bytes"] == pytest.approx(8, rel=2e-3)
  assert eight["state_bytes"] == one["state_bytes"] == one["state_bytes_per_device"]
  assert eight["state_bytes_per_device"] == pytest.approx(one["state_bytes"] / 8, rel=2e-3)
  for r in (one, eight):  # the donated state comes back as the outputs
    assert r["alias_bytes"] == pytest.approx(r["state_bytes_per_device"], rel=1e-4)
    assert r["total_bytes"] == (r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
                                - r["alias_bytes"])


def test_memory_command_json(capsys):
  cli_main.main(["bench", "--memory", "smollm2", "--mesh", "1,2,1", "--batch-prompts", "1",
                 "--group-size", "2", "--prompt-len", "4", "--new-tokens", "4",
                 "--microbatches", "1", "--dtype", "float32", "--no-remat", "--json"])
  r = json.loads(capsys.readouterr().out)
  assert (r["config"], r["mesh"], r["dtype"], r["remat"]) == ("smollm2", "1,2,1", "float32", False)
  # fp32 params: param + two moments, 12 bytes each; no masters.
  assert r["state_bytes"] == pytest.approx(12 * (134_479_872 + 576 * 61), rel=1e-6)
  assert r["devices"].startswith("2 x ")
  for k in ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes",
            "total_bytes"):
    assert r[k] >= 0, k


@pytest.mark.parametrize("argv, flag", [
    (["--memory", "qwen9", "--mesh", "1,8,1"], "--memory 'qwen9'"),
    (["--memory", "smollm2", "--mesh", "1,8"], "--mesh '1,8'"),
    (["--memory", "smollm2", "--mesh", "1,0,1"], "--mesh '1,0,1'"),
    (["--memory", "smollm2", "--mesh", "1,1,2"], "--mesh 1,1,2: "),  # 9 heads over 2
    (["--memory", "smollm2", "--microbatches", "3"], "--microbatches 3"),
])
def test_memory_command_errors_name_the_flag(capsys, argv, flag):
  with pytest.raises(SystemExit) as e:
    cli_main.main(["bench", *argv])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"realm-jax: error: {flag}") and err.count("\n") == 1
