"""The command line: each subcommand reaches its function and reports bad input clearly."""

import importlib
import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from realm_jax.cli import main as cli


def _run(*args, **kw):
  return subprocess.run([sys.executable, "-m", "realm_jax", *args], capture_output=True, text=True,
                        timeout=300, **kw)


def test_data_stats_prints_route_pool_table(capsys):
  cli.main(["data", "stats", "domain:tax", "--n", "40"])
  rows = {line[:42].strip(): line[42:].strip() for line in capsys.readouterr().out.splitlines()}
  # 40 items, each with its gold route and --negatives' default of 3 wrong ones
  assert rows["items"] == "40" and rows["routes"] == "160"
  assert rows["positive routes"] == "40 (25.0%)" and rows["negative routes"] == "120 (75.0%)"
  shares = [float(v[:-1]) for k, v in rows.items() if k.startswith("negatives: ")]
  assert len(shares) > 1 and sum(shares) == pytest.approx(100.0, abs=0.3)  # rounded to 0.1%


def test_data_stats_token_lengths_with_a_tokenizer(tmp_path, capsys):
  from realm_jax.model import tokenizer
  texts = [f"Parcel {i} kg to zone B costs {3 * i} dollars." for i in range(200)]
  tokenizer.train_sentencepiece(texts, 300, out_path=str(tmp_path / "t.model"), model_type="bpe",
                                hard_vocab_limit=False)
  cli.main(["data", "stats", "domain:tariff", "--n", "20", "--tokenizer", str(tmp_path / "t.model")])
  out = capsys.readouterr().out
  assert "route tokens min/median/max" in out
  from realm_jax.cli import datastats
  tok = tokenizer.load_tokenizer(str(tmp_path / "t.model"))
  lens = [len(tok.encode(ex.question)) for ex in datastats.examples_with_routes("domain:tariff", 20, 0, 0)]
  row = next(l for l in out.splitlines() if l.startswith("question tokens min/median/max"))
  assert row.split()[-1] == f"{min(lens)}/{int(np.median(lens))}/{max(lens)}"


def test_data_routes_writes_a_pool_that_reads_back(tmp_path, capsys):
  out_file = tmp_path / "pool.jsonl"
  cli.main(["data", "routes", "domain:dosing", "--out", str(out_file), "--n", "12", "--negatives", "2"])
  from realm_jax.data import teachers
  pool = teachers.read_route_pool(out_file)
  assert len(pool) == 12 and all(len(ex.routes) == 3 for ex in pool)
  assert all(sum(r.positive for r in ex.routes) == 1 for ex in pool)
  cli.main(["data", "stats", f"routes:{out_file}"])
  assert "items" in capsys.readouterr().out


