"""`reproduce --level N --starts RUNS`: RL and more SFT on a level the level-0 starts never
distilled, every run evaluated at N and N + 1 on the same questions, the starts copied
from another reproduction only when they were made under the same overrides."""

import argparse
import dataclasses
import json
import os
import re
import subprocess

import numpy as np
import pytest

from experiments import readme_tables, reproduce, reproduce_report, rule_split
from realm_jax import configs
from realm_jax.rl import corpus
from tests.test_reproduce import TINY

ROOT = os.path.dirname(os.path.dirname(__file__))
L1 = reproduce.Schedule(sft_steps=300, rl_steps=40, level=1)


def _config(name, sched):
  m = reproduce.METHODS[name]
  ov = [o for o in reproduce.commands(name, 0, "runs/r", sched)[0][4:] if "=" in o]
  return configs.load_experiment(m.experiment, ov)


def test_starts_stay_at_level_0_and_every_other_run_trains_at_the_level():
  cfgs = {n: _config(n, L1) for n in reproduce.METHODS}
  assert cfgs["base"].data.difficulty == cfgs["sft"].data.difficulty == 0
  others = set(reproduce.METHODS) - {"base", "sft"}
  assert {cfgs[n].data.difficulty for n in others} == {1}
  # one data set for every trained run, the start's the same but for its level
  assert len({cfgs[n].data for n in others}) == 1
  assert cfgs["sft"].data == dataclasses.replace(cfgs["grpo"].data, difficulty=0,
                                                 prompt_buckets=(96, 160, 256, 320))
  # level 0 (the default) adds no override, so `make reproduce`'s kept results still resume;
  # level 1 adds only the data's level
  plain = reproduce.Schedule(sft_steps=300, rl_steps=40)
  for n in reproduce.METHODS:
    assert not any(o.startswith("data.difficulty") for o in plain.overrides(n)), n
    assert [o for o in L1.overrides(n) if o not in L1.at_level()] == plain.overrides(n), n
  assert set(L1.at_level()) <= set(L1.overrides("grpo")) and set(L1.at_level()).isdisjoint(
      L1.overrides("sft"))
  # room for level 1: the prompt with its routes and the completion are not cut
  assert cfgs["realm_r1"].data.prompt_buckets[-1] >= 359 and cfgs["realm_r1"].rl.max_new_tokens >= 147
  assert cfgs["sft"].data.prompt_buckets[-1] == 320


def test_every_run_is_evaluated_at_the_level_and_the_next():
  for name in ("base", "sft", "grpo"):
    _, ev, harder = reproduce.commands(name, 0, "R", L1)
    assert "data.difficulty=1" in ev and not any(a.startswith("eval.difficulty") for a in ev)
    assert "data.difficulty=1" in harder and "eval.difficulty=2" in harder
    assert "eval.max_new_tokens=192" in ev and harder[-1 - len(L1.extra)] == "eval.max_new_tokens=384"
  assert reproduce.result_files(L1) == ["eval.json", "eval_d2.json", "run_summary.json"]


def _fake_run(runs, name, overrides, done=True):
  d = os.path.join(runs, "seed0", name)
  os.makedirs(d)
  with open(os.path.join(d, reproduce.OVERRIDES_FILE), "w") as f:
    json.dump({"overrides": overrides}, f)
  if done:
    open(os.path.join(d, "DONE"), "w").close()
  return d


def test_copy_starts_copies_only_finished_starts_made_under_the_same_overrides(tmp_path):
  src, dst = str(tmp_path / "a"), str(tmp_path / "b")
  names = reproduce.with_starts(["grpo"])
  _fake_run(src, "base", L1.overrides("base"))
  _fake_run(src, "sft", L1.overrides("sft"))
  _fake_run(src, "grpo", L1.overrides("grpo"))
  reproduce.copy_starts(names, 1, dst, src, L1)
  assert sorted(os.listdir(os.path.join(dst, "seed0"))) == ["base", "sft"]  # not grpo
  assert os.path.exists(os.path.join(dst, "seed0", "sft", "DONE"))
  reproduce.copy_starts(names, 1, dst, src, L1)  # present: nothing to do

  other = str(tmp_path / "c")
  _fake_run(other, "base", L1.overrides("base"))
  _fake_run(other, "sft", ["sft.steps=9", *L1.overrides("sft")])
  with pytest.raises(ValueError, match=r"c/seed0/sft: made with overrides \['sft.steps=9'"):
    reproduce.copy_starts(names, 1, str(tmp_path / "d"), other, L1)

  half = str(tmp_path / "e")
  _fake_run(half, "sft", L1.overrides("sft"), done=False)
  with pytest.raises(ValueError, match=r"e/seed0/sft: unfinished; delete it"):
    reproduce.copy_starts(names, 1, half, src, L1)
  unfinished = str(tmp_path / "f")
  _fake_run(unfinished, "base", L1.overrides("base"), done=False)
  reproduce.copy_starts(["base", "sft"], 1, str(tmp_path / "g"), unfinished, L1)
  assert not os.path.exists(tmp_path / "g")  # an unfinished start is not copied


