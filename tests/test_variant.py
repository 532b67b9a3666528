"""One run of a reproduction under another setting, paired with the kept run: the calls it
makes, the paired numbers against hand-made eval files, its refusals, and tiny runs (an SFT
schedule at level 0, an RL setting at level 1 with the new-rule split)."""

import json
import os

import numpy as np
import pytest

from experiments import reproduce, variant


def _eval(path, correct_l0, correct_routes, level=0):
  res = {"without routes": {"n": len(correct_l0), "correct": correct_l0}}
  if correct_routes is not None:
    res["with routes"] = {"n": len(correct_routes), "correct": correct_routes}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"difficulty": level, "questions_sha256": "q", "results": {"final (sft)": res}}, f)


def test_calls_are_the_reproductions_sft_run_in_its_own_workdir_with_overrides_last():
  sched = reproduce.Schedule(sft_steps=3000, extra=("model.matmul_dtype=bfloat16",))
  wd, calls = variant.commands("sft", 1, "steps4500", "runs/r", sched, ["sft.steps=4500"])
  assert wd == os.path.join("runs/r", "variants", "seed1", "sft", "steps4500")
  want = reproduce.commands("sft", 1, "runs/r", sched)
  assert [c[0] for c in calls] == ["train", "eval", "eval"]
  for got, orig in zip(calls, want):
    i = orig.index("--workdir")
    assert got[i + 1] == wd and orig[i + 1] == "runs/r/seed1/sft"
  train = calls[0]
  assert "init_from=runs/r/seed1/base" in train and "seed=1" in train
  # the reproduction's sft.steps=3000 is kept but the schedule's later setting wins
  assert train.index("sft.steps=3000") < train.index("sft.steps=4500") == len(train) - 1
  assert calls[1][3:] == want[1][3:] and calls[2][3:] == want[2][3:]  # evaluated alike


def test_compare_pairs_each_setting_question_by_question(tmp_path):
  kept, new = tmp_path / "kept", tmp_path / "new"
  # L0: kept 3/4, new 4/4 (one gained); with routes: one gained, one lost; L1: the same
  _eval(str(kept / "eval.json"), [1, 1, 1, 0], [1, 0, 1, 0])
  _eval(str(new / "eval.json"), [1, 1, 1, 1], [0, 1, 1, 0])
  _eval(str(kept / "eval_d1.json"), [0, 1, 0, 0], None, level=1)
  _eval(str(new / "eval_d1.json"), [0, 1, 0, 0], None, level=1)
  r = variant.compare(str(kept), str(new), level=0)
  assert r["L0"]["kept"] == 0.75 and r["L0"]["new"] == 1.0 and r["L0"]["diff"] == 0.25
  assert r["L0"]["p_value"] == 1.0  # one discordant question: exact McNemar 2 * 0.5
  assert r["L0 with routes"]["diff"] == 0.0 and r["L0 with routes"]["n"] == 4
  assert r["L1"]["diff"] == 0.0 and r["L1"]["ci_low"] == r["L1"]["ci_high"] == 0.0
  with open(new / "eval_d1.json") as f:
    moved = dict(json.load(f), questions_sha256="other")
  with open(new / "eval_d1.json", "w") as f:
    json.dump(moved, f)
  with pytest.raises(ValueError, match=r"new/eval_d1.json evaluated different questions"):
    variant.compare(str(kept), str(new), level=0)  # never paired across question sets
  md = variant.markdown({"seed": 0, "run": "sft", "name": "x", "overrides": ["a=1"], "command": "c",
                              "paired": r, "wall": {"kept": 600.0, "new": 300.0},
                              "curves": {k: {"best": 0.5, "best_step": 99, "last_step": 199,
                                             "late_gain": None} for k in ("kept", "new")}})
  assert "| L0 | 4 | 0.750 | 1.000 | +0.250" in md and "| new | 0.500 (100) |  | 200 | 5.0 min |" in md


def test_refuses_without_the_kept_start_or_with_another_schedules(tmp_path, capsys):
  out, runs = tmp_path / "out", tmp_path / "runs"
  argv = ["--out", str(out), "--runs", str(runs), "--name", "x", "sft.steps=5"]
  assert variant.main(argv, run_cli=lambda a: None) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and f"{out}/runs/seed0/sft/eval.json is missing" in err
  kept = out / "runs" / "seed0" / "sft"
  _eval(str(kept / "eval.json"), [1], [1])
  assert variant.main(argv, run_cli=lambda a: None) == 2  # no harder level: no run
  assert "seed0/sft/eval_d1.json is missing" in capsys.readouterr().err
  _eval(str(kept / "eval_d1.json"), [1], None, level=1)
  assert variant.main(argv, run_cli=lambda a: None) == 2  # no run_summary.json: no run
  assert "seed0/sft/run_summary.json is missing" in capsys.readouterr().err
  (kept / "run_summary.json").write_text(json.dumps({"overrides": ["sft.steps=1500"]}))
  os.makedirs(runs / "seed0" / "base")
  (runs / "seed0" / "base" / "DONE").write_text("")
  assert variant.main(argv, run_cli=lambda a: None) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "run_summary.json was made with ['sft.steps=1500']" in err


