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
  assert rl["experiment"] == "evidence" and rl["sft_steps"] == 3
  assert rl["rl_steps"] == 3 and rl["rl_metric_rows"] == 3 and rl["questions"] == 4
  assert list(rl["greedy_accuracy"]) == ["start (sft)", "final (rl)"]  # from scratch: no as-loaded
  assert rl["pace"]["rl"]["steps_timed"] == 2 and rl["pace"]["sft"]["steps_timed"] == 2
  assert rl["pace"]["rl"]["steps_per_s"] == pytest.approx(1 / rl["pace"]["rl"]["step_s"])
  assert rl["pace"]["rl"]["rollout_tokens_per_s"] > 0 and rl["pace"]["sft"]["tokens_per_s"] > 0
  assert 0 <= rl["last_rl_metrics"]["p_routes"] <= 1  # ReaLM-R1: routes scheduled by EAAI
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


def test_pace_takes_medians_without_the_compiling_step():
  rl = [{"time_rollout": 50.0, "time_reward": 1.0, "time_reference": 9.0, "time_update": 40.0,
         "rollout_tokens_per_s": 10.0},  # compiles: left out
        {"time_rollout": 2.0, "time_reward": 0.5, "time_reference": 1.0, "time_update": 1.5,
         "rollout_tokens_per_s": 300.0},
        {"time_rollout": 3.0, "time_reward": 0.5, "time_reference": 1.0, "time_update": 2.5,
         "rollout_tokens_per_s": 200.0},
        {"time_rollout": 4.0, "time_reward": 0.5, "time_reference": 2.0, "time_update": 3.5,
         "rollout_tokens_per_s": 100.0}]
  p = gpu_check.pace(rl, "rl")
  # step times 5, 7 and 10 s: median 7
  assert p["steps_timed"] == 3 and p["step_s"] == 7.0 and p["steps_per_s"] == pytest.approx(1 / 7)
  assert p["rollout_tokens_per_s"] == 200.0
  assert p["phase_median_s"] == {"rollout": 3.0, "reward": 0.5, "reference": 1.0, "update": 2.5}
  sft = gpu_check.pace([{"tokens_per_s": 1.0}, {"tokens_per_s": 4.0}, {"tokens_per_s": 6.0}], "sft")
  assert sft == {"steps_timed": 2, "tokens_per_s": 5.0}


def test_full_rl_run_is_the_real_slm_experiment_with_realm_r1():
  from realm_jax import configs
  s = gpu_check.full_spec()
  cfg = configs.load_experiment(s.experiment, list(s.rl_overrides))  # valid as written
  assert s.experiment == "evidence_smollm2" and cfg.model.pretrained == "smollm2"
  assert cfg.model.lora_rank > 0 and cfg.sft.steps == 100 and cfg.sft.route_share > 0
  assert (cfg.rl.steps, cfg.rl.routes, cfg.rl.mrpv.contrast_coef) == (20, "eaai", 0.1)
  assert cfg.rl.mrpv.w_ver > 0 and cfg.eval.num_questions == 128
