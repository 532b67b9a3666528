"""Experiment configs, overrides, and smoke runs of every experiment on a micro model."""

import json
import math
import os

import numpy as np
import pytest

from realm_jax import configs
from realm_jax.cli import evaluate, train
from realm_jax.train import metrics
from realm_jax.evaluation import accuracy

# A micro model and micro stages: each experiment runs its real code path in seconds.
MICRO = [
    "model.tiny.num_layers=1", "model.tiny.d_model=32", "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1", "model.tiny.head_dim=16", "model.tiny.mlp_dim=64",
    "data.num_train=48", "data.num_eval=8", "base.steps=2", "base.batch_size=4",
    "rl.batch_prompts=2", "rl.group_size=2", "rl.max_new_tokens=12", "eval.num_questions=4",
    "eval.k=2", "eval.max_new_tokens=12", "eval.batch_size=4", "rft.questions=4",
    "rft.steps_per_round=2", "rft.batch_size=2", "checkpoint_every=1", "mesh=1,1,1",
]


def small_stages(experiment):
  """Shrinks the stages an experiment has, adds none it lacks."""
  cfg = configs.load_experiment(experiment)
  out = ["sft.steps=2", "sft.batch_size=4"] if cfg.sft.steps else []
  return out + (["rl.steps=2"] if cfg.rl.steps else [])


def test_every_experiment_loads_and_documents_its_command():
  names = configs.experiment_names()
  assert {"demo", "sft", "rft", "grpo", "cot_synth", "realm_zero", "realm_r1", "base_model",
          "ablation_no_negatives", "ablation_no_fading", "ablation_no_verification",
          "ablation_no_contrast"} <= set(names)
  import importlib
  for name in names:
    cfg = configs.load_experiment(name)
    assert isinstance(cfg, configs.ExperimentConfig)
    doc = importlib.import_module(f"experiments.{name}").__doc__
    assert "realm-jax train" in doc or "make " in doc, name


def test_methods_differ_as_documented():
  get = configs.load_experiment
  assert get("grpo").rl.routes == "never"
  assert get("cot_synth").rl.routes == "always" and get("cot_synth").rl.mrpv.w_ver == 0
  assert get("realm_zero").rl.routes == "eaai" and get("realm_zero").sft.steps == 0
  assert get("realm_r1").sft.steps > 0 and get("realm_r1").rl.mrpv.contrast_coef > 0
  assert get("ablation_no_negatives").rl.negatives is False
  assert get("ablation_no_fading").rl.routes == "always"
  assert get("ablation_no_verification").rl.mrpv.w_ver == 0
  assert get("ablation_no_contrast").rl.mrpv.contrast_coef == 0


def test_overrides_are_typed_and_checked():
  cfg = configs.load_experiment("demo", ["rl.steps=7", "rl.eaai.shape=cosine", "rl.negatives=false",
                                         "data.prompt_buckets=64,128", "init_from=none"])
  assert cfg.rl.steps == 7 and cfg.rl.eaai.shape == "cosine" and cfg.rl.negatives is False
  assert cfg.data.prompt_buckets == (64, 128) and cfg.init_from is None
  assert cfg.eaai_config().total_steps == 7
  with pytest.raises(ValueError, match="unknown field 'stepz'.*valid: steps"):
    configs.load_experiment("demo", ["rl.stepz=3"])
  with pytest.raises(ValueError, match="expected int"):
    configs.load_experiment("demo", ["rl.steps=many"])
  with pytest.raises(ValueError, match="unknown experiment 'nope'; valid: .*demo"):
    configs.load_experiment("nope")


