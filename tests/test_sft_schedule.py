"""Another SFT schedule for a seed's start, paired with the reproduction's kept one: the calls
it makes, the paired numbers against hand-made eval files, its refusals, and a tiny run."""

import json
import os

import pytest

from experiments import reproduce, sft_schedule


def _eval(path, correct_l0, correct_routes, level=0):
  res = {"without routes": {"n": len(correct_l0), "correct": correct_l0}}
  if correct_routes is not None:
    res["with routes"] = {"n": len(correct_routes), "correct": correct_routes}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"difficulty": level, "questions_sha256": "q", "results": {"final (sft)": res}}, f)


def test_calls_are_the_reproductions_sft_run_in_its_own_workdir_with_overrides_last():
  sched = reproduce.Schedule(sft_steps=3000, extra=("model.matmul_dtype=bfloat16",))
  wd, calls = sft_schedule.commands(1, "steps4500", "runs/r", sched, ["sft.steps=4500"])
  assert wd == os.path.join("runs/r", "sft_schedule", "seed1", "steps4500")
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
  r = sft_schedule.compare(str(kept), str(new), harder_level=1)
  assert r["L0"]["kept"] == 0.75 and r["L0"]["new"] == 1.0 and r["L0"]["diff"] == 0.25
  assert r["L0"]["p_value"] == 1.0  # one discordant question: exact McNemar 2 * 0.5
  assert r["L0 with routes"]["diff"] == 0.0 and r["L0 with routes"]["n"] == 4
  assert r["L1"]["diff"] == 0.0 and r["L1"]["ci_low"] == r["L1"]["ci_high"] == 0.0
  md = sft_schedule.markdown({"seed": 0, "name": "x", "overrides": ["a=1"], "command": "c",
                              "paired": r, "wall": {"kept": 600.0, "new": 300.0},
                              "curves": {k: {"best": 0.5, "best_step": 99, "last_step": 199,
                                             "late_gain": None} for k in ("kept", "new")}})
  assert "| L0 | 0.750 | 1.000 | +0.250" in md and "| new | 0.500 (100) |  | 200 | 5.0 min |" in md


def test_refuses_without_the_kept_start_or_with_another_schedules(tmp_path, capsys):
  out, runs = tmp_path / "out", tmp_path / "runs"
  argv = ["--out", str(out), "--runs", str(runs), "--name", "x", "sft.steps=5"]
  assert sft_schedule.main(argv, run_cli=lambda a: None) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and f"{out}/runs/seed0/sft/eval.json is missing" in err
  kept = out / "runs" / "seed0" / "sft"
  _eval(str(kept / "eval.json"), [1], [1])
  assert sft_schedule.main(argv, run_cli=lambda a: None) == 2  # no run_summary.json: no run
  assert "seed0/sft/run_summary.json is missing" in capsys.readouterr().err
  (kept / "run_summary.json").write_text(json.dumps({"overrides": ["sft.steps=1500"]}))
  os.makedirs(runs / "seed0" / "base")
  (runs / "seed0" / "base" / "DONE").write_text("")
  assert sft_schedule.main(argv, run_cli=lambda a: None) == 2
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
  assert sft_schedule.main(argv, run_cli=run_cli) == 0
  assert [c[0] for c in calls] == ["train", "eval", "eval"] and calls[0][-1] == "sft.steps=5"
  wd = os.path.join(runs, "sft_schedule", "seed0", "longer")
  assert os.path.exists(os.path.join(wd, "DONE"))
  res = json.loads(open(os.path.join(out, "sft_schedule", "seed0_longer.json")).read())
  fin = lambda p: next(v for k, v in json.load(open(p))["results"].items() if k.startswith("final"))
  kept = fin(os.path.join(out, "runs", "seed0", "sft", "eval.json"))["without routes"]["correct"]
  new = fin(os.path.join(wd, "eval.json"))["without routes"]["correct"]
  assert res["paired"]["L0"]["diff"] == pytest.approx((sum(new) - sum(kept)) / len(kept))
  assert res["curves"]["new"]["last_step"] == 4 and res["curves"]["kept"]["last_step"] == 2
  assert res["wall"]["new"] > 0 and res["overrides"][-1] == "sft.steps=5"
  assert (tmp_path / "out" / "sft_schedule" / "seed0_longer.md").exists()
