"""Benchmark harness: FLOP formulas against a hand count, and a tiny end-to-end run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.cli import bench
from realm_jax import model as model_lib

TINY = model_lib.ModelConfig(vocab_size=10, num_layers=2, d_model=4, num_heads=2, num_kv_heads=1,
                             head_dim=2, mlp_dim=6)


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
  # FLOP-limit times: each FLOP count over the peak read in the same run.
  peak = r["matmul"]["peak_gflops"] * 1e9
  assert s["flop_limit_s"] == pytest.approx({k: v / peak for k, v in s["flops"].items()})
  assert t["flop_limit_s"] == pytest.approx({"total": t["flops"] / peak})
  assert s["prefill_median_s"] + s["decode_median_s"] == pytest.approx(s["median_s"])
  import resource  # the host's peak RSS on CPU: read during the run, never above a later reading
  assert r["peak_memory"]["what"] == "host peak RSS"
  assert 0 < r["peak_memory"]["bytes"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  report = bench.format_report(r)
  assert "gen tok/s" in report and "dummy" in report and "peak memory" in report

  # The CLI entry point prints the same dict as JSON.
  monkeypatch.setattr(bench, "run_bench", lambda repeats, **kw: {**r, "repeats": repeats})
  capsys.readouterr()
  bench.main(["--json", "--repeats", "2"])
  assert json.loads(capsys.readouterr().out)["repeats"] == 2


def test_run_bench_without_training_and_with_given_params():
  shape = bench.BenchShape(sample_batch=2, prompt_len=4, new_tokens=3, matmul_sizes=(32,))
  params = model_lib.init_params(TINY, jax.random.key(5))
  r = bench.run_bench(1, model_cfg=TINY, shape=shape, params=params, train=False)
  assert "train" not in r and r["sampling"]["tokens_per_s"] > 0
  assert "train fwd+bwd" not in bench.format_report(r)


def test_mixed_matmul_bench_reads_the_bf16_matmul_peak(monkeypatch):
  """With bf16 matmul operands the yardstick is a bf16 x bf16 -> fp32 matmul's rate."""
  shape = bench.BenchShape(sample_batch=2, prompt_len=4, new_tokens=3, matmul_sizes=(32,))
  cfg = dataclasses.replace(TINY, matmul_dtype="bfloat16")
  read, seen = bench.bench_matmul, []
  monkeypatch.setattr(bench, "bench_matmul",
                      lambda sizes, repeats, dtype: seen.append(dtype) or read(sizes, repeats, dtype))
  r = bench.run_bench(1, model_cfg=cfg, shape=shape, train=False)
  assert seen == [jnp.dtype("bfloat16")] * 2  # before and after the workloads
  assert r["matmul"]["operand_dtype"] == "bfloat16" and r["model"]["matmul_dtype"] == "bfloat16"
  assert "(bfloat16 matmuls)" in bench.format_report(r)
  assert "bfloat16 operands" in bench.format_report(r)
  r32 = bench.run_bench(1, model_cfg=TINY, shape=shape, train=False)
  assert r32["matmul"]["operand_dtype"] == "float32" and "bfloat16" not in bench.format_report(r32)


def test_cli_smollm2_presets(monkeypatch, capsys):
  """`--model smollm2`: its shape, 3 sampler calls, 2 GRPO steps, no training/attention
  benches; `--repeats` / `--grpo-steps` override; the bench model keeps 5 and 5."""
  seen = []

  def fake_run_bench(repeats, *, model_cfg, params, train, extra_benchmarks):
    extra = {name: fn(repeats) for name, fn in extra_benchmarks.items() if name == "grpo_step"}
    seen.append((repeats, model_cfg, params, train, sorted(extra_benchmarks), extra))
    return {"repeats": repeats}

  monkeypatch.setattr(bench, "run_bench", fake_run_bench)
  monkeypatch.setattr(bench, "grpo_benchmark", lambda cfg, steps, params=None: {"steps": steps})
  bench.main(["--model", "smollm2", "--json"])
  bench.main(["--model", "smollm2", "--repeats", "4", "--grpo-steps", "1", "--json"])
  bench.main(["--json"])
  bench.main(["--model", "smollm2", "--matmul-dtype", "bfloat16", "--json"])
  smol = bench.bench_costs.MODELS["smollm2"]
  assert seen[3][1] == dataclasses.replace(smol, matmul_dtype="bfloat16")
  assert seen[0] == (3, smol, None, False, ["grpo_step"], {"grpo_step": {"steps": 2}})
  assert seen[1][0] == 4 and seen[1][5] == {"grpo_step": {"steps": 1}}
  assert seen[2] == (5, bench.BENCH_MODEL, None, True, ["attention_fwd_bwd", "grpo_step"],
                     {"grpo_step": {"steps": 5}})


@pytest.mark.parametrize("argv, flag", [
    (["--model", "gpt9"], "--model 'gpt9'"),
    (["--weights", "packaged"], "--weights 'packaged'"),  # only with --model smollm2
    (["--model", "smollm2", "--repeats", "0"], "--repeats 0"),
])
def test_cli_errors_name_the_flag(capsys, argv, flag):
  from realm_jax.cli import main as cli_main
  with pytest.raises(SystemExit) as e:
    cli_main.main(["bench", *argv])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"realm-jax: error: {flag}") and err.count("\n") == 1


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
  params = model_lib.init_params(cfg, jax.random.key(3))
  before = jax.tree.map(np.asarray, params)
  r = bench_grpo.run_grpo_bench(cfg, repeats=2, params=params, microbatches=2)
  # The caller's params survive the donating update, unchanged.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert len(r["step_times_s"]) == 2 and r["median_step_s"] > 0 and r["microbatches"] == 2
  assert set(r["phase_median_s"]) == {"rollout", "reward", "reference", "update"}
  assert sum(r["phase_median_s"].values()) == pytest.approx(r["median_step_s"], rel=0.05)
  n = bench_grpo.PROMPTS * bench_grpo.GROUP * bench_grpo.NEW_TOKENS
  assert r["completion_tokens_per_s"] == pytest.approx(n / r["median_step_s"])


def test_attention_bench_times_both_forms():
  r = bench.bench_attention(TINY, 1, batch=2, length=8)
  assert r["tiled_ms"] > 0 and r["softmax_autodiff_ms"] > 0
  assert (r["rows"], r["query_blocks"], r["row_chains"], r["save_probs"]) == tuple(
      model_lib.attention.attention_tiling(TINY, 2, 8))