def test_inconsistent_sizes_are_refused_with_what_to_change():
  with pytest.raises(ValueError, match="not divisible by rl.num_minibatches=3"):
    configs.load_experiment("demo", ["rl.num_minibatches=3"])
  with pytest.raises(ValueError, match=r"num_routes=5 exceeds the route pool of each question "
                     r"\(1 positive \+ data.negatives_per_question=3\).*raise data.negatives"):
    configs.load_experiment("demo", ["rl.mrpv.num_routes=5"])
  # a built-in domain's extra correct routes count; another source writes one positive
  assert configs.load_experiment("demo", ["rl.mrpv.num_routes=5",
                                          "data.positives_per_question=2"]).rl.mrpv.num_routes == 5
  with pytest.raises(ValueError, match=r"\(1 positive \+ data.negatives_per_question=3\)"):
    configs.load_experiment("demo", ["rl.mrpv.num_routes=5", "data.positives_per_question=2",
                                     "data.source=domain:tariff,gym:chain_sum"])
  with pytest.raises(ValueError, match="group_size=1"):
    configs.load_experiment("demo", ["rl.group_size=1"])
  with pytest.raises(ValueError, match="rl.microbatches=3 must divide the 32 completions"):
    configs.load_experiment("demo", ["rl.microbatches=3"])
  with pytest.raises(ValueError, match="sft.microbatches=3 must divide sft.batch_size=16"):
    configs.load_experiment("demo", ["sft.microbatches=3"])


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("base"))
  train.run("base_model", wd, MICRO)
  return wd


def test_base_run_writes_params_tokenizer_metrics(micro_base):
  assert os.path.exists(os.path.join(micro_base, "DONE"))
  assert os.path.exists(os.path.join(micro_base, "tokenizer.model"))
  rows = metrics.read_metrics(micro_base, "base")
  assert [r["step"] for r in rows if "loss" in r] == [0, 1]
  assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_a_run_with_bf16_matmuls_trains_and_samples(micro_base, tmp_path):
  """model.matmul_dtype=bfloat16 reaches the run's ModelConfig and every stage (guided SFT,
  RL with its sampler and reference) runs on it."""
  wd = str(tmp_path / "mixed")
  train.run("realm_r1", wd, MICRO + small_stages("realm_r1") + [
      f"init_from={micro_base}", "model.matmul_dtype=bfloat16"])
  cfg = train.load_config(wd)
  assert train.prepare(cfg, wd, create=False).model_cfg.matmul_dtype == "bfloat16"
  rows = metrics.read_metrics(wd, "rl")
  assert [r["step"] for r in rows] == [0, 1]
  assert all(math.isfinite(r["loss"]) and math.isfinite(r["sampler_trainer_logp_gap"])
             for r in rows), rows


@pytest.mark.parametrize("experiment", ["sft", "rft", "grpo", "cot_synth", "realm_zero", "realm_r1",
                                        "ablation_no_negatives", "ablation_no_fading",
                                        "ablation_no_verification", "ablation_no_contrast",
                                        "evidence", "evidence_rl", "evidence_more_sft"])
def test_smoke_every_method(experiment, micro_base, tmp_path):
  wd = str(tmp_path / experiment)
  train.run(experiment, wd, MICRO + small_stages(experiment) + [f"init_from={micro_base}"])
  cfg = train.load_config(wd)
  rl_rows = metrics.read_metrics(wd, "rl")
  if cfg.rl.steps:
    assert [r["step"] for r in rl_rows] == [0, 1]
    for r in rl_rows:
      for key in ("reward/answer", "reward/verification", "reward/format", "kl_k1", "kl_k2",
                  "kl_k3", "clip_frac", "entropy", "completion_len_mean", "zero_variance_share",
                  "sampler_trainer_logp_gap", "rollout_tokens_per_s", "update_tokens_per_s"):
        assert key in r and math.isfinite(r[key]), (key, r)
      if cfg.rl.routes == "never":
        assert r["p_routes"] == 0
      if cfg.rl.routes == "always":
        assert r["p_routes"] == 1
  before = {os.path.join(d, f) for d, _, fs in os.walk(wd) for f in fs}
  results = evaluate.run(wd)
  written = {os.path.join(d, f) for d, _, fs in os.walk(wd) for f in fs} - before
  outputs = {"eval.json", "eval.md", "training_curves.png", "eaai_accuracy.png"}
  assert {os.path.relpath(p, wd) for p in written} <= outputs, written
  final = next(v for k, v in results.items() if k.startswith("final"))
  for setting in ("without routes", "with routes"):
    r = final[setting]
    assert 0 <= r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"] <= 1
  with open(os.path.join(wd, "eval.json")) as f:
    saved = json.load(f)
  assert saved["results"].keys() == results.keys()
  assert set(saved["baselines"]) == {"without routes", "with routes"}
  start = next((v for k, v in results.items() if k.startswith("start")), None)
  if start is not None:  # final against start, paired on the same questions
    for setting, p in saved["paired"].items():
      assert p["n"] == len(start[setting]["correct"]) == final[setting]["n"]
      assert p["acc_a"] == start[setting]["accuracy"] and p["acc_b"] == final[setting]["accuracy"]
      assert p["diff"] == pytest.approx(p["acc_b"] - p["acc_a"])
  assert os.path.getsize(os.path.join(wd, "eval.md")) > 0


