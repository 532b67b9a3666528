"""`realm-jax gpu-check --quick` on CPU: every section runs and lands in the JSON, the HBM
roofline matches a hand count, and a failing section is recorded while the others run."""

import json

import jax
import numpy as np
import pytest

from realm_jax import model as model_lib
from realm_jax.cli import gpu_check, main as cli_main

SECTIONS = ["device", "sampler", "train_mfu", "grpo_step", "rl_run"]


def test_quick_check_writes_every_section(tmp_path):
  out = tmp_path / "check.json"
  cli_main.main(["gpu-check", "--quick", "--out", str(out)])
  r = json.loads(out.read_text())
  assert list(r["sections"]) == SECTIONS
  for name, sec in r["sections"].items():
    assert sec["status"] == "ok", (name, sec.get("traceback"))
  dev, smp = r["sections"]["device"], r["sections"]["sampler"]
  assert dev["bandwidth_source"] == "measured" and dev["hbm_bandwidth_Bps"] > 0  # a CPU: no row
  assert smp["bandwidth_Bps"] == dev["hbm_bandwidth_Bps"]
  assert (smp["prompt_len"], smp["new_tokens"]) == (4, 4)
  for name, m in smp["models"].items():
    c = m["config"]
    assert (c["d_model"], c["num_heads"], c["num_kv_heads"], c["head_dim"], c["mlp_dim"],
            c["vocab_size"], c["num_layers"]) == (32, 4, 2, 8, 64, 96, 2)
    # Matmul weights: per layer q 32x32 = 1024, k and v 32x16 = 512 each, o 1024,
    # MLP 3 x 32x64 = 6144 -> 9216; 2 layers 18432; head 32 x 96 = 3072 -> 21504.
    cfg = model_lib.ModelConfig(**{k: v for k, v in c.items()})
    shapes = jax.eval_shape(lambda: model_lib.init_params(cfg, jax.random.key(0)))
    kernels = sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(shapes)
                  if "kernel" in jax.tree_util.keystr(p))
    assert kernels + (32 * 96 if c["tie_embeddings"] else 0) == 21504
    w = 4 if c["param_dtype"] == "float32" else 2  # bytes of a param
    c_bytes = 4 if c["dtype"] == "float32" else 2  # of a cache entry (cache_dtype None: dtype)
    assert c["cache_dtype"] is None
    # Decode feeds M - 1 = 3 tokens at positions 4, 5, 6: they read 5 + 6 + 7 = 18 cache
    # positions, each 2 (k, v) x 2 layers x 2 kv heads x 8 dims of c_bytes.
    for B, row in m["batches"].items():
      want = 3 * 21504 * w + int(B) * 18 * (2 * 2 * 2 * 8 * c_bytes)
      assert row["decode_bytes"] == want, (name, B)
      assert row["roofline_frac"] == pytest.approx(
          want / smp["bandwidth_Bps"] / row["decode_s"], rel=1e-9)
      assert row["tokens_per_s"] == pytest.approx(int(B) * 4 / row["median_s"])
  mfu = r["sections"]["train_mfu"]
  for m in mfu["models"].values():
    assert m["mfu"] == pytest.approx(m["flops"] / m["median_s"] / mfu["bf16_peak_flops"])
  g = r["sections"]["grpo_step"]
  assert set(g["phase_median_s"]) == {"rollout", "reward", "reference", "update"}
  assert g["flop_limit_s"]["update"] == pytest.approx(g["flops"]["update"] / dev["bf16_peak_flops"])
  rl = r["sections"]["rl_run"]
  assert rl["rl_steps"] == 2 and rl["rl_metric_rows"] == 2 and rl["questions"] == 4
  assert len(rl["greedy_accuracy"]) == 2  # RL start and end
  for acc in rl["greedy_accuracy"].values():
    assert acc["n"] == 4 and 0 <= acc["accuracy"] <= 1


def test_failing_section_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
  def boom(s, ctx):
    raise RuntimeError("no accelerator here")

  ran = []
  fake = {"one": lambda s, ctx: ran.append("one") or {"x": 1}, "two": boom,
          "three": lambda s, ctx: ran.append("three") or {"y": 2}}
  monkeypatch.setattr(gpu_check, "sections", lambda: fake)
  out = tmp_path / "g.json"
  r = gpu_check.run_check(gpu_check.quick_spec(), str(out))
  assert ran == ["one", "three"]
  on_disk = json.loads(out.read_text())
  assert on_disk["sections"] == json.loads(json.dumps(r["sections"]))
  assert on_disk["sections"]["two"]["status"] == "error"
  assert on_disk["sections"]["two"]["error"] == "RuntimeError: no accelerator here"
  assert on_disk["sections"]["one"]["x"] == 1 and on_disk["sections"]["three"]["y"] == 2


def test_budget_skips_the_remaining_sections(tmp_path, monkeypatch):
  monkeypatch.setattr(gpu_check, "sections", lambda: {"a": lambda s, ctx: {}, "b": lambda s, ctx: {}})
  r = gpu_check.run_check(gpu_check.quick_spec(), str(tmp_path / "g.json"))
  assert [v["status"] for v in r["sections"].values()] == ["ok", "ok"]
  s = gpu_check.Spec(models={}, budget_s=-1.0)  # already past it: nothing starts
  r = gpu_check.run_check(s, str(tmp_path / "g.json"))
  assert [v["status"] for v in r["sections"].values()] == ["skipped", "skipped"]


def test_device_rows_and_default_out(monkeypatch):
  assert gpu_check.device_row("NVIDIA H100 80GB HBM3") == "H100 SXM"
  assert gpu_check.device_row("NVIDIA H100 PCIe") == "H100 PCIe"
  assert gpu_check.device_row("NVIDIA H200") == "H200"
  assert gpu_check.device_row("cpu") is None
  monkeypatch.setenv("OUT", "/some/out")
  assert gpu_check.default_out() == "/some/out/gpu_check.json"
  monkeypatch.delenv("OUT")
  assert gpu_check.default_out() == "gpu_check.json"
