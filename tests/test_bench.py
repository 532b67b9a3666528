"""Benchmark harness: FLOP formulas against a hand count, and a tiny end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.cli import bench
from realm_jax import model as model_lib

TINY = model_lib.ModelConfig(vocab_size=10, num_layers=2, d_model=4, num_heads=2, num_kv_heads=1,
                             head_dim=2, mlp_dim=6)


def test_matmul_params_hand_count():
  # per layer: q 4*2*2=16, k 4*1*2=8, v 8, o 2*2*4=16, gate/up/down 3*4*6=72 -> 120
  # 2 layers -> 240, lm_head 4*10=40 -> 280
  assert bench.matmul_params(TINY) == 280
  # Independently: every kernel in the params tree (the embedding is a lookup, not a matmul).
  params = jax.jit(model_lib.init_params, static_argnums=0)(TINY, jax.random.key(0))
  kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
             if "kernel" in jax.tree_util.keystr(path)]
  assert sum(int(np.prod(k.shape)) for k in kernels) == 280


def test_flop_formulas_hand_count():
  # attention: 4 * N * H * L = 4 * 2 * 2 * 2 = 32 FLOPs per (query, key) pair
  assert bench.attention_flops(TINY, 1) == 32
  assert bench.causal_pairs(0, 3) == 1 + 2 + 3
  assert bench.causal_pairs(3, 5) == 4 + 5
  f = bench.sampling_flops(TINY, B=2, T=3, M=3)
  # prefill per row: 2*(280-40)*3 + 2*40 (last slot's logits) + 32*6 = 1440 + 80 + 192
  assert f["prefill"] == 2 * 1712
  # decode per row: M-1 = 2 tokens fed: 2*280*2 + 32*(4+5) = 1120 + 288
  assert f["decode"] == 2 * 1408
  assert f["total"] == f["prefill"] + f["decode"]
  # training per row: 6*280*3 + 3*32*6 = 5040 + 576
  assert bench.train_flops(TINY, B=2, T=3) == 2 * 5616


def test_run_bench_tiny(capsys, monkeypatch):
  shape = bench.BenchShape(sample_batch=2, prompt_len=4, new_tokens=3, train_batch=2,
                           train_len=8, train_microbatches=2, matmul_sizes=(32, 64))
  r = bench.run_bench(1, model_cfg=TINY, shape=shape,
                      extra_benchmarks={"dummy": lambda repeats: {"repeats": repeats, "s": 0.5}})
  json.loads(json.dumps(r))  # JSON-able
  assert set(r) >= {"machine", "model", "matmul", "sampling", "train", "extra", "repeats"}
  assert r["matmul"]["peak_gflops"] == max(r["matmul"][n]["gflops"] for n in ("32", "64")) > 0
  # The peak is the best of the readings before and after the workloads.
  assert r["matmul"]["peak_gflops"] == max(r["matmul"]["before_after_gflops"])
  assert r["train"]["frac_of_peak"] == pytest.approx(
      bench.train_flops(TINY, 2, 8) / r["train"]["median_s"] / 1e9 / r["matmul"]["peak_gflops"])
  s, t = r["sampling"], r["train"]
  for k in ("median_s", "tokens_per_s", "gflops", "frac_of_peak", "prefill_median_s",
            "first_call_s"):
    assert s[k] > 0, k
  for k in ("median_s", "tokens_per_s", "gflops", "frac_of_peak", "first_call_s"):
    assert t[k] > 0, k
  assert s["generated_tokens"] == 2 * 3 and t["tokens"] == 2 * 8
  assert s["tokens_per_s"] == pytest.approx(6 / s["median_s"])
  assert s["flops"] == bench.sampling_flops(TINY, 2, 4, 3)
  assert s["frac_of_peak"] == pytest.approx(s["flops"]["total"] / s["median_s"] / 1e9
                                            / r["matmul"]["peak_gflops"])
  assert t["flops"] == bench.train_flops(TINY, 2, 8)
  assert r["extra"] == {"dummy": {"repeats": 1, "s": 0.5}}
  report = bench.format_report(r)
  assert "gen tok/s" in report and "dummy" in report

  # The CLI entry point prints the same dict as JSON.
  monkeypatch.setattr(bench, "run_bench", lambda repeats, **kw: {**r, "repeats": repeats})
  capsys.readouterr()
  bench.main(["--json", "--repeats", "2"])
  assert json.loads(capsys.readouterr().out)["repeats"] == 2


def test_bench_shape_validation():
  with pytest.raises(ValueError, match="new_tokens"):
    bench.BenchShape(new_tokens=1)
  with pytest.raises(ValueError, match="train_len"):
    bench.BenchShape(train_len=0)
  with pytest.raises(ValueError, match="train_microbatches=3 must divide train_batch=32"):
    bench.BenchShape(train_microbatches=3)


def test_train_grad_fn_microbatches_equal_the_plain_cross_entropy():
  params = model_lib.init_params(TINY, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, TINY.vocab_size, (4, 7)), jnp.int32)

  def ce(p):  # mean -log softmax(logits)[next token], written independently
    logp = jax.nn.log_softmax(model_lib.forward(p, tokens[:, :-1], TINY), -1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

  want_loss, want_grads = jax.value_and_grad(ce)(params)
  for n in (1, 2, 4):
    loss, grads = bench.make_train_grad_fn(TINY, n)(params, tokens)
    assert float(loss) == pytest.approx(float(want_loss), abs=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(a, b, atol=1e-6)


def test_even_token_reward_hand_count():
  from realm_jax.cli import bench_grpo
  toks = np.array([[1, 2, 4, 5], [3, 3, 8, 0]])
  mask = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], bool)
  # row 0: completion 2,4,5 -> 2/3 even; row 1: completion 8,0 -> 2/2
  np.testing.assert_allclose(bench_grpo.even_token_reward(toks, mask), [2 / 3, 1.0], rtol=1e-6)


def test_grpo_step_bench_tiny():
  from realm_jax.cli import bench_grpo
  cfg = model_lib.ModelConfig(vocab_size=64, num_layers=1, d_model=16, num_heads=2, num_kv_heads=1,
                              head_dim=8, mlp_dim=32)
  r = bench_grpo.run_grpo_bench(cfg, repeats=2)
  assert len(r["step_times_s"]) == 2 and r["median_step_s"] > 0
  assert set(r["phase_median_s"]) == {"rollout", "reward", "reference", "update"}
  assert sum(r["phase_median_s"].values()) == pytest.approx(r["median_step_s"], rel=0.05)
  n = bench_grpo.PROMPTS * bench_grpo.GROUP * bench_grpo.NEW_TOKENS
  assert r["completion_tokens_per_s"] == pytest.approx(n / r["median_step_s"])


def test_attention_bench_times_both_forms():
  r = bench.bench_attention(TINY, 1, batch=2, length=8)
  assert r["tiled_ms"] > 0 and r["softmax_autodiff_ms"] > 0
  assert (r["rows"], r["query_blocks"], r["row_chains"], r["save_probs"]) == tuple(
      model_lib.attention.attention_tiling(TINY, 2, 8))