def test_nan_stops_the_run_naming_step_and_metric(micro_base, tmp_path):
  wd = str(tmp_path / "nan")
  with pytest.raises(metrics.NonFiniteError, match=r"sft step \d+: metric '(loss|grad_norm)'"):
    train.run("sft", wd, MICRO + ["sft.steps=3", "sft.batch_size=4", "sft.lr=1e30",
                                  "sft.grad_clip=1e30", f"init_from={micro_base}"])
  assert not os.path.exists(train.params_path(wd, "sft"))


def test_wilson_interval_and_majority_vote_by_hand():
  lo, hi = accuracy.wilson_interval(8, 10)
  # p=0.8, n=10, z=1.96: centre=(0.8+0.19208)/1.38416=0.71674, half=0.22646...
  assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
  assert accuracy.majority_vote(["12", "12.0", "$13", None, "13"]) == "12"
  assert accuracy.majority_vote([None, None]) is None


def test_route_prompt_shares_context_and_labels():
  from realm_jax.rl import corpus
  from realm_jax.data import domains
  from realm_jax.data.teachers import domain_teacher
  d = domains.get_domain("tariff")
  ex = domain_teacher(d, d.generate(0, 1, 0), np.random.default_rng(0), 3)[0]
  cfg = configs.load_experiment("demo").rl.mrpv
  prompt, labels, texts = corpus.route_prompt(ex, np.random.default_rng(1), cfg, 2)
  assert len(labels) == 2 and all(t in prompt for t in texts)
  assert "Route A" in prompt and "Route B" in prompt
  pos = [r.text for r in ex.routes if r.positive]
  assert sum(t in pos for t in texts) == sum(labels)
  comp = corpus.format_completion("x", "5", [True, False])
  assert comp == "<verify>A: correct; B: wrong</verify><think>x</think><answer>5</answer>"


def test_memory_estimate_is_logged_and_a_config_that_cannot_fit_stops_early(micro_base, tmp_path):
  wd = str(tmp_path / "mem")
  with pytest.raises(MemoryError, match=r"exceeds 90% of the device memory"):
    train.run("grpo", wd, MICRO + ["rl.steps=2", f"init_from={micro_base}",
                                   "device_memory_bytes=4096"])
  rows = metrics.read_metrics(wd, "rl_memory")
  assert rows and rows[0]["total_bytes"] > 4096 and rows[0]["argument_bytes"] > 0
  assert not metrics.read_metrics(wd, "rl")  # stopped before the first step


def test_rollouts_reuse_the_compiled_sampler_across_steps(micro_base, tmp_path, fresh_compiles):
  import jax
  compiles = []

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(kw.get("fun_name", ""))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # One prompt bucket: every step has the same shapes, so nothing may recompile.
    train.run("grpo", str(tmp_path / "c"), MICRO + ["rl.steps=4", "data.prompt_buckets=320",
                                                    "rl.max_new_tokens=9", f"init_from={micro_base}"])
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles.count("jit(generate_sharded)") == 1, compiles  # the rollout, on the run's mesh
  # The update too (its start-up memory estimate compiles the same executable).
  assert compiles.count("jit(step)") == 1, compiles
  assert len(metrics.read_metrics(str(tmp_path / "c"), "rl")) == 4


def test_guided_distillation_with_token_level_kd(micro_base, tmp_path):
  """KD from a teacher identical to the student: the KD term starts at 0 (forward KL of equals)."""
  wd = str(tmp_path / "kd")
  train.run("sft", wd, MICRO + ["sft.steps=2", "sft.batch_size=4", "sft.kd_alpha=0.5",
                                f"sft.kd_teacher={micro_base}", f"init_from={micro_base}",
                                "sft.warmup=1", "sft.num_items=7"])
  (teacher,) = metrics.read_metrics(wd, "sft_teacher")  # sft.num_items: the first 7 questions
  assert teacher["teacher_examples"] + teacher["teacher_dropped"] == 7
  rows = [r for r in metrics.read_metrics(wd, "sft") if "loss" in r]
  assert rows[0]["kd_kl"] == pytest.approx(0.0, abs=1e-5)  # step 0: student == teacher
  assert rows[0]["kd_loss"] == pytest.approx(0.0, abs=1e-5)
  assert rows[0]["loss"] > 0  # the cross-entropy half still teaches
  with pytest.raises(ValueError, match="kd_teacher"):
    train.run("sft", str(tmp_path / "kd2"), MICRO + ["sft.steps=2", "sft.kd_alpha=0.5",
                                                     f"init_from={micro_base}"])


