"""SmolLM2-135M-Instruct in the evidence setting (`experiments/evidence_smollm2.py`) and its
driver (`experiments/smollm2.py`): the config, its buckets against the real tokenizer, the
runs' commands, and the report's paired numbers against hand counts."""

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import smollm2
from realm_jax import configs
from realm_jax.model import gguf as gguf_import, pretrained
from realm_jax.rl import corpus


def test_config_is_lora_smollm2_on_tariff_level_0_with_enough_test_questions():
  cfg = configs.load_experiment("evidence_smollm2")
  assert cfg.model.pretrained == "smollm2" and cfg.model.lora_rank > 0
  assert (cfg.data.source, cfg.data.difficulty) == ("domain:tariff", 0)
  assert cfg.eval.num_questions >= 300 and cfg.data.num_eval >= cfg.eval.num_questions
  assert cfg.data.num_valid > 0 and cfg.sft.eval_every > 0 and cfg.rl.eval_every > 0
  assert cfg.sft.steps > 0 and cfg.sft.group_by_bucket and 0 < cfg.sft.route_share < 1
  # GRPO and ReaLM-R1 share one RL budget and differ only in routes and the contrast term
  grpo = configs.load_experiment("evidence_smollm2", list(smollm2.RUNS["grpo"][1]))
  r1 = configs.load_experiment("evidence_smollm2", list(smollm2.RUNS["realm_r1"][1]))
  for c in (grpo, r1):
    assert c.sft.steps == 0 and c.rl.steps == smollm2.RL_STEPS > 0
    assert c.model.remat and c.rl.microbatches > 1  # the R1 update's memory (see smollm2.RL)
  assert (grpo.rl.routes, r1.rl.routes) == ("never", "eaai")
  assert grpo.rl.mrpv.contrast_coef == 0 < r1.rl.mrpv.contrast_coef
  assert r1.rl.mrpv.w_ver > 0
  same = lambda c: (c.rl.batch_prompts, c.rl.group_size, c.rl.lr, c.rl.max_new_tokens)
  assert same(grpo) == same(r1)


def _chat_len(tok, prompt: str) -> int:
  return len(tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]),
                        add_bos=True))


def test_buckets_and_completion_budget_hold_tariff_under_the_smollm2_tokenizer():
  cfg = configs.load_experiment("evidence_smollm2", ["data.num_train=200", "data.num_eval=100",
                                                     "data.num_valid=8"])
  tok = pretrained.load_pretrained_tokenizer(gguf_import.smollm2_gguf_path())
  data = corpus.build_run_data(cfg.data)
  m, K = cfg.rl.mrpv, cfg.rl.mrpv.num_routes
  rng = np.random.default_rng(0)
  for ex in data.train + data.eval:
    plain = _chat_len(tok, m.without_routes_template.format(question=ex.question))
    assert plain <= cfg.data.prompt_buckets[0], ex.id  # RL and eval prompts without routes
    prompt, labels, texts = corpus.route_prompt(ex, rng, m, K)
    assert _chat_len(tok, prompt) <= cfg.data.prompt_buckets[-1], ex.id
    # the teacher's completions (EOS included), without and with the verdicts, fit the
    # sampling budget, and distillation items the SFT buckets
    bare, verified = (len(tok.encode(corpus.format_completion(ex.cot, ex.answer, lab))) + 1
                      for lab in (None, labels))
    assert max(bare, verified) <= cfg.rl.max_new_tokens == cfg.eval.max_new_tokens, ex.id
    assert plain + bare <= cfg.data.sft_buckets[1], ex.id
    assert _chat_len(tok, prompt) + verified <= cfg.data.sft_buckets[-1], ex.id
    for t in texts:  # route-contrast rows: question, then the route
      assert len(tok.encode(ex.question + "\n", add_bos=True) + tok.encode(t)) \
          <= cfg.data.sft_buckets[-1], ex.id


