"""`experiments.variant_table`: runs made under one variant setting, paired with each other
and with the reproduction's runs, against hand-made eval files."""

import json
import os

import numpy as np
import pytest

from experiments import reproduce, rule_split, variant, variant_table

NEW = np.array([True, True, False, False, True, False])  # the questions needing a new rule


def _eval(d, without, with_routes, harder, digest="q"):
  os.makedirs(d, exist_ok=True)
  for f, res, lv in (("eval.json", {"without routes": without, "with routes": with_routes}, 1),
                     ("eval_d2.json", {"without routes": harder}, 2)):
    body = {k: {"n": len(v), "correct": v} for k, v in res.items()}
    with open(os.path.join(d, f), "w") as fh:
      json.dump({"difficulty": lv, "questions_sha256": digest + f,
                 "results": {"final (rl)": body}}, fh)


def test_pairs_the_variant_runs_with_each_other_and_the_kept_runs(tmp_path, monkeypatch, capsys):
  out = str(tmp_path)
  monkeypatch.setattr(rule_split, "new_rule_labels", lambda run, ov, level, path: NEW)
  # seed 0 / seed 1 correctness; grpo is the control
  runs = {("grpo", 0): ([1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]),
          ("grpo", 1): ([0, 0, 1, 1, 0, 0], [1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]),
          ("realm_r1", 0): ([1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]),
          ("realm_r1", 1): ([1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0])}
  for (run, s), c in runs.items():
    _eval(variant.variant_dir(out, s, run, "x"), *c)
  for s in (0, 1):
    _eval(reproduce.result_dir(out, s, "grpo"), [0] * 6, [0] * 6, [0] * 6)
  with open(os.path.join(out, "variants", "seed0_realm_r1_x.json"), "w") as f:
    json.dump({"overrides": ["rl.steps=2"]}, f)
  argv = [out, "--name", "x", "--runs", "grpo,realm_r1", "--kept", "grpo", "--seeds", "2"]
  assert variant_table.main(argv) == 0
  res = json.loads(open(os.path.join(out, "variants", "table_x.json")).read())["results"]
  assert list(res) == ["kept grpo", "grpo (x)", "realm_r1 (x)"]
  r1, g = res["realm_r1 (x)"], res["grpo (x)"]
  # L1: r1 6/6 and 3/6, grpo 4/6 and 2/6 -> means 0.75, 0.5; difference +0.25
  assert r1["L1"]["accuracy"] == pytest.approx(0.75) and g["L1"]["accuracy"] == pytest.approx(0.5)
  assert r1["L1"]["minus_control"]["diff"] == pytest.approx(0.25)
  # new-rule questions 0, 1, 4: r1 3/3 and 1/3, grpo 1/3 and 0/3
  assert r1["L1, new rule"]["questions"] == 3
  assert r1["L1, new rule"]["accuracy"] == pytest.approx((1 + 1 / 3) / 2)
  assert r1["L1, new rule"]["minus_control"]["diff"] == pytest.approx((2 / 3 + 1 / 3) / 2)
  # with routes, new rule: r1 2/3 and 3/3; grpo 0/3 and 1/3
  assert r1["with routes, new rule"]["minus_control"]["diff"] == pytest.approx((2 / 3 + 2 / 3) / 2)
  assert r1["L2"]["accuracy"] == 0.0 and g["L2"]["accuracy"] == pytest.approx(1 / 12)
  assert "minus_control" not in g["L1"]  # the control itself
  assert res["kept grpo"]["L1"]["minus_control"]["diff"] == pytest.approx(-0.5)
  md = open(os.path.join(out, "variants", "table_x.md")).read()
  assert "| realm_r1 (x) | 2 | 0.750 |" in md and "| kept grpo | 2 | 0.000 |" in md
  assert "**−0.500 (" in md  # the README's numbers: unicode minus, bold when 0 is outside and "Command: `python -m experiments.variant_table" in md
  capsys.readouterr()
  # another question set in one run: refused in one line, naming the file
  _eval(variant.variant_dir(out, 1, "grpo", "x"), *runs[("grpo", 1)], digest="other")
  assert variant_table.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "seed 1: the runs' eval.json hold other questions" in err