def test_rft_update_batch_uses_the_few_correct_samples_a_weak_model_finds():
  from realm_jax.rl import rft
  assert rft.update_batch_size(100, 32) == 32
  assert rft.update_batch_size(25, 32) == 25          # all 25 pairs, one batch
  assert rft.update_batch_size(25, 32, 2) == 24       # every process gets the same share
  assert rft.update_batch_size(1, 32, 2) == 0 and rft.update_batch_size(0, 32) == 0  # no update


def _ckpt_steps(wd, phase):
  from realm_jax.train import checkpoint
  return checkpoint.finalized_steps(checkpoint.checkpoint_dir(wd, phase))


def test_sft_honours_keep_checkpoints_and_checkpoint_every_0(micro_base, tmp_path):
  micro = [o for o in MICRO if not o.startswith("checkpoint_every=")]
  wd = str(tmp_path / "keep3")
  train.run("sft", wd, micro + ["sft.steps=5", "sft.batch_size=4", "checkpoint_every=2",
                                "keep_checkpoints=3", f"init_from={micro_base}"])
  assert _ckpt_steps(wd, "sft") == [2, 4, 5]  # saves at 2, 4 and the last step; 3 kept
  wd = str(tmp_path / "every0")
  train.run("sft", wd, micro + ["sft.steps=3", "sft.batch_size=4", "checkpoint_every=0",
                                f"init_from={micro_base}"])
  assert _ckpt_steps(wd, "sft") == [3]  # only at the end
  assert [r["step"] for r in metrics.read_metrics(wd, "sft")] == [0, 1, 2]


def test_resume_compares_resolved_configs_not_override_strings(micro_base):
  with open(os.path.join(micro_base, "run.json")) as f:
    recorded = json.load(f)
  assert recorded["overrides"] == MICRO
  assert recorded["config"]["base"]["steps"] == 2 and recorded["config"]["mesh"] == [1, 1, 1]
  train.run("base_model", micro_base, list(reversed(MICRO)))  # same config: accepted (done)
  with pytest.raises(ValueError, match=r"config differs \(base.steps: 2 -> 3\); refusing"):
    train.run("base_model", micro_base, MICRO + ["base.steps=3"])
  with open(os.path.join(micro_base, "run.json")) as f:
    assert json.load(f) == recorded


def test_failed_setup_records_nothing_so_the_fixed_command_starts_afresh(tmp_path):
  wd = str(tmp_path / "typo")
  with pytest.raises(FileNotFoundError):
    train.run("base_model", wd, MICRO + [f"data.source=gsm8k:{tmp_path}/no_such_file.jsonl"])
  assert not os.path.exists(os.path.join(wd, "run.json"))
  assert not os.path.exists(os.path.join(wd, "tokenizer.model"))


def test_eval_refuses_a_run_without_a_finished_stage_and_writes_nothing(micro_base, tmp_path):
  wd = tmp_path / "unfinished"
  wd.mkdir()
  with open(os.path.join(micro_base, "run.json")) as f:
    (wd / "run.json").write_text(f.read())
  with pytest.raises(FileNotFoundError, match="has no finished stage"):
    evaluate.run(str(wd))
  assert os.listdir(wd) == ["run.json"]  # no tokenizer trained into it, no outputs


def test_eval_writes_only_its_outputs(micro_base, tmp_path):
  import shutil
  wd = str(tmp_path / "copy")
  shutil.copytree(micro_base, wd)
  os.remove(os.path.join(wd, "tokenizer.model"))
  with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
    evaluate.run(wd)  # never trains a tokenizer into the run it evaluates
  assert not os.path.exists(os.path.join(wd, "tokenizer.model"))


