"""experiments/evidence_table.py gathers runs' paired results into one table."""

import dataclasses
import json

import matplotlib.image

from experiments import evidence_table
from realm_jax.evaluation import paired


def _run(path, start, final, level1=(None, None)):
  path.mkdir()
  (path / "run.json").write_text(json.dumps({"experiment": "evidence_rl", "overrides": []}))
  for name, (s, f) in (("eval.json", (start, final)), ("eval_d1.json", level1)):
    if s is None:
      continue
    results = {"start": {"without routes": {"correct": s}},
               "final (rl)": {"without routes": {"correct": f}}}
    cmp = {"without routes": dataclasses.asdict(paired.paired_compare(s, f))}
    (path / name).write_text(json.dumps({"results": results, "paired": cmp}))


def test_table_holds_each_runs_paired_numbers(tmp_path):
  # 10 questions: start right on 5, final right on those and 3 more (8 gained-only discordant
  # pairs would give p = 2/2^8; here 3 gained, 0 lost: exact two-sided p = 2 * 0.5^3 = 0.25)
  start = [1] * 5 + [0] * 5
  final = [1] * 8 + [0] * 2
  _run(tmp_path / "a", start, final, level1=(start, start))
  _run(tmp_path / "b", final, start)
  (tmp_path / "c").mkdir()  # no eval.json: left out
  out = tmp_path / "out"
  evidence_table.main([str(tmp_path / n) for n in "abc"] + ["--out", str(out)])
  text = (out / "table.md").read_text()
  row_a = next(line for line in text.splitlines() if line.startswith("| a |"))
  cells = [c.strip() for c in row_a.strip("|").split("|")]
  assert cells[1:3] == ["0.500", "0.800"] and cells[3].startswith("+0.300") and cells[4] == "0.25"
  assert cells[5:7] == ["0.500", "0.500"] and cells[8] == "1"
  row_b = next(line for line in text.splitlines() if line.startswith("| b |"))
  assert "-0.300" in row_b
  assert "| c |" not in text
  assert [r["run"] for r in json.loads((out / "table.json").read_text())] == ["a", "b"]
  assert matplotlib.image.imread(out / "paired.png").shape[0] > 100


def test_control_column_pairs_each_final_with_the_controls_final(tmp_path):
  start = [0] * 10
  _run(tmp_path / "ctl", start, [1] * 6 + [0] * 4)
  _run(tmp_path / "rl", start, [1] * 4 + [0] * 6)  # 2 questions fewer than the control, 0 more
  out = tmp_path / "out"
  evidence_table.main([str(tmp_path / "ctl"), str(tmp_path / "rl"), "--control", "ctl",
                       "--out", str(out)])
  row = next(r for r in json.loads((out / "table.json").read_text()) if r["run"] == "rl")
  c = row["level 0 vs ctl"]["without routes"]
  assert (c["acc_a"], c["acc_b"], c["a_only"], c["b_only"]) == (0.6, 0.4, 2, 0)
  assert c["p_value"] == 0.5  # exact two-sided McNemar, 2 discordant pairs: 2 * 0.5^2
  assert "-0.200" in (out / "table.md").read_text()
