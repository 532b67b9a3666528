"""The reproduction: who starts from what with which budget, the scheduler's order and
failures, and the report's paired numbers against hand-made eval files."""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from experiments import reproduce, reproduce_report, run_queue
from realm_jax import configs
from realm_jax.evaluation import paired

SCHED = reproduce.Schedule(sft_steps=300, rl_steps=40)


def _config(name, sched=SCHED):
  m = reproduce.METHODS[name]
  ov = [o for o in reproduce.commands(name, 2, "runs/r", sched)[0][4:] if "=" in o]
  return configs.load_experiment(m.experiment, ov)


def _flat(cfg, prefix=""):
  out = {}
  for f in dataclasses.fields(cfg):
    v = getattr(cfg, f.name)
    if dataclasses.is_dataclass(v):
      out.update(_flat(v, f"{prefix}{f.name}."))
    else:
      out[f"{prefix}{f.name}"] = v
  return out


def _changed(a, b):
  fa, fb = _flat(a), _flat(b)
  return {k for k in fa if fa[k] != fb[k]} - {"name", "init_from"}


def test_every_method_starts_from_its_seeds_shared_runs_with_one_rl_budget():
  cfgs = {n: _config(n) for n in reproduce.METHODS}
  assert all(c.seed == 2 for c in cfgs.values())
  assert cfgs["base"].init_from is None and cfgs["base"].sft.steps == 0 and cfgs["base"].base.steps > 0
  assert cfgs["sft"].init_from == "runs/r/seed2/base" and cfgs["sft"].base.steps == 0
  assert cfgs["sft"].sft.steps == 300 and cfgs["sft"].sft.num_items == 2000
  assert cfgs["realm_zero"].init_from == "runs/r/seed2/base"
  from_sft = set(reproduce.METHODS) - {"base", "sft", "realm_zero"}
  for n in from_sft:
    assert cfgs[n].init_from == "runs/r/seed2/sft", n
  rl = [n for n in reproduce.METHODS if cfgs[n].rl.steps > 0]
  assert sorted(rl) == sorted(from_sft - {"more_sft", "rft"} | {"realm_zero"})
  for n in rl:  # one sample budget: 40 steps x 16 prompts x 8 samples
    r = cfgs[n].rl
    assert (r.steps, r.batch_prompts, r.group_size) == (40, 16, 8), n
    assert cfgs[n].sft.steps == 0 and cfgs[n].base.steps == 0, n
  assert cfgs["more_sft"].sft.steps == 40 and cfgs["more_sft"].rl.steps == 0
  rft = cfgs["rft"].rft
  assert rft.rounds * rft.questions * rft.samples_per_question == 40 * 16 * 8
  assert rft.rounds * rft.steps_per_round == 40
  # every run of a seed reads the same data, so its test questions are the same
  assert len({cfgs[n].data for n in reproduce.METHODS}) == 1


def test_each_variant_differs_from_realm_r1_in_its_named_setting_only():
  r1 = _config("realm_r1")
  assert (r1.rl.routes, r1.rl.mrpv.contrast_coef, r1.rl.mrpv.w_ver, r1.rl.negatives) == (
      "eaai", 0.1, 0.5, True)
  assert _changed(_config("no_negatives"), r1) == {"rl.negatives"}
  assert _changed(_config("no_fading"), r1) == {"rl.routes"}
  assert _config("no_fading").rl.routes == "always"
  assert _changed(_config("no_verification"), r1) == {"rl.mrpv.w_ver"}
  assert _changed(_config("no_contrast"), r1) == {"rl.mrpv.contrast_coef"}
  assert _changed(_config("grpo"), r1) == {"rl.routes", "rl.mrpv.contrast_coef"}
  assert _config("grpo").rl.routes == "never"
  cot = _config("cot_synth")
  assert (cot.rl.routes, cot.rl.mrpv.w_ver, cot.rl.mrpv.contrast_coef) == ("always", 0.0, 0.0)
  assert _changed(_config("realm_zero"), r1) == set()  # same RL, another start