def test_a_tiny_schedule_trains_evaluates_and_pairs_with_the_kept_start(tmp_path):
  from realm_jax.cli import main as cli_main
  calls = []

  def run_cli(args):
    calls.append(args)
    cli_main.main(args)

  tiny = ["model.tiny.num_layers=1", "model.tiny.d_model=32", "model.tiny.num_heads=2",
          "model.tiny.num_kv_heads=1", "model.tiny.head_dim=16", "model.tiny.mlp_dim=64",
          "data.num_train=48", "data.num_valid=8", "data.num_eval=8", "eval.num_questions=8",
          "eval.max_new_tokens=12", "eval.batch_size=8", "base.steps=2", "base.num_items=16",
          "sft.num_items=32", "checkpoint_every=1000", "mesh=1,1,1"]
  out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  assert reproduce.main(["--out", out, "--runs", runs, "--seeds", "1", "--methods", "sft",
                         "--sft-steps", "3", *tiny], run_cli=run_cli) == 0
  calls.clear()
  argv = ["--out", out, "--runs", runs, "--sft-steps", "3", *(f"--extra={o}" for o in tiny),
          "--name", "longer", "sft.steps=5"]
  assert variant.main(argv, run_cli=run_cli) == 0
  assert [c[0] for c in calls] == ["train", "eval", "eval"] and calls[0][-1] == "sft.steps=5"
  wd = os.path.join(runs, "variants", "seed0", "sft", "longer")
  assert os.path.exists(os.path.join(wd, "DONE"))
  res = json.loads(open(os.path.join(out, "variants", "seed0_sft_longer.json")).read())
  fin = lambda p: next(v for k, v in json.load(open(p))["results"].items() if k.startswith("final"))
  kept = fin(os.path.join(out, "runs", "seed0", "sft", "eval.json"))["without routes"]["correct"]
  new = fin(os.path.join(wd, "eval.json"))["without routes"]["correct"]
  assert res["paired"]["L0"]["diff"] == pytest.approx((sum(new) - sum(kept)) / len(kept))
  assert res["curves"]["new"]["last_step"] == 4 and res["curves"]["kept"]["last_step"] == 2
  assert res["wall"]["new"] > 0 and res["overrides"][-1] == "sft.steps=5"
  assert (tmp_path / "out" / "variants" / "seed0_sft_longer.md").exists()


def test_a_tiny_level_1_rl_setting_pairs_with_the_kept_run_and_splits_the_new_rules(tmp_path):
  from realm_jax import configs
  from realm_jax.cli import main as cli_main
  from realm_jax.rl import corpus
  from tests.test_reproduce import TINY
  calls = []

  def run_cli(args):
    calls.append(args)
    cli_main.main(args)

  common = ["--sft-steps", "3", "--rl-steps", "2"]
  runs0, runs1, out1 = (str(tmp_path / d) for d in ("runs0", "runs1", "out1"))
  assert reproduce.main(["--out", str(tmp_path / "out0"), "--runs", runs0, "--seeds", "1",
                         "--methods", "sft", *common, *TINY], run_cli=run_cli) == 0
  assert reproduce.main(["--out", out1, "--runs", runs1, "--seeds", "1", "--level", "1",
                         "--starts", runs0, "--methods", "grpo", *common, *TINY],
                        run_cli=run_cli) == 0
  calls.clear()
  argv = ["--out", out1, "--runs", runs1, "--level", "1", "--run", "grpo", "--name", "hot",
          *common, *(f"--extra={o}" for o in TINY), "rl.temperature=2"]
  assert variant.main(argv, run_cli=run_cli) == 0
  assert [c[0] for c in calls] == ["train", "eval", "eval"] and calls[0][-1] == "rl.temperature=2"
  wd = os.path.join(runs1, "variants", "seed0", "grpo", "hot")
  cfg = json.loads(open(os.path.join(wd, "run.json")).read())["config"]
  assert cfg["rl"]["temperature"] == 2.0 and cfg["data"]["difficulty"] == 1
  assert f"init_from={os.path.join(runs1, 'seed0', 'sft')}" in calls[0]
  res = json.loads(open(os.path.join(out1, "variants", "seed0_grpo_hot.json")).read())
  assert list(res["paired"]) == ["L1", "L1, a new rule", "L1 with routes",
                                 "L1 with routes, a new rule", "L2"]
  # the new-rule questions, labelled independently: express or fragile parcels (R5, R6)
  data = configs.load_experiment("evidence_rl", [*TINY, "data.difficulty=1"])
  test = corpus.build_run_data(data.data).eval[:data.eval.num_questions]
  new = np.array([any(p["express"] or p["fragile"] for p in ex.meta["params"]["parcels"])
                  for ex in test])
  fin = lambda p: next(v for k, v in json.load(open(p))["results"].items() if k.startswith("final"))
  for label, setting in (("L1", "without routes"), ("L1 with routes", "with routes")):
    kept = np.asarray(fin(os.path.join(out1, "runs", "seed0", "grpo", "eval.json"))[setting]["correct"], bool)
    hot = np.asarray(fin(os.path.join(wd, "eval.json"))[setting]["correct"], bool)
    assert res["paired"][label]["n"] == len(test)
    r = res["paired"][f"{label}, a new rule"]
    assert r["n"] == new.sum() and r["kept"] == pytest.approx(kept[new].mean())
    assert r["diff"] == pytest.approx(hot[new].mean() - kept[new].mean())
  kept_evals = os.path.join(out1, "variants", "seed0", "grpo", "hot")
  assert sorted(os.listdir(kept_evals)) == ["eval.json", "eval_d2.json"]
  assert open(os.path.join(kept_evals, "eval.json")).read() == open(os.path.join(wd, "eval.json")).read()
  calls.clear()
  assert variant.main(argv, run_cli=run_cli) == 0  # trained: evaluated only
  assert [c[0] for c in calls] == ["eval", "eval"]
  calls.clear()
  assert variant.main(["--skip-kept", *argv], run_cli=run_cli) == 0  # kept: nothing runs
  assert calls == []