def test_unknown_domain_lists_the_valid_ones(capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(["data", "stats", "domain:nope", "--n", "3"])
  assert info.value.code == 2
  assert capsys.readouterr().err == (
      "realm-jax: error: unknown domain 'nope'; valid domains: dosing, tariff, tax\n")


def _one_error_line(capsys, argv, code):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  err = capsys.readouterr().err
  assert info.value.code == code and err.startswith("realm-jax: error: ") and err.count("\n") == 1
  return err


def test_data_errors_are_one_line(tmp_path, capsys):
  llm = tmp_path / "llm.jsonl"
  llm.write_text(json.dumps({"question_id": "tariff-d0-s0-1", "route": "Answer: 3"}) + "\n")
  err = _one_error_line(capsys, ["data", "stats", f"routes:{llm}"], 1)
  assert "--route-file" in err and "realm-jax data routes SOURCE" in err
  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(b'{"question_id": "x", "route": "\xff"}\n')
  err = _one_error_line(capsys, ["data", "routes", "domain:tariff", "--out", str(tmp_path / "p"),
                                 "--n", "2", "--route-file", str(bad)], 1)
  assert f"{bad}:1: field '<line>': invalid UTF-8" in err
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  assert "no usable examples" in _one_error_line(capsys, ["data", "stats", f"gsm8k:{empty}"], 1)
  err = _one_error_line(capsys, ["data", "stats", f"gsm8k:{tmp_path}"], 1)
  assert err == f"realm-jax: error: {tmp_path}: is a directory; give the path of a file\n"


def test_data_warnings_are_one_line(tmp_path):
  gsm = tmp_path / "g.jsonl"
  gsm.write_text(json.dumps({"question": "q?", "answer": "#### seven"}) + "\n")
  r = _run("data", "stats", f"gsm8k:{gsm}")
  assert r.returncode == 0 and r.stderr.count("\n") == 1, r.stderr
  assert r.stderr.startswith(f"realm-jax: warning: {gsm}: kept 1 of 1 items")
  assert "1 kept items have a gold answer after '####' that is not a plain number" in r.stderr


def test_config_errors_exit_2_whatever_the_order(tmp_path, capsys):
  out = str(tmp_path / "s.png")
  for pair in (["rl.mrpv.num_routes=5", "data.negatives_per_question=4"],
               ["rl.microbatches=3", "rl.batch_prompts=6"]):
    for items in (pair, pair[::-1]):
      cli.main(["plot-schedule", "demo", "--out", out, *items])
  capsys.readouterr()
  for bad in ("rl.lr=-1", "rl.steps=-1", "rl.temperature=-1", "rl.batch_prompts=0",
              "keep_checkpoints=0", "mesh=1,2"):
    assert bad.split("=")[0] in _one_error_line(capsys, ["plot-schedule", "demo", "--out", out,
                                                         bad], 2)


def test_train_help_lists_experiments_and_override_syntax(capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  from realm_jax import configs
  for name in configs.experiment_names():
    doc = importlib.import_module(f"experiments.{name}").__doc__.strip().splitlines()[0]
    assert re.search(rf"^  {name} +{re.escape(doc)}$", out, re.M), name
  examples = re.findall(r"^  realm-jax train \w+ --workdir \S+ (.+)$", out, re.M)
  assert len(examples) == 3 and all("=" in e for e in examples)
  assert "order does not matter" in out


def test_eval_help_says_what_it_evaluates(capsys):
  with pytest.raises(SystemExit):
    cli.main(["eval", "--help"])
  out = " ".join(capsys.readouterr().out.split())
  for phrase in ("starting point", "final params", "without routes and with routes",
                 "Wilson 95% confidence interval", "pass@k and maj@k", "eval.json", "eval.md",
                 "PNG plots"):
    assert phrase in out, phrase


def test_plot_schedule_writes_a_png(tmp_path, monkeypatch):
  from realm_jax.cli import plots
  seen, plot = [], plots.plot_schedule
  monkeypatch.setattr(plots, "plot_schedule", lambda cfg, path: seen.append(cfg) or plot(cfg, path))
  out = tmp_path / "s.png"
  cli.main(["plot-schedule", "realm_zero", "--out", str(out), "rl.steps=50", "rl.eaai.shape=cosine"])
  (cfg,) = seen  # the overrides reach the schedule plotted
  assert (cfg.total_steps, cfg.shape) == (50, "cosine")
  with open(out, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  width, height = struct.unpack(">II", head[16:24])
  assert width > 200 and height > 200


def test_bad_override_and_flag_are_rejected():
  r = _run("train", "demo", "--workdir", "/tmp/never", "rl.stepz=3")
  assert r.returncode != 0 and "unknown field 'stepz'" in r.stderr
  r = _run("train", "demo", "--workdir", "/tmp/never", "--bogus")
  assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


def test_generate_with_smollm2_answers():
  r = _run("generate", "--model", "smollm2", "--prompt", "What is the capital of France?", "--chat",
           "--max-new-tokens", "12")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Paris" in r.stdout


def test_data_routes_with_a_model_teacher(tmp_path, capsys):
  """SmolLM2 as the model teacher: its routes are labelled by verifying their answers."""
  out_file = tmp_path / "model_pool.jsonl"
  cli.main(["data", "routes", "domain:tariff", "--out", str(out_file), "--n", "2", "--negatives", "1",
            "--teacher-model", "smollm2", "--samples", "1", "--max-new-tokens", "24"])
  from realm_jax.data import answers, teachers
  pool = teachers.read_route_pool(out_file)
  model_routes = [(ex, r) for ex in pool for r in ex.routes if r.source == "model"]
  assert len(model_routes) == 2
  for ex, r in model_routes:
    pred = answers.extract_answer(r.text)
    assert r.positive == (pred is not None and answers.is_equivalent(pred, ex.answer))
  assert "source: model" in capsys.readouterr().out


def test_bench_and_sweep_receive_their_own_flags(monkeypatch):
  seen = {}
  from realm_jax.cli import bench, sweep
  monkeypatch.setattr(bench, "main", lambda argv: seen.setdefault("bench", argv))
  monkeypatch.setattr(sweep, "main", lambda argv: seen.setdefault("sweep", argv) and 0)
  cli.main(["bench", "--json", "--repeats", "3"])
  with pytest.raises(SystemExit) as e:
    cli.main(["sweep", "experiments/sweeps/tiny_lr.py", "--parallel", "2", "--dry-run"])
  assert seen["bench"] == ["--json", "--repeats", "3"]
  assert seen["sweep"] == ["experiments/sweeps/tiny_lr.py", "--parallel", "2", "--dry-run"]


def test_data_routes_max_route_chars_names_its_flag(tmp_path, capsys):
  from realm_jax.data import teachers
  routes = tmp_path / "llm.jsonl"
  route = "Zone B is 3 dollars per kg, so the total is 3.\nAnswer: 3"
  routes.write_text(json.dumps({"question_id": "tariff-d0-s0-1", "route": route,
                                "source": "my-llm"}) + "\n")
  args = ["data", "routes", "domain:tariff", "--n", "3", "--route-file", str(routes)]
  r = _run(*args, "--out", str(tmp_path / "small.jsonl"), "--max-route-chars", "20")
  assert r.returncode == 0 and r.stderr.count("\n") == 1, r.stderr
  assert r.stderr.startswith("realm-jax: warning: ") and (
      "1 longer than --max-route-chars=20 characters (lines [1]), not attached") in r.stderr
  assert "data.max_route_chars" not in r.stderr
  small = teachers.read_route_pool(tmp_path / "small.jsonl")
  assert not [rt for ex in small for rt in ex.routes if rt.source == "my-llm"]
  cli.main([*args, "--out", str(tmp_path / "big.jsonl"), "--max-route-chars", str(len(route))])
  big = teachers.read_route_pool(tmp_path / "big.jsonl")
  assert [(ex.id, rt.text) for ex in big for rt in ex.routes if rt.source == "my-llm"] == [
      ("tariff-d0-s0-1", route)]
  err = _one_error_line(capsys, [*args, "--out", str(tmp_path / "p"), "--max-route-chars", "0"], 2)
  assert err == "realm-jax: error: --max-route-chars=0 must be > 0\n"


def test_readme_question_ids_are_real_ids_of_the_builtin_domains(tmp_path):
  """Each concrete id in the README is a question of the pool its `data routes` command writes
  (default --n and --seed, the id's difficulty), and the README's route line attaches to it."""
  import os
  from realm_jax.data import teachers
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")) as f:
    readme = f.read()
  ids = set(re.findall(r"\b(tariff|dosing|tax)-d(\d+)-s(\d+)-(\d+)\b", readme))
  assert ("tariff", "0", "0", "17") in ids, sorted(ids)
  for domain, difficulty, seed, _ in ids:
    out = tmp_path / f"{domain}-{difficulty}-{seed}.jsonl"
    cli.main(["data", "routes", f"domain:{domain}", "--out", str(out), "--seed", seed,
              "--difficulty", difficulty])
    pool_ids = {ex.id for ex in teachers.read_route_pool(out)}
    for d, dd, s, i in ids:
      if (d, dd, s) == (domain, difficulty, seed):
        assert f"{d}-d{dd}-s{s}-{i}" in pool_ids, (f"{d}-d{dd}-s{s}-{i}", sorted(pool_ids)[:3])
  lines = [line for line in readme.splitlines() if line.startswith('{"question_id": ')]
  assert lines, "the README's route-file example line"
  (tmp_path / "llm.jsonl").write_text("\n".join(lines) + "\n")
  cli.main(["data", "routes", "domain:tariff", "--out", str(tmp_path / "pool.jsonl"),
            "--route-file", str(tmp_path / "llm.jsonl")])
  attached = [ex.id for ex in teachers.read_route_pool(tmp_path / "pool.jsonl")
              for rt in ex.routes if rt.source == "my-llm"]
  assert attached == [json.loads(line)["question_id"] for line in lines]


def test_generate_temperature_and_seed_reach_the_sampler(capsys, monkeypatch):
  """--temperature and --seed: the CLI's text is the sampler's, run here on the same model,
  prompt, SamplingConfig and key; two seeds at T = 1 give two different texts. The model is a
  tiny random one behind SmolLM2's real tokenizer (what is checked is the flags' path, not the
  weights; loading SmolLM2 through the CLI is `test_generate_with_smollm2_answers`)."""
  import jax
  import jax.numpy as jnp
  from realm_jax.cli import generate as inference
  from realm_jax.model import pretrained, sampling, transformer
  path = inference.model_path("smollm2")
  tok = pretrained.load_pretrained_tokenizer(path)
  cfg = transformer.ModelConfig(vocab_size=tok.vocab_size, num_layers=2, d_model=32, num_heads=2,
                                num_kv_heads=1, head_dim=16, mlp_dim=64, tie_embeddings=True)
  params = transformer.init_params(cfg, jax.random.key(0))
  ids = tok.encode("Once upon a time", add_bos=True)
  loaded = []
  monkeypatch.setattr(inference.pretrained, "load_pretrained",
                      lambda p: loaded.append(p) or (cfg, params))

  def direct(temperature, seed):
    scfg = sampling.SamplingConfig(max_new_tokens=10, temperature=temperature,
                                   stop_ids=tuple(tok.stop_ids), num_samples=1, pad_id=tok.pad_id)
    roll = sampling.generate(params, cfg, jnp.asarray([ids]), jnp.ones((1, len(ids)), bool),
                             jax.random.key(seed), scfg)
    out = [int(t) for t, m in zip(roll.tokens[0], roll.completion_mask[0]) if m]
    return tok.decode([t for t in out if t not in tok.stop_ids])

  cli.main(["generate", "--model", "smollm2", "--prompt", "Once upon a time",
            "--max-new-tokens", "10", "--temperature", "1.0", "--seed", "2"])
  text = capsys.readouterr().out.rstrip("\n")
  assert loaded == [path]
  assert text == direct(1.0, 2) and text != direct(1.0, 1)