def test_a_tiny_level_1_reproduction_reuses_the_level_0_starts_and_pairs_every_run(tmp_path):
  from realm_jax.cli import main as cli_main
  calls = []

  def run_cli(args):
    calls.append(args[0])
    cli_main.main(args)

  common = ["--seeds", "1", "--sft-steps", "3", "--rl-steps", "2", *TINY]
  level0 = ["--out", str(tmp_path / "out0"), "--runs", str(tmp_path / "runs0"), "--methods", "base,sft"]
  assert reproduce.main([*level0, *common], run_cli=run_cli) == 0
  sft0 = tmp_path / "runs0" / "seed0" / "sft"
  trained = {p: (sft0 / p).read_bytes() for p in ("metrics.jsonl", "DONE")}
  argv = ["--out", str(tmp_path / "out1"), "--runs", str(tmp_path / "runs1"), "--level", "1",
          "--starts", str(tmp_path / "runs0"), "--methods", "grpo,more_sft", *common]
  calls.clear()
  assert reproduce.main(argv, run_cli=run_cli) == 0
  # base and sft (copied, finished) are evaluated only; grpo and more_sft trained too
  assert calls == ["eval", "eval"] * 2 + ["train", "eval", "eval"] * 2
  sft1 = tmp_path / "runs1" / "seed0" / "sft"
  # the copied start was not trained again: its metrics and marker are those of level 0's
  assert {p: (sft1 / p).read_bytes() for p in trained} == trained
  grpo_run = json.loads((tmp_path / "runs1" / "seed0" / "grpo" / "run.json").read_text())
  assert grpo_run["config"]["data"]["difficulty"] == 1
  evals = {n: json.loads((tmp_path / "runs1" / "seed0" / n / "eval.json").read_text())
           for n in ("base", "sft", "grpo", "more_sft")}
  assert {e["difficulty"] for e in evals.values()} == {1}
  assert len({e["questions_sha256"] for e in evals.values()}) == 1  # paired: same questions
  harder = {n: json.loads((tmp_path / "runs1" / "seed0" / n / "eval_d2.json").read_text())
            for n in evals}
  assert {e["difficulty"] for e in harder.values()} == {2}
  assert len({e["questions_sha256"] for e in harder.values()}) == 1
  r = json.loads((tmp_path / "out1" / "results.json").read_text())
  assert r["schedule"]["levels"] == [1, 2]
  fin = lambda e: next(v for k, v in e["results"].items() if k.startswith("final"))
  want = np.mean(np.subtract(fin(evals["sft"])["without routes"]["correct"],
                             fin(evals["grpo"])["without routes"]["correct"]))
  assert r["summary"]["sft"]["l0 - grpo"]["diff"] == pytest.approx(want)
  assert r["teacher_budget"]["more_sft"]["cots"] == "2,000 + 2,000 of level 1"
  assert r["teacher_budget"]["grpo"]["cots"] == "2,000"
  table = (tmp_path / "out1" / "table.md").read_text()
  assert "RL and more SFT at level 1, from level-0 starts" in table
  assert "| L1 no routes | L1 with routes |" in table and "| L2 no routes |" in table
  md = readme_tables.accuracy_table(r)
  assert md.splitlines()[0] == ("| run | seeds | L1 | L1 with routes | L2 | L1 − GRPO | L2 − GRPO "
                                "| L1 − more SFT | L2 − more SFT |")
  assert readme_tables.against_r1_table(r).startswith("| method − ReaLM-R1 | L1 | L1 with routes | L2 |")
  # the rule split, against an independent labelling: a level-1 tariff question needs a rule
  # level 0 never uses (R5, R6) exactly when its parcel is express or fragile
  res = rule_split.split(str(tmp_path / "out1"))
  assert res["level"] == 1 and set(res["results"]) == set(evals)
  cfg = configs.load_experiment("evidence_rl", [*TINY, "data.difficulty=1"])
  test = corpus.build_run_data(cfg.data).eval[:cfg.eval.num_questions]
  new = np.array([p["express"] or p["fragile"] for ex in test for p in ex.meta["params"]["parcels"]])
  assert new.any() and not new.all()  # both groups present in these 8 questions
  for n, e in evals.items():
    for setting in ("without routes", "with routes"):
      c = np.asarray(fin(e)[setting]["correct"], bool)
      for g, mask in (("no new rule", ~new), ("a new rule", new)):
        got = res["results"][n][setting][g]
        assert got["questions"] == mask.sum() and got["accuracy"] == pytest.approx(c[mask].mean())
  assert "| grpo | 1 | " in rule_split.markdown(res)
  kept = tmp_path / "out1" / "runs" / "seed0" / "grpo" / "eval.json"
  e = json.loads(kept.read_text())
  kept.write_text(json.dumps(dict(e, questions_sha256="0" * 64)))
  with pytest.raises(ValueError, match="grpo/eval.json: tested other questions"):
    rule_split.split(str(tmp_path / "out1"))
  with pytest.raises(ValueError, match="out0/results.json: trained at level 0"):
    rule_split.split(str(tmp_path / "out0"))


