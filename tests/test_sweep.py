"""Sweeps: grid expansion, names, skip-finished, gathered CSV / table / plot (fake runner)."""

import csv
import sys
from pathlib import Path

import matplotlib.image
import pytest

from realm_jax import configs
from realm_jax.cli import sweep as sw, sweep_results

SWEEP_FILE = Path(__file__).resolve().parents[1] / "experiments" / "sweeps" / "tiny_lr.py"

# Stands in for `realm-jax train` + `eval`: an sft phase, then 3 rl steps with
# loss = lr * step and a sparse last line; eval accuracy = 1 - 100 * lr. Exits 1
# when lr == 0.5. Appends the run name to a call log.
FAKE_TRAIN = """
import json, pathlib, sys
workdir, lr, calls = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
open(calls, "a").write(workdir.name + "\\n")
if lr == 0.5:
    sys.exit(1)
workdir.mkdir(parents=True, exist_ok=True)
lines = [{"phase": "sft", "step": 7, "loss": 9.0, "sft_only": 1.0}]
lines += [{"phase": "rl", "step": s, "loss": lr * s, "reward": {"mean": s / 10}} for s in (1, 2, 3)]
lines += [{"phase": "rl", "step": 3, "ckpt_seconds": 0.5}]
with open(workdir / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(line) + "\\n" for line in lines)
results = {"final (rl)": {"without routes": {"accuracy": 1 - 100 * lr, "n": 50}}}
(workdir / "eval.json").write_text(json.dumps({"experiment": "demo", "results": results}))
"""


def fake_runner(calls: Path):
  def command_fn(experiment, run):
    assert experiment == "demo"
    return [[sys.executable, "-c", FAKE_TRAIN, str(run.workdir), str(run.overrides["optim.lr"]),
             str(calls)]]
  return command_fn


def test_expand_is_a_cartesian_product_in_order():
  assert sw.expand({"a": [1, 2], "b": ["x", "y"]}) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  assert sw.expand({}) == [{}]
  assert len(sw.expand({"a": [1, 2, 3], "b": [0, 1], "c": [True]})) == 6


def test_run_names_use_varying_keys_only():
  s = sw.Sweep("demo", grid={"optim.lr": [1e-4, 3e-3]}, base={"train.steps": 5})
  assert sw.run_names(s.overrides()) == ["lr=0.0001", "lr=0.003"]
  assert s.overrides()[0] == {"train.steps": 5, "optim.lr": 1e-4}
  clash = [{"a.lr": 1, "b.lr": 2}, {"a.lr": 1, "b.lr": 3}, {"a.lr": 4, "b.lr": 3}]
  assert sw.run_names(clash) == ["a.lr=1_b.lr=2", "a.lr=1_b.lr=3", "a.lr=4_b.lr=3"]
  assert sw.run_names([{"x": "a/b c"}, {"x": "d"}]) == ["x=a-b-c", "x=d"]
  assert sw.run_names([{}]) == ["run"]
  with pytest.raises(ValueError, match="identical overrides"):
    sw.run_names([{"a": 1}, {"a": 1}, {"a": 2}])


def test_explicit_runs_and_validation():
  s = sw.Sweep("demo", runs=[{"eaai.shape": "linear"}, {"eaai.shape": "cosine", "seed": 1}])
  assert sw.run_names(s.overrides()) == ["shape=linear", "shape=cosine_seed=1"]
  assert sw.override_args({"a.b": "cosine", "c": 1e-4, "d": True}) == ["a.b=cosine", "c=0.0001", "d=True"]
  with pytest.raises(ValueError, match="not both"):
    sw.Sweep("demo", grid={"a": [1]}, runs=[{"a": 2}])
  with pytest.raises(ValueError, match=r"grid\['a'\] must be a non-empty list"):
    sw.Sweep("demo", grid={"a": "123"})
  with pytest.raises(ValueError, match="not a dotted config path"):
    sw.Sweep("demo", base={"bad key": 1})
  with pytest.raises(ValueError, match="experiment is empty"):
    sw.Sweep("")


def test_load_the_example_sweep_file(tmp_path):
  s = sw.load_sweep(SWEEP_FILE)
  assert s.experiment == "demo" and len(s.overrides()) == 6
  # Every run's command-line overrides are accepted by the real experiment config.
  for o in s.overrides():
    cfg = configs.load_experiment(s.experiment, sw.override_args(o))
    assert (cfg.rl.lr, cfg.seed) == (o["rl.lr"], o["seed"])
  bad = tmp_path / "bad.py"
  bad.write_text("X = 1\n")
  with pytest.raises(AttributeError, match="defines no get_sweep"):
    sw.load_sweep(bad)


def _read_csv(path):
  with open(path) as f:
    return {r["run"]: r for r in csv.DictReader(f)}