def test_commands_chain_the_runs_from_the_sft_run():
  sft, grpo = smollm2.commands("sft", "R"), smollm2.commands("grpo", "R", ("seed=1",))
  assert sft[0][:4] == ["train", "evidence_smollm2", "--workdir", "R/sft"]
  assert not any(a.startswith("init_from") for a in sft[0])
  assert sft[1] == ["eval", "--workdir", "R/sft"]  # pairs the model as loaded with SFT
  assert "init_from=R/sft_more" in grpo[0] and grpo[0][-1] == "seed=1"
  assert grpo[1] == ["eval", "--workdir", "R/grpo", "eval.final_only=true", "seed=1"]
  # more distillation from `sft`: the same stage at half the learning rate, no RL
  more = smollm2.commands("sft_more", "R")
  assert "init_from=R/sft" in more[0] and more[1][-1] == "eval.final_only=true"
  a = configs.load_experiment("evidence_smollm2", list(smollm2.RUNS["sft"][1]))
  b = configs.load_experiment("evidence_smollm2", list(smollm2.SFT_MORE))
  assert (b.sft.lr, b.sft.warmup, b.rl.steps) == (a.sft.lr / 2, 10, 0)
  assert dataclasses.replace(b.sft, lr=a.sft.lr, warmup=a.sft.warmup) == a.sft


def _eval_file(path, stages: dict[str, list[int]], digest="q"):
  res = {stage: {s: {"n": len(c), "accuracy": float(np.mean(c)), "correct": c,
                     "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0,
                     **({"verification_accuracy": 0.5} if s == "with routes" else {})}
                 for s in smollm2.SETTINGS} for stage, c in stages.items()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"questions_sha256": digest, "results": res,
               "baselines": {"without routes": {"zone cap": 0.25}}}, f)


def test_report_pairs_every_stage_against_hand_counts(tmp_path):
  out = str(tmp_path)
  _eval_file(f"{out}/sft/eval.json", {"start (pretrained)": [0, 0, 0, 0],
                                      "final (sft)": [1, 1, 0, 0]})
  _eval_file(f"{out}/sft_more/eval.json", {"final (sft)": [1, 1, 0, 0]})
  _eval_file(f"{out}/grpo/eval.json", {"final (rl)": [1, 1, 1, 0]})
  _eval_file(f"{out}/realm_r1/eval.json", {"final (rl)": [1, 0, 1, 1]})
  r = smollm2.report(out, "cmd", "abc")
  d = r["differences"]
  one = d["sft - pretrained (without routes)"]
  assert (one["diff"], one["b_only"], one["a_only"], one["n"]) == (0.5, 2, 0, 4)
  assert one["p_value"] == pytest.approx(0.5)  # exact McNemar: 2 x P(Bin(2, 1/2) = 0)
  assert d["grpo - sft_more (with routes)"]["diff"] == 0.25
  assert d["sft_more - sft (without routes)"]["diff"] == 0.0
  both = d["realm_r1 - grpo (without routes)"]  # one question each way
  assert (both["diff"], both["b_only"], both["a_only"]) == (0.0, 1, 1)
  assert r["accuracy"]["pretrained"]["without routes"] == 0.0
  table = open(f"{out}/table.md").read()
  assert "| baseline: zone cap | 0.250 |" in table
  # se = sqrt(2 - 2^2 / 4) / 4 = 0.25: 0.5 -+ 1.96 x 0.25, bold as it excludes 0
  assert "| sft − pretrained | without routes | **+0.500 (+0.010 .. +0.990)** | 0.5 | 2 / 0 | 4 |" \
      in table
  _eval_file(f"{out}/grpo/eval.json", {"final (rl)": [1, 1, 1, 0]}, digest="other")
  with pytest.raises(ValueError, match="evaluated different questions"):
    smollm2.report(out, "cmd", "abc")


def test_main_skips_kept_runs_and_refuses_a_run_without_its_start(tmp_path, capsys):
  out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  _eval_file(f"{out}/sft/eval.json", {"start (pretrained)": [0, 1], "final (sft)": [1, 1]})
  called = []
  assert smollm2.main(["--out", out, "--runs", runs, "--runs-only", "sft"], called.append) == 0
  assert called == [] and "sft: kept" in capsys.readouterr().out
  assert smollm2.main(["--out", out, "--runs", runs, "--runs-only", "grpo"], called.append) == 1
  assert called == [] and "its start" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    smollm2.main(["--runs-only", "nope"])


def test_data_stats_counts_tokens_with_the_smollm2_tokenizer(capsys):
  from realm_jax.cli import datastats, main as cli_main
  cli_main.main(["data", "stats", "domain:tariff", "--n", "12", "--tokenizer", "smollm2"])
  row = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("question tokens"))
  tok = pretrained.load_pretrained_tokenizer(gguf_import.smollm2_gguf_path())
  lens = [len(tok.encode(ex.question)) for ex in datastats.examples_with_routes("domain:tariff", 12, 0, 0)]
  assert row.split()[-1] == f"{min(lens)}/{int(np.median(lens))}/{max(lens)}"


