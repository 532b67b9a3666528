"""experiments.group_signal: the reproduction's train call again, and the step means by hand."""

import json
import os
import subprocess

import pytest

from experiments import group_signal, reproduce


def write_rows(workdir, rows):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def step(s, p_routes, zero, ans_v, ans_o, ver_v, ver_o, fmt_o, r_ver=0.0, **extra):
  return {"phase": "rl", "step": s, "p_routes": p_routes, "zero_variance_share": zero,
          "reward/verification": r_ver,
          "signal/answer_varies": ans_v, "signal/answer_only": ans_o,
          "signal/verification_varies": ver_v, "signal/verification_only": ver_o,
          "signal/format_varies": 0.0, "signal/format_only": fmt_o, **extra}


def test_train_args_are_the_reproductions_train_call_writing_elsewhere():
  sched = reproduce.Schedule(extra=("model.matmul_dtype=bfloat16",))
  want = reproduce.commands("realm_r1", 2, "R", sched)[0]
  got = group_signal.train_args("realm_r1", 2, "R", "S", sched)
  i = want.index("--workdir")
  assert want[i + 1] == os.path.join("R", "seed2", "realm_r1")
  assert got[i + 1] == os.path.join("S", "seed2", "realm_r1")
  assert got[:i + 1] + got[i + 2:] == want[:i + 1] + want[i + 2:]
  assert f"init_from={os.path.join('R', 'seed2', 'sft')}" in got  # the kept SFT start


def test_summarise_means_over_the_rl_steps(tmp_path):
  wd = str(tmp_path / "run")
  write_rows(wd, [
      {"phase": "rl", "step": 0, "valid_accuracy": 0.5},  # a validation row, no step metrics
      step(0, 1.0, 0.5, 0.25, 0.25, 0.0, 0.0, 0.0, r_ver=0.5, entropy=0.5, truncated=0.0,
           prompts_too_long=2),
      step(1, 0.75, 0.75, 0.0, 0.0, 0.75, 0.75, 0.0, r_ver=0.75, entropy=9.0, truncated=1.0,
           prompts_too_long=7),  # stopped, then resumed:
      step(1, 0.5, 0.25, 0.5, 0.25, 0.25, 0.125, 0.125, r_ver=0.25, entropy=0.25,
           truncated=0.5, prompts_too_long=1),  # the later row, once
      step(2, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, entropy=0.0, truncated=0.25,
           prompts_too_long=0),
      {"phase": "sft", "step": 5, "p_routes": 1.0}])
  r = group_signal.summarise(wd)
  assert r["steps"] == 3
  assert r["p_routes"] == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
  assert r["groups_with_signal"] == pytest.approx(1 - (0.5 + 0.25 + 1.0) / 3)
  assert r["signal/answer_varies"] == pytest.approx(0.25)  # (0.25 + 0.5 + 0) / 3
  assert r["signal/verification_only"] == pytest.approx(0.125 / 3)
  # 0.25 of all groups vary, of 1.5 groups' worth with routes: 1/6
  assert r["verification_varies_given_routes"] == pytest.approx(0.25 / 1.5)
  # mean r_ver over the completions with routes: (0.5 * 16 + 0.25 * 16) / (16 + 8) of B = 16
  assert r["verification_reward_given_routes"] == pytest.approx(0.5)
  assert r["entropy"] == pytest.approx(0.25) and r["truncated"] == pytest.approx(0.25)
  assert r["prompts_cut"] == 3  # 2 + 1 + 0 prompts cut to the longest bucket


def test_summarise_leaves_verification_given_routes_undefined_without_routes(tmp_path):
  wd = str(tmp_path / "grpo")
  write_rows(wd, [step(0, 0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0)])
  r = group_signal.summarise(wd)
  assert r["verification_varies_given_routes"] is None and r["p_routes"] == 0.0
  assert r["verification_reward_given_routes"] is None
  assert "| grpo | None | 1 | 0.000 | 0.500 | 0.500 | 0.500 |  | 0.000 |  | 0.000 |  |  | 0 |" in \
      group_signal.table({"grpo": dict(r, same_as_kept=None)})


def test_summarise_refuses_runs_without_the_signal_metrics(tmp_path):
  wd = str(tmp_path / "old")
  write_rows(wd, [{"phase": "rl", "step": 0, "p_routes": 1.0, "zero_variance_share": 0.5}])
  with pytest.raises(ValueError, match=r"old/metrics.jsonl: no signal/\* metrics"):
    group_signal.summarise(wd)
  write_rows(wd, [{"phase": "sft", "step": 0, "loss": 1.0}])
  with pytest.raises(ValueError, match="no RL step rows"):
    group_signal.summarise(wd)