def test_make_reproduce_level1_reuses_the_committed_bf16_starts():
  """`make reproduce-level1` copies `make reproduce`'s starts: its schedule gives base and
  SFT exactly the overrides the committed bf16 starts record, and its trained runs level 1."""
  made = subprocess.run(["make", "-n", "reproduce-level1"], cwd=ROOT, capture_output=True, text=True)
  assert made.returncode == 0, made.stderr
  lines = " ".join(made.stdout.split("\\\n")).splitlines()
  args = next(ln for ln in lines if "-m experiments.reproduce " in ln).split(
      "-m experiments.reproduce ")[1].split()
  # then the rule split and seed 0's RL signal of the same results, from its run directories
  assert any(ln.endswith("-m experiments.rule_split experiments/results/reproduce_bf16_level1")
             for ln in lines)
  signal = next(ln for ln in lines if "-m experiments.group_signal" in ln).split()
  assert signal[signal.index("--level") + 1] == "1" and "--no-train" in signal
  assert signal[signal.index("--signal-runs") + 1] == args[args.index("--runs") + 1]
  assert args[args.index("--level") + 1] == "1"
  assert args[args.index("--starts") + 1] == "runs/reproduce_bf16"
  parser = argparse.ArgumentParser()
  reproduce.add_schedule_args(parser)
  sched = reproduce.schedule_from(parser.parse_known_args(args)[0],
                                  [a for a in args if "=" in a])
  assert (sched.level, sched.harder_level) == (1, 2)
  for name in ("base", "sft"):
    kept = os.path.join(ROOT, "experiments", "results", "reproduce_bf16", "runs", "seed0", name,
                        "run_summary.json")
    with open(kept) as f:
      assert json.load(f)["overrides"] == sched.overrides(name), name
  assert "data.difficulty=1" in sched.overrides("realm_r1")


def test_teacher_budget_counts_more_sfts_cots_of_the_level():
  assert reproduce_report.teacher_cots("more_sft") == "2,000"
  assert reproduce_report.teacher_cots("more_sft", 1) == "2,000 + 2,000 of level 1"
  assert reproduce_report.teacher_cots("realm_r1", 1) == "2,000"
  assert reproduce_report.teacher_cots("realm_zero", 1) == "400"


def test_make_route_start_trains_each_seeds_start_then_the_methods_from_it():
  """`make route-start`: per seed the variant start (level-1 questions only with routes), then
  GRPO, ReaLM-R1 and more SFT with init_from that start, then one table over the seeds."""
  made = subprocess.run(["make", "-n", "route-start"], cwd=ROOT, capture_output=True, text=True)
  assert made.returncode == 0, made.stderr
  text = " ".join(made.stdout.replace("\\\n", " ").split())
  assert text.count("--run sft --name routes_l1 sft.route_level=1") == 1  # in the seed loop
  assert "for s in 0 1 2" in text and "for m in grpo realm_r1 more_sft" in text
  assert "init_from=runs/reproduce_bf16_level1/variants/seed$s/sft/routes_l1" in text
  # (make -n under make also prints "Entering/Leaving directory" lines)
  assert re.search(r"-m experiments\.variant_table \S+ .*?--seeds (\d+)", text).group(1) == "3"
  # the level-1 route items fit the buckets: up to 536 tokens with the starts' tokenizer
  assert "data.sft_buckets=128,192,256,384,512,576" in text