def test_eval_commands_cover_both_levels_and_resume_marker():
  train, ev0, ev1 = reproduce.commands("grpo", 0, "R", SCHED)
  assert train[:4] == ["train", "evidence_rl", "--workdir", os.path.join("R", "seed0", "grpo")]
  assert "eval.k=4" in ev0 and not any(a.startswith("eval.difficulty") for a in ev0)
  assert "eval.difficulty=1" in ev1 and "eval.k=1" in ev1
  # what the report does not read is not measured: pass@k with routes, the harder level with
  assert "eval.sample_routes=without" in ev0 and "eval.routes=without" not in ev0
  assert "eval.routes=without" in ev1
  assert reproduce.with_starts(["realm_r1", "realm_zero"]) == ["base", "sft", "realm_r1", "realm_zero"]


def test_scheduler_orders_by_start_bounds_jobs_and_fails_only_dependents():
  starts = {"base": None, "sft": "base", "a": "sft", "b": "sft", "c": "base", "d": "a"}
  lock, live, peak, order = threading.Lock(), [0], [0], []

  def work(t):
    with lock:
      live[0] += 1
      peak[0] = max(peak[0], live[0])
      order.append(t[1])
    time.sleep(0.05)
    with lock:
      live[0] -= 1
    if t[1] == "a":
      raise RuntimeError("boom")

  status = run_queue.schedule_runs([(0, n) for n in starts],
                                   lambda t: (0, starts[t[1]]) if starts[t[1]] else None, 2, work)
  assert peak[0] == 2
  for n, s in starts.items():
    if s is not None and n in order:
      assert order.index(s) < order.index(n)
  assert status[(0, "a")] == "RuntimeError: boom"
  assert status[(0, "d")] == "not run: a (seed 0) failed" and "d" not in order
  assert all(status[(0, n)] == "ok" for n in ("base", "sft", "b", "c"))


def _eval(path, correct, with_routes, digest="q", baselines=None, k=None):
  res = {"without routes": {"accuracy": float(np.mean(correct)), "correct": correct}}
  if with_routes is not None:  # the harder level is evaluated without routes only
    res["with routes"] = {"accuracy": float(np.mean(with_routes)), "correct": with_routes,
                          "verification_accuracy": 0.5}
  if k:
    res["without routes"].update(k)
  with open(path, "w") as f:
    json.dump({"results": {"final (rl)": res}, "questions_sha256": digest,
               "baselines": baselines or {"without routes": {"constant": 0.25}}}, f)


def _write_runs(out, data):
  for (seed, name), (l0, l1) in data.items():
    wd = reproduce.result_dir(str(out), seed, name)
    os.makedirs(wd)
    _eval(os.path.join(wd, "eval.json"), l0, l0, k={"pass@4": 0.5, "maj@4": 0.25})
    _eval(os.path.join(wd, "eval_d1.json"), l1, None, digest="q1")


def test_report_pairs_methods_question_by_question(tmp_path):
  # seed 0: grpo 2/4 right, r1 gains question 1 -> +0.25; seed 1: r1 loses question 0 -> -0.25
  _write_runs(tmp_path, {
      (0, "grpo"): ([1, 0, 1, 0], [0, 0, 0, 0]), (0, "realm_r1"): ([1, 1, 1, 0], [1, 1, 1, 1]),
      (1, "grpo"): ([1, 1, 0, 0], [0, 0, 0, 0]), (1, "realm_r1"): ([0, 1, 0, 0], [1, 1, 1, 1])})
  info = {"command": "c", "commit": "x", "started": "now"}
  r = reproduce_report.write(str(tmp_path), 2, ["grpo", "realm_r1"], SCHED, info)
  row = r["summary"]["realm_r1"]
  assert row["seeds"] == 2 and row["l0 without routes"] == pytest.approx((0.75 + 0.25) / 2)
  assert row["l0 - grpo"]["diff"] == pytest.approx(0.0)  # (+0.25 - 0.25) / 2
  # level 1: +1 on every question of both seeds: no spread at all
  assert (row["l1 - grpo"]["diff"], row["l1 - grpo"]["ci_low"], row["l1 - grpo"]["ci_high"]) == (1, 1, 1)
  assert row["pass@4"] == 0.5 and row["route verdicts"] == 0.5
  assert r["baselines"]["l0 without routes"] == {"constant": 0.25}
  md = (tmp_path / "table.md").read_text()
  assert "**+1.000 (+1.000 .. +1.000)**" in md and "baseline: constant" in md
  # and the other way round, against ReaLM-R1: grpo - r1 = 0 at level 0, -1 at level 1
  vs = r["against_realm_r1"]["grpo"]
  assert vs["l0 without routes"]["diff"] == pytest.approx(0.0)
  assert vs["l1 without routes"]["diff"] == -1 and vs["l0 with routes"]["diff"] == pytest.approx(0.0)
  assert "| grpo | " in md.split("against ReaLM-R1")[1]
  assert (tmp_path / "paired.png").stat().st_size > 0