def test_main_runs_the_chain_keeps_results_and_reports(tmp_path):
  out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  correct = {"sft": [1, 1, 0, 0], "sft_more": [1, 1, 0, 1], "grpo": [1, 1, 1, 0],
             "realm_r1": [1, 0, 1, 1]}
  calls = []

  def fake_cli(args):  # stands in for the CLI: what train and eval leave in the workdir
    calls.append(args)
    wd = args[args.index("--workdir") + 1]
    name = os.path.basename(wd)
    if args[0] == "train":
      open(os.path.join(wd, "DONE"), "w").close()
      with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for step, row in ((0, {"reward": 0.5}), (4, {"valid_accuracy": 0.25}),
                          (4, {"valid_accuracy": 0.5})):  # a resumed step: the last one counts
          f.write(json.dumps({"phase": "rl", "step": step, **row}) + "\n")
    else:
      stages = {"final (x)": correct[name]}
      if name == "sft":
        stages = {"start (pretrained)": [0, 0, 0, 0], **stages}
      _eval_file(os.path.join(wd, "eval.json"), stages)

  assert smollm2.main(["--out", out, "--runs", runs], fake_cli) == 0
  assert [(c[0], os.path.basename(c[c.index("--workdir") + 1])) for c in calls] == [
      ("train", "sft"), ("eval", "sft"), ("train", "sft_more"), ("eval", "sft_more"),
      ("train", "grpo"), ("eval", "grpo"), ("train", "realm_r1"), ("eval", "realm_r1")]
  assert f"init_from={os.path.abspath(runs)}/sft" in calls[2]
  assert f"init_from={os.path.abspath(runs)}/sft_more" in calls[6]
  summary = json.load(open(f"{out}/realm_r1/run_summary.json"))
  assert summary["valid_accuracy"] == [["rl", 4, 0.5]] and summary["reward"] == [["rl", 0, 0.5]]
  assert summary["wall_seconds"] >= 0 and len(summary["commit"]) == 40
  result = json.load(open(f"{out}/results.json"))
  assert result["differences"]["realm_r1 - sft_more (without routes)"]["diff"] == 0.0
  assert result["differences"]["sft_more - sft (without routes)"]["diff"] == 0.25
  assert os.path.exists(f"{out}/curves.png")
  assert "| 0.50 (step 4) → best 0.50 (step 4) → 0.50 (step 4) |" in open(f"{out}/table.md").read()
  calls.clear()
  assert smollm2.main(["--out", out, "--runs", runs], fake_cli) == 0 and calls == []  # all kept


def test_validation_summary_names_first_best_and_last():
  # the earliest of two equal bests is the one a run keeps (a later tie is no improvement)
  curve = {"valid_accuracy": [["sft", 50, 0.3], ["sft", 25, 0.0], ["sft", 100, 0.5],
                              ["sft", 75, 0.5], ["sft", 150, 0.4]]}
  assert smollm2.validation(curve) == "0.00 (step 25) → best 0.50 (step 75) → 0.40 (step 150)"
  assert smollm2.validation({}) == ""


def test_a_run_stopped_before_its_end_is_not_evaluated(tmp_path, capsys):
  # SIGTERM makes `train` save and exit 0 without DONE: the driver must not go on to eval
  out, runs, calls = str(tmp_path / "out"), str(tmp_path / "runs"), []
  assert smollm2.main(["--out", out, "--runs", runs, "--runs-only", "sft"], calls.append) == 1
  assert [c[0] for c in calls] == ["train"]
  assert "training stopped before its last step" in capsys.readouterr().out
  assert not os.path.exists(f"{out}/sft")

  def finish(args):  # the resumed run ends: its summary counts both segments
    wd = args[args.index("--workdir") + 1]
    if args[0] == "train":
      open(os.path.join(wd, "DONE"), "w").close()
    else:
      _eval_file(os.path.join(wd, "eval.json"), {"start (pretrained)": [0], "final (sft)": [1]})
  assert smollm2.main(["--out", out, "--runs", runs, "--runs-only", "sft"], finish) == 0
  assert json.load(open(f"{out}/sft/run_summary.json"))["segments"] == 2