def test_same_as_kept_compares_validation_curves(tmp_path):
  wd, kept = str(tmp_path / "run"), str(tmp_path / "run_summary.json")
  write_rows(wd, [{"phase": "rl", "step": 5, "valid_accuracy": 0.75},
                  {"phase": "rl", "step": 11, "valid_accuracy": 0.5}])
  assert group_signal.same_as_kept(wd, kept) is None
  with open(kept, "w") as f:
    json.dump({"validation": [["rl", 5, 0.75], ["rl", 11, 0.5]]}, f)
  assert group_signal.same_as_kept(wd, kept) is True
  with open(kept, "w") as f:
    json.dump({"validation": [["rl", 5, 0.75], ["rl", 11, 0.25]]}, f)
  assert group_signal.same_as_kept(wd, kept) is False


def test_main_trains_each_method_and_writes_the_table(tmp_path, capsys):
  runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
  for start in ("base", "sft"):
    os.makedirs(os.path.join(runs, "seed1", start))
    open(os.path.join(runs, "seed1", start, "DONE"), "w").close()
  kept = os.path.join(out, "runs", "seed1", "realm_r1")
  os.makedirs(kept)
  made = reproduce.Schedule(extra=("model.matmul_dtype=bfloat16",)).overrides("realm_r1")
  with open(os.path.join(kept, "run_summary.json"), "w") as f:
    json.dump({"validation": [["rl", 5, 0.75]], "overrides": made}, f)
  calls = []

  def fake_cli(args):
    calls.append(args)
    wd = args[args.index("--workdir") + 1]
    write_rows(wd, [{"phase": "rl", "step": 5, "valid_accuracy": 0.75},
                    step(0, 1.0, 0.5, 0.5, 0.25, 0.75, 0.25, 0.0, r_ver=0.625, entropy=0.125,
                         truncated=0.25, prompts_too_long=3)])
    open(os.path.join(wd, "DONE"), "w").close()

  argv = ["--runs", runs, "--kept", out, "--out", out, "--signal-runs", str(tmp_path / "s"),
          "--seed", "1", "model.matmul_dtype=bfloat16"]
  assert group_signal.main(argv, run_cli=fake_cli) == 0
  assert [c[1] for c in calls] == ["evidence_rl", "evidence_rl"]
  assert all("model.matmul_dtype=bfloat16" in c and "seed=1" in c for c in calls)
  assert not os.path.exists(os.path.join(out, "group_signal.json"))  # seed 0's name
  with open(os.path.join(out, "group_signal_seed1.json")) as f:
    saved = json.load(f)
  r1, nv = saved["results"]["realm_r1"], saved["results"]["no_verification"]
  assert r1["same_as_kept"] is True and nv["same_as_kept"] is None
  assert r1["verification_varies_given_routes"] == 0.75
  md = open(os.path.join(out, "group_signal_seed1.md")).read()
  assert ("| realm_r1 | True | 1 | 1.000 | 0.500 | 0.500 | 0.250 | 0.750 | 0.250 | 0.625 | "
          "0.000 | 0.125 | 0.250 | 3 |") in md
  # --no-train tabulates the runs already there, training nothing
  os.remove(os.path.join(out, "group_signal_seed1.md"))
  n = len(calls)
  assert group_signal.main([*argv, "--no-train"], run_cli=fake_cli) == 0 and len(calls) == n
  assert "| realm_r1 | True | 1 | 1.000 |" in open(os.path.join(out, "group_signal_seed1.md")).read()
  # fp32 against the kept bf16 run: refused before any training, naming the kept file
  calls.clear()
  with pytest.raises(SystemExit):
    group_signal.main(argv[:-1], run_cli=fake_cli)
  err = capsys.readouterr().err
  assert f"{kept}/run_summary.json: made with {made}, this run would use" in err and not calls
  # a run stopped before its last step (no DONE) is not summarised
  with pytest.raises(RuntimeError, match="training stopped before its last step"):
    group_signal.main([*argv, "--methods", "realm_zero"], run_cli=lambda a: None)


def test_main_refuses_non_rl_methods_and_a_missing_start(tmp_path, capsys):
  with pytest.raises(SystemExit):
    group_signal.main(["--methods", "realm_r1,sft,rft", "--runs", str(tmp_path)])
  assert "--methods: sft, rft: choose among the RL methods" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    group_signal.main(["--runs", str(tmp_path)])
  assert f"{tmp_path}/seed0/sft holds no finished start (no DONE)" in capsys.readouterr().err


def test_make_group_signal_reads_the_reproduction_of_the_same_precision():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for variables, out, runs, extra in [
      ((), "experiments/results/reproduce_bf16", "runs/reproduce_bf16",
       ["model.matmul_dtype=bfloat16"]),
      (("REPRO_DTYPE=float32",), "experiments/results/reproduce", "runs/reproduce",
       ["--sft-steps", "1500", "--sft-ungrouped"])]:
    made = subprocess.run(["make", "-n", "group-signal", *variables], cwd=root,
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in made.stdout.splitlines() if "-m experiments.group_signal" in ln)
    args = line.split("-m experiments.group_signal")[1].split()
    assert args == ["--out", out, "--runs", runs, *extra]