def test_seeds_on_the_same_questions_share_the_question_resample():
  # two seeds, one method pair: +1 on question 0 and 0 elsewhere, on both seeds
  run = lambda digest, c: {"l0": {"questions": digest, "path": "p",
                                  "results": {"without routes": {"correct": c}}}}
  a = [run("q", [0, 0, 0, 0]), run("q", [0, 0, 0, 0])]
  b = [run("q", [1, 0, 0, 0]), run("q", [1, 0, 0, 0])]
  d = [[1.0, 0.0, 0.0, 0.0]] * 2
  got = reproduce_report.difference(a, b, "l0", "without routes")
  assert got == paired.bootstrap_over_seeds(d, shared_questions=True)
  # each seed on its own questions: independent resamples
  a2, b2 = [a[0], run("r", [0, 0, 0, 0])], [b[0], run("r", [1, 0, 0, 0])]
  assert reproduce_report.difference(a2, b2, "l0", "without routes") == paired.bootstrap_over_seeds(d)


def test_report_refuses_to_pair_different_questions(tmp_path):
  _write_runs(tmp_path, {(0, "grpo"): ([1, 0], [0, 0]), (0, "realm_r1"): ([1, 1], [1, 1])})
  _eval(os.path.join(reproduce.result_dir(str(tmp_path), 0, "realm_r1"), "eval.json"), [1, 1],
        [1, 1], digest="other")
  with pytest.raises(ValueError, match="realm_r1/eval.json.*different questions"):
    reproduce_report.write(str(tmp_path), 1, ["grpo", "realm_r1"], SCHED,
                           {"command": "c", "commit": "x", "started": "now"})