def test_eval_at_a_harder_level_tests_unseen_questions_of_that_level(micro_base, tmp_path):
  import shutil
  from realm_jax.data import sources
  wd = str(tmp_path / "copy")
  shutil.copytree(micro_base, wd)
  before = sorted(os.listdir(wd))
  evaluate.run(wd, ["eval.difficulty=1", "eval.num_questions=3"])
  assert set(os.listdir(wd)) - set(before) == {"eval_d1.json", "eval_d1.md"}, os.listdir(wd)
  with open(os.path.join(wd, "eval_d1.json")) as f:
    out = json.load(f)
  assert out["difficulty"] == 1
  # level-1 tariff questions carry express/fragile flags some of the time; the level-0 run's
  # own questions never do, so the evaluated questions are the level-1 generator's
  cfg = train.load_config(wd, ["eval.difficulty=1"])
  ctx = evaluate.other_level(train.prepare(cfg, wd, create=False), 1)
  level1 = {ex.question for ex in sources.domain_examples("tariff", 200, cfg.data.seed, 1)}
  assert ctx.data.eval and all(ex.question in level1 for ex in ctx.data.eval)
  own = train.prepare(cfg, wd, create=False).data
  assert not {ex.question for ex in ctx.data.eval} & {ex.question for ex in own.train + own.valid}
  final = next(v for k, v in out["results"].items() if k.startswith("final"))
  assert len(final["without routes"]["correct"]) == 3


def test_eval_route_settings_drop_work_without_changing_what_is_kept(micro_base, tmp_path):
  import shutil
  wd = str(tmp_path / "copy")
  shutil.copytree(micro_base, wd)
  full = evaluate.run(wd, ["eval.final_only=true"])
  final = next(k for k in full if k.startswith("final"))
  assert {"pass@2", "maj@2"} <= full[final]["with routes"].keys()
  # pass@k sampled without routes only: the with-routes greedy numbers are the same
  part = evaluate.run(wd, ["eval.final_only=true", "eval.sample_routes=without"])[final]
  assert "pass@2" not in part["with routes"] and "maj@2" not in part["with routes"]
  rows = [l for l in open(os.path.join(wd, "eval.md")) if l.startswith(f"| {final} |")]
  cells = [[c.strip() for c in l.split("|")[4:7]] for l in rows]  # pass@2, maj@2, verdicts
  assert cells[1][:2] == ["", ""] and all(cells[0][:2]) and cells[0][2] == "" and cells[1][2]
  assert part["without routes"] == full[final]["without routes"]
  assert part["with routes"]["correct"] == full[final]["with routes"]["correct"]
  assert (part["with routes"]["verification_accuracy"]
          == full[final]["with routes"]["verification_accuracy"])
  # one setting only: the other is neither measured nor given baselines
  only = evaluate.run(wd, ["eval.final_only=true", "eval.routes=without"])
  assert only[final] == {"without routes": full[final]["without routes"]}
  with open(os.path.join(wd, "eval.json")) as f:
    assert set(json.load(f)["baselines"]) == {"without routes"}
  with pytest.raises(ValueError, match="eval.routes='sometimes' must be one of both, without, with"):
    train.load_config(wd, ["eval.routes=sometimes"])


def test_a_record_from_an_older_realm_jax_still_resumes(micro_base, tmp_path):
  """Fields added since a run was recorded are not differences; a version-1 record (rl.eaai as
  set, the schedule filled in at use) is read the way those runs used it."""
  import shutil
  wd = str(tmp_path / "old")
  shutil.copytree(micro_base, wd)
  with open(os.path.join(wd, "run.json")) as f:
    info = json.load(f)
  old = info["config"]
  del old["record_version"], old["eval"]["difficulty"]  # a field that did not exist then
  old["rl"]["eaai"].update(total_steps=1000, max_routes=3)  # raw defaults, as v1 recorded them
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump(info, f)
  train.run("base_model", wd, MICRO)  # same run: accepted (done)
  with pytest.raises(ValueError, match=r"config differs \(base.lr: "):
    train.run("base_model", wd, MICRO + ["base.lr=0.5"])
  cfg = configs.load_experiment("base_model", MICRO)
  assert train.config_record(cfg)["rl"]["eaai"]["total_steps"] == max(cfg.rl.steps, 1)
  assert train.config_record(cfg)["rl"]["eaai"]["max_routes"] == cfg.rl.mrpv.num_routes