def test_sweep_runs_skips_finished_and_gathers(tmp_path):
  calls = tmp_path / "calls.txt"
  s = sw.Sweep("demo", grid={"optim.lr": [0.001, 0.002, 0.5]}, base={"train.steps": 3})
  out = tmp_path / "out"
  status, rows = sw.run_sweep(s, out, fake_runner(calls), parallel=2)
  assert status == {"lr=0.001": "done", "lr=0.002": "done", "lr=0.5": "failed"}
  assert sorted(calls.read_text().split()) == ["lr=0.001", "lr=0.002", "lr=0.5"]
  assert (out / "lr=0.001" / sw.DONE).exists() and not (out / "lr=0.5" / sw.DONE).exists()
  assert "exit code 1" in (out / "lr=0.5" / "sweep.log").read_text()

  table = _read_csv(out / "results.csv")
  assert set(table) == {"lr=0.001", "lr=0.002", "lr=0.5"}
  acc = "eval/final (rl)/without routes/accuracy"
  ok = table["lr=0.002"]
  assert ok["status"] == "done" and ok["optim.lr"] == "0.002" and ok["train.steps"] == "3"
  assert ok["phase"] == "rl" and int(ok["step"]) == 3        # the last phase's final values
  assert float(ok["loss"]) == pytest.approx(0.006)           # lr * 3, not the sft loss
  assert float(ok["reward/mean"]) == pytest.approx(0.3)      # nested keys flattened
  assert float(ok["ckpt_seconds"]) == 0.5 and "sft_only" not in ok
  assert float(ok[acc]) == pytest.approx(0.8)                # 1 - 100 * lr
  assert "eval/experiment" not in ok                         # only numeric eval leaves
  assert table["lr=0.5"]["status"] == "failed" and table["lr=0.5"][acc] == ""

  md = (out / "results.md").read_text().splitlines()
  assert md[0] == f"| run | status | train.steps | optim.lr | {acc} | eval/final (rl)/without routes/n |"
  assert md[2] == "| lr=0.001 | done | 3 | 0.001 | 0.9 | 50 |"
  assert md[4] == "| lr=0.5 | failed | 3 | 0.5 |  |  |"
  img = matplotlib.image.imread(out / "results.png")
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100

  # Second pass: finished runs are skipped, only the failed one runs again.
  status, _ = sw.run_sweep(s, out, fake_runner(calls))
  assert status == {"lr=0.001": "skipped", "lr=0.002": "skipped", "lr=0.5": "failed"}
  assert calls.read_text().split().count("lr=0.001") == 1
  assert calls.read_text().split().count("lr=0.5") == 2
  # A removed marker makes that run go again; the training loop's own DONE does not count.
  (out / "lr=0.002" / "DONE").write_text("done\n")
  (out / "lr=0.002" / sw.DONE).unlink()
  status, _ = sw.run_sweep(sw.Sweep("demo", grid={"optim.lr": [0.001, 0.002]}), out,
                           fake_runner(calls))
  assert status == {"lr=0.001": "skipped", "lr=0.002": "done"}


def test_pick_metric():
  rows = [{"run": "a", "step": 3, "loss": 0.1, "eval/acc": 0.5}, {"run": "b", "loss": 0.2}]
  assert sweep_results.pick_metric(rows) == "eval/acc"
  staged = [{"eval/start/n": 5, "eval/start/accuracy": 0.1, "eval/final/n": 5,
             "eval/final/accuracy": 0.3, "eval/final/with routes/accuracy": 0.4}]
  assert sweep_results.pick_metric(staged) == "eval/final/accuracy"
  assert sweep_results.pick_metric([{"run": "a", "step": 1, "loss": 0.1}]) == "loss"
  assert sweep_results.pick_metric(rows, "loss") == "loss"
  with pytest.raises(KeyError, match="not a result column"):
    sweep_results.pick_metric(rows, "reward")


def test_main_dry_run_prints_commands_and_runs_nothing(tmp_path, capsys):
  out = tmp_path / "sweep_out"
  assert sw.main([str(SWEEP_FILE), "--out", str(out), "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 12 and not out.exists()  # train + eval per run
  assert lines[0].endswith(f"train demo --workdir {out}/lr=0.0001_seed=0 rl.lr=0.0001 seed=0")
  assert lines[1].endswith(f"eval --workdir {out}/lr=0.0001_seed=0")
  assert lines[10].endswith(f"train demo --workdir {out}/lr=0.001_seed=1 rl.lr=0.001 seed=1")


def test_tpu_commands_train_then_fetch(tmp_path):
  fn = sw.tpu_commands("pod", "us-central2-b", None, "gs://bkt/sweeps/tiny")
  run = sw.Run("lr=0.001", {"optim.lr": 0.001}, tmp_path / "lr=0.001")
  train, fetch = fn("demo", run)
  scope = ["--name", "pod", "--zone", "us-central2-b"]
  assert train[1:] == [str(sw.LAUNCH), "run", *scope, "--eval", "demo", "--workdir",
                       "gs://bkt/sweeps/tiny/lr=0.001", "optim.lr=0.001"]
  assert fetch[1:] == [str(sw.LAUNCH), "fetch", *scope, "--workdir",
                       "gs://bkt/sweeps/tiny/lr=0.001", "--dest", str(run.workdir)]
  with pytest.raises(SystemExit):
    sw.main([str(SWEEP_FILE), "--tpu", "pod", "--zone", "z", "--parallel", "2"])


def test_every_committed_sweep_loads_and_names_its_runs_uniquely():
  import glob
  files = sorted(glob.glob(str(Path(__file__).resolve().parents[1] / "experiments/sweeps/*.py")))
  assert files
  for path in files:
    sweep = sw.load_sweep(path)
    names = sw.run_names(sweep.overrides())
    assert len(set(names)) == len(names)
    for overrides in sweep.overrides():  # every run's overrides are valid keys and values
      assert configs.load_experiment(sweep.experiment, sw.override_args(overrides))