def test_routes_shown_counts_each_step_once(tmp_path):
  rows = [{"phase": "rl", "step": 0, "p_routes": 1.0, "num_routes": 2},
          {"phase": "rl", "step": 1, "p_routes": 0.5, "num_routes": 2},
          {"phase": "rl", "step": 1, "p_routes": 0.5, "num_routes": 2},  # resumed: once
          {"phase": "sft", "step": 3, "loss": 1.0}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  (tmp_path / "run.json").write_text(json.dumps({"config": {"rl": {"batch_prompts": 16}}}))
  assert reproduce_report.routes_shown(str(tmp_path)) == 16 * 2 + 8 * 2


# a reproduction in seconds: a one-layer model, a few questions, steps and tokens
TINY = ["model.tiny.num_layers=1", "model.tiny.d_model=32", "model.tiny.num_heads=2",
        "model.tiny.num_kv_heads=1", "model.tiny.head_dim=16", "model.tiny.mlp_dim=64",
        "data.num_train=48", "data.num_valid=8", "data.num_eval=8", "eval.num_questions=8",
        "eval.max_new_tokens=12", "eval.batch_size=8", "base.steps=2", "base.num_items=16",
        "sft.num_items=32", "rl.batch_prompts=2", "rl.group_size=2", "rl.max_new_tokens=12",
        "checkpoint_every=1000", "mesh=1,1,1"]


def test_a_tiny_reproduction_runs_resumes_and_reports(tmp_path, capsys):
  """The real CLI (in this process) on a tiny schedule: base -> sft -> grpo and more_sft;
  the report pairs them on the same questions; a rerun trains nothing."""
  from realm_jax.cli import main as cli_main
  calls = []

  def run_cli(args):
    calls.append(args[0])
    cli_main.main(args)

  tiny = TINY
  argv = ["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--seeds", "1",
          "--jobs", "1", "--methods", "grpo,more_sft", "--sft-steps", "3", "--rl-steps", "2", *tiny]
  assert reproduce.main(argv, run_cli=run_cli) == 0
  assert calls == ["train", "eval", "eval"] * 4  # base, sft, grpo, more_sft
  r = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(r["summary"]) == {"base", "sft", "grpo", "more_sft"}
  d = r["summary"]["more_sft"]["l0 - grpo"]
  grpo = json.loads((tmp_path / "runs" / "seed0" / "grpo" / "eval.json").read_text())
  more = json.loads((tmp_path / "runs" / "seed0" / "more_sft" / "eval.json").read_text())
  assert grpo["questions_sha256"] == more["questions_sha256"]
  fin = lambda e: next(v for k, v in e["results"].items() if k.startswith("final"))
  want = np.mean(np.subtract(fin(more)["without routes"]["correct"], fin(grpo)["without routes"]["correct"]))
  assert d["diff"] == pytest.approx(want) and d["questions"] == 8
  assert r["command"].startswith("python -m experiments.reproduce --out")
  assert set(r["seed_wall"]) == {"0"} and r["seed_wall"]["0"]["run_minutes"] > 0
  kept = tmp_path / "out" / "runs" / "seed0" / "grpo"
  assert json.loads((kept / "eval.json").read_text()) == grpo
  summary = json.loads((kept / "run_summary.json").read_text())
  curve = summary["validation"]
  assert [(row[0], row[1]) for row in curve] == [("rl", 0), ("rl", 1)]  # validated every step
  best = max(a for _, _, a in curve)
  assert r["convergence"]["grpo"]["0"]["best"] == best
  assert r["convergence"]["grpo"]["0"]["late_gain"] == curve[1][2] - curve[0][2]
  assert "| grpo | " + f"{best:.3f} at " in (tmp_path / "out" / "table.md").read_text()
  assert (tmp_path / "out" / "curves.png").stat().st_size > 0
  sched = reproduce.Schedule(sft_steps=3, rl_steps=2, extra=tuple(tiny))
  for name in ("base", "sft", "grpo", "more_sft"):  # kept and in the run directory alike
    rec = json.loads((tmp_path / "out" / "runs" / "seed0" / name / "run_summary.json").read_text())
    in_run = json.loads((tmp_path / "runs" / "seed0" / name / "reproduce.json").read_text())
    assert rec["overrides"] == in_run["overrides"] == sched.overrides(name), name
  assert "rl.steps=2" in summary["overrides"] and "model.tiny.d_model=32" in summary["overrides"]
  calls.clear()
  assert reproduce.main(argv, run_cli=run_cli) == 0 and calls == []  # all kept: nothing runs
  # A new machine (no run directories) missing one result: its starts are trained again and
  # must answer as the kept ones did; the kept grpo result is not touched.
  import shutil
  shutil.rmtree(tmp_path / "runs")
  shutil.rmtree(tmp_path / "out" / "runs" / "seed0" / "more_sft")
  assert reproduce.main(argv, run_cli=run_cli) == 0
  assert calls == ["train", "eval", "eval"] * 3  # base, sft, more_sft
  assert json.loads((kept / "eval.json").read_text()) == grpo


def test_concurrent_runs_get_disjoint_cpus_and_their_processes_are_pinned(monkeypatch, tmp_path):
  monkeypatch.setattr(run_queue.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
  assert run_queue.cpu_slots(2) == [{0, 2}, {1, 3}]
  assert run_queue.cpu_slots(1) == [] and run_queue.cpu_slots(5) == []
  monkeypatch.undo()
  seen = {}
  monkeypatch.setattr(reproduce, "commands", lambda *a: [["noop"]])
  monkeypatch.setattr(run_queue.subprocess, "run", lambda cmd, **kw: seen.update(kw))
  cpu = min(os.sched_getaffinity(0))
  reproduce.execute("grpo", 0, str(tmp_path), SCHED, "cache", cpus={cpu})
  monkeypatch.undo()
  # a process started as the runs are (preexec_fn before exec) runs on that CPU only (JAX
  # warns at the fork; the child only sets its affinity and execs)
  out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                       preexec_fn=seen["preexec_fn"], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == f"[{cpu}]"


def test_a_run_stopped_before_its_end_is_not_evaluated(tmp_path):
  # SIGTERM makes `train` save and exit 0 without DONE: the run's evals must not follow
  calls = []
  with pytest.raises(RuntimeError, match="training stopped before its last step"):
    reproduce.execute("grpo", 0, str(tmp_path), SCHED, "cache", run_cli=calls.append)
  assert [c[0] for c in calls] == ["train"]


def test_wall_time_sums_the_segments_of_a_resumed_run(tmp_path):
  # a segment stopped by an exception is recorded too; the gap between sessions is not counted
  wd = str(tmp_path)
  with pytest.raises(KeyboardInterrupt), reproduce_report.timed(wd):
    raise KeyboardInterrupt
  with open(os.path.join(wd, "wall.jsonl")) as f:
    (a, b, cpus, host), = [json.loads(line) for line in f]
  assert 0 <= b - a < 5 and cpus == len(os.sched_getaffinity(0))
  assert host == reproduce_report.host()
  # 10 min (an older record, CPUs not recorded), a 2 h gap, 25 min on 1 CPU of host A, then
  # 5 min on host B
  with open(os.path.join(wd, "wall.jsonl"), "w") as f:
    f.write('[1000.0, 1600.0]\n[8800.0, 10300.0, 1]\n[10300.0, 10600.0, 1, "B"]\n'
            '[10600.0, 10600.5, 1, "A"]\n')
  assert reproduce_report.wall_summary(wd) == {
      "wall_seconds": 2400.5, "started": "1970-01-01 00:16:40 UTC",
      "finished": "1970-01-01 02:56:40 UTC", "segments": 4, "cpus": [1], "hosts": ["A", "B"]}


def test_host_names_the_cpu_model_its_vector_extensions_and_jaxlib():
  """Checked against /proc/cpuinfo read independently (first processor) and jaxlib."""
  import jaxlib
  h = reproduce_report.host()
  assert h.endswith(f"] jaxlib {jaxlib.__version__}")
  if not os.path.exists("/proc/cpuinfo"):
    return
  lines = open("/proc/cpuinfo").read().split("\n\n")[0].splitlines()
  field = lambda k: next((ln.split(":", 1)[1].strip() for ln in lines
                          if ln.split(":")[0].strip() == k), "")
  assert h.startswith((field("model name") or platform.machine()) + " [")
  isa = h[h.index("[") + 1:h.index("]")].split()
  flags = field("flags").split()
  if any(f in flags for f in reproduce_report.ISA_FLAGS):
    assert isa == [f for f in reproduce_report.ISA_FLAGS if f in flags] and isa


def test_a_start_trained_again_that_answers_otherwise_names_both_cpu_counts(tmp_path):
  """XLA:CPU's numbers depend on the CPU count (its reductions split by thread) and on the
  machine's vector instructions, so the refusal says which counts and hosts the kept run and
  the new one ran on."""
  out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
  rd, wd = reproduce.result_dir(out, 0, "sft"), reproduce.run_dir(runs, 0, "sft")
  for d, correct in ((rd, [1, 0, 1]), (wd, [1, 1, 1])):
    os.makedirs(d)
    for f in reproduce.result_files(SCHED)[:2]:
      with open(os.path.join(d, f), "w") as fh:
        json.dump({"results": {"final (sft)": {"without routes": {"correct": correct}}}}, fh)
  with open(os.path.join(rd, "run_summary.json"), "w") as fh:
    json.dump({"cpus": [1, 2]}, fh)  # kept: one segment pinned to one CPU, another on two
  with open(os.path.join(wd, "wall.jsonl"), "w") as fh:
    fh.write("[0.0, 60.0, 2]\n")
  with pytest.raises(RuntimeError, match=r"answers differently.*kept run \[1, 2\], this one \[2\]"):
    reproduce.keep_results("sft", 0, runs, out, SCHED, "commit")
  with open(os.path.join(rd, "run_summary.json"), "w") as fh:
    json.dump({"cpus": [2]}, fh)  # the same count: not blamed
  with pytest.raises(RuntimeError, match=r"answers differently.*\(both ran on \[2\] CPUs\)$"):
    reproduce.keep_results("sft", 0, runs, out, SCHED, "commit")
  # The machine counts too (its vector instructions): named when the hosts differ or the
  # kept run's is unrecorded, not when they agree.
  with open(os.path.join(wd, "wall.jsonl"), "w") as fh:
    fh.write('[0.0, 60.0, 2, "EPYC [avx2 avx512f avx512_bf16] jaxlib 0.10.2"]\n')
  for kept_hosts, named in ((["Xeon [avx2] jaxlib 0.10.2"], "['Xeon [avx2] jaxlib 0.10.2']"),
                            (None, "unrecorded")):
    with open(os.path.join(rd, "run_summary.json"), "w") as fh:
      json.dump({"cpus": [2], "hosts": kept_hosts}, fh)
    with pytest.raises(RuntimeError) as e:
      reproduce.keep_results("sft", 0, runs, out, SCHED, "commit")
    assert str(e.value).endswith(
        f"(both ran on [2] CPUs; and on the machine's vector instructions: kept run on {named}, "
        "this one on ['EPYC [avx2 avx512f avx512_bf16] jaxlib 0.10.2']; run a seed's starts and "
        "the runs from them on one kind of machine)")
  with open(os.path.join(rd, "run_summary.json"), "w") as fh:
    json.dump({"cpus": [2], "hosts": ["EPYC [avx2 avx512f avx512_bf16] jaxlib 0.10.2"]}, fh)
  with pytest.raises(RuntimeError, match=r"\(both ran on \[2\] CPUs\)$"):
    reproduce.keep_results("sft", 0, runs, out, SCHED, "commit")


def test_results_kept_under_other_overrides_are_refused_naming_file_and_difference(tmp_path,
                                                                                   capsys):
  """A kept result or a run directory made under other overrides (here: fp32 where bf16
  matmuls are asked) would count as finished or serve as a start: refused before anything
  runs, in one line naming the file and what differs."""
  out, runs = tmp_path / "out", tmp_path / "runs"
  fp32, bf16 = reproduce.Schedule(), reproduce.Schedule(extra=("model.matmul_dtype=bfloat16",))
  kept = out / "runs" / "seed0" / "sft"
  kept.mkdir(parents=True)
  (kept / "run_summary.json").write_text(json.dumps({"overrides": fp32.overrides("sft")}))
  calls = []
  argv = ["--out", str(out), "--runs", str(runs), "--seeds", "1", "--methods", "grpo"]
  assert reproduce.main([*argv, "model.matmul_dtype=bfloat16"], run_cli=calls.append) == 2
  err = capsys.readouterr().err
  assert err == (f"reproduce: error: {kept / 'run_summary.json'}: made with nothing where this "
                 "reproduction has ['model.matmul_dtype=bfloat16']; give it its own --out and "
                 "--runs\n")
  assert calls == [] and not runs.exists()
  # The same overrides pass the check (here the run directories of base and sft are missing,
  # so they are queued to train again).
  assert reproduce.to_run(reproduce.with_starts(["grpo"]), 1, str(out), str(runs), fp32) == [
      (0, "base"), (0, "sft"), (0, "grpo")]
  reproduce.check_same_overrides(["base", "sft", "grpo"], 1, str(out), str(runs), fp32)
  # A run directory (a start, or a run to resume) from another schedule: refused alike.
  wd = runs / "seed0" / "base"
  wd.mkdir(parents=True)
  (wd / reproduce.OVERRIDES_FILE).write_text(json.dumps({"overrides": bf16.overrides("base")}))
  with pytest.raises(ValueError, match=r"seed0/base/reproduce.json: made with "
                                       r"\['model.matmul_dtype=bfloat16'\] where this "
                                       r"reproduction has nothing"):
    reproduce.check_same_overrides(["base", "sft", "grpo"], 1, str(out), str(runs), fp32)
  # Kept results from before overrides were recorded are not second-guessed.
  (wd / reproduce.OVERRIDES_FILE).unlink()
  (kept / "run_summary.json").write_text(json.dumps({"cpus": [2]}))
  reproduce.check_same_overrides(["base", "sft", "grpo"], 1, str(out), str(runs), bf16)


def test_overrides_in_another_order_are_refused_naming_both_orders(tmp_path):
  """Of two settings of one key the last wins (ReaLM-R1's rl.routes=eaai, then no_fading's
  rl.routes=always), so the same overrides in another order are another run: refused, with
  both orders named, not as "made with nothing where this reproduction has nothing"."""
  sched = reproduce.Schedule()
  want = sched.overrides("no_fading")
  assert want.index("rl.routes=eaai") < want.index("rl.routes=always")
  swapped = [o for o in want if o != "rl.routes=eaai"] + ["rl.routes=eaai"]  # eaai wins
  wd = tmp_path / "runs" / "seed0" / "no_fading"
  wd.mkdir(parents=True)
  (wd / reproduce.OVERRIDES_FILE).write_text(json.dumps({"overrides": swapped}))
  with pytest.raises(ValueError) as e:
    reproduce.check_same_overrides(["no_fading"], 1, str(tmp_path / "out"),
                                   str(tmp_path / "runs"), sched)
  assert str(e.value) == (f"{wd / reproduce.OVERRIDES_FILE}: made with them in the order "
                          f"{swapped} where this reproduction has {want}; give it its own "
                          "--out and --runs")
  # A repeated override counts: one more copy is named as made with, nothing missing.
  (wd / reproduce.OVERRIDES_FILE).write_text(json.dumps({"overrides": [*want, want[0]]}))
  with pytest.raises(ValueError, match=rf"made with \['{want[0]}'\] where this reproduction "
                                       r"has nothing;"):
    reproduce.check_same_overrides(["no_fading"], 1, str(tmp_path / "out"),
                                   str(tmp_path / "runs"), sched)


def _make_reproduce(*variables):
  """The `experiments.reproduce` arguments `make -n reproduce VARIABLES` would run."""
  root = os.path.dirname(os.path.dirname(__file__))
  made = subprocess.run(["make", "-n", "reproduce", *variables], cwd=root, capture_output=True,
                        text=True)
  lines = [ln for ln in made.stdout.splitlines() if "-m experiments.reproduce" in ln]
  return made, (lines[0].split("-m experiments.reproduce")[1].split() if lines else None)


def test_make_reproduce_runs_each_precision_into_its_own_committed_results():
  """`make reproduce` (bf16 matmuls by default; REPRO_DTYPE=float32 the other) points each
  precision at its own committed results, whose summaries record exactly the overrides that
  command passes; the other precision's overrides are refused there; an unknown REPRO_DTYPE
  stops make in one line naming it."""
  root = os.path.dirname(os.path.dirname(__file__))
  names = list(reproduce.METHODS)
  dirs = {}
  for variables in [(), ("REPRO_DTYPE=bfloat16",), ("REPRO_DTYPE=float32",)]:
    made, args = _make_reproduce(*variables)
    assert made.returncode == 0, made.stderr
    out = os.path.join(root, args[args.index("--out") + 1])
    extra = tuple(a for a in args if "=" in a)
    assert args[args.index("--runs") + 1] == "runs/" + os.path.basename(out)
    dirs[variables[0] if variables else "default"] = out
    parser = argparse.ArgumentParser()
    reproduce.add_schedule_args(parser)
    sched = reproduce.schedule_from(parser.parse_known_args(args)[0], extra)
    reproduce.check_same_overrides(names, 3, out, "/nonexistent", sched)
    # the start's schedule is checked too: the bf16 results' seed 0 start has its summary
    assert os.path.exists(os.path.join(out, "runs", "seed0", "sft", "run_summary.json"))
    with pytest.raises(ValueError, match="seed0/sft/run_summary.json: made with"):
      reproduce.check_same_overrides(names, 3, out, "/nonexistent",
                                     dataclasses.replace(sched, sft_steps=sched.sft_steps + 1))
    with pytest.raises(ValueError, match="seed0/sft/run_summary.json: made with"):
      reproduce.check_same_overrides(names, 3, out, "/nonexistent",
                                     dataclasses.replace(sched, sft_grouped=not sched.sft_grouped))
    other = () if extra else ("model.matmul_dtype=bfloat16",)
    with pytest.raises(ValueError, match="seed0/base/run_summary.json: made with"):
      reproduce.check_same_overrides(names, 3, out, "/nonexistent",
                                     dataclasses.replace(sched, extra=other))
  assert dirs["default"] == dirs["REPRO_DTYPE=bfloat16"] != dirs["REPRO_DTYPE=float32"]
  assert dirs["REPRO_DTYPE=float32"].endswith(os.path.join("experiments", "results", "reproduce"))
  made, args = _make_reproduce("REPRO_DTYPE=bf16")
  assert made.returncode == 2 and args is None
  assert len(made.stderr.splitlines()) == 1
  assert made.stderr.rstrip().endswith("*** REPRO_DTYPE=bf16: use bfloat16 or float32.  Stop.")
