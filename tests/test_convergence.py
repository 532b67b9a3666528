"""experiments.convergence: best validation, its step, and the late gain, on hand curves."""

from experiments import convergence


def test_a_curve_still_rising_in_its_last_fifth_has_a_positive_late_gain():
  # 5 validations over 500 steps: the last fifth holds step 499 only (499 + 1 > 400)
  curve = [["sft", 99, 0.1], ["sft", 199, 0.5], ["sft", 299, 0.6], ["sft", 399, 0.55],
           ["sft", 499, 0.62]]
  c = convergence.curve_summary(curve)
  assert c["best"] == 0.62 and c["best_step"] == 499 and c["last_step"] == 499
  assert abs(c["late_gain"] - 0.02) < 1e-12  # 0.62 - max(0.1, 0.5, 0.6, 0.55)


def test_a_flat_curve_and_ties_keep_the_first_best():
  # 10 validations over 60 steps; the late fifth: steps 53 and 59 (54 > 48, 60 > 48)
  accs = [0.2, 0.5, 0.7, 0.7, 0.69, 0.68, 0.7, 0.66, 0.65, 0.7]
  curve = [["rl", 6 * i + 5, a] for i, a in enumerate(accs)]
  c = convergence.curve_summary(curve)
  assert c["best"] == 0.7 and c["best_step"] == 17  # the first 0.7
  assert c["late_gain"] == 0.0  # max(0.65, 0.7) - 0.7
  curve[-1][2] = 0.6
  assert abs(convergence.curve_summary(curve)["late_gain"] - (0.65 - 0.7)) < 1e-12


def test_the_last_phase_is_judged_and_a_single_validation_has_no_late_gain():
  curve = [["base", 9, 0.9], ["sft", 99, 0.3], ["sft", 199, 0.4]]
  c = convergence.curve_summary(curve)
  assert (c["best"], c["best_step"], c["last_step"]) == (0.4, 199, 199)
  assert abs(c["late_gain"] - 0.1) < 1e-12
  assert convergence.curve_summary([["rl", 5, 0.3]])["late_gain"] is None
  assert convergence.curve_summary([]) is None


def test_per_run_and_table():
  runs = {(1, "sft"): {"validation": [["sft", 99, 0.5], ["sft", 499, 0.8]]},
          (0, "sft"): {"validation": [["sft", 99, 0.25], ["sft", 499, 0.75]]},
          (0, "base"): {"validation": []}}
  conv = convergence.per_run(runs)
  assert list(conv) == ["sft"] and list(conv["sft"]) == ["0", "1"]
  lines = convergence.table(conv, 3).splitlines()
  assert lines[0] == "| run | seed 0 | seed 1 | seed 2 |"
  assert lines[2] == ("| sft | 0.750 at 500/500, late gain +0.500 | "
                      "0.800 at 500/500, late gain +0.300 |  |")


def test_mean_curve_keeps_the_steps_every_seed_validated_at(tmp_path):
  by_seed = {0: [(6, 0.5), (12, 0.7)], 1: [(6, 0.25), (12, 0.5), (18, 0.9)]}
  assert convergence.mean_curve(by_seed) == ([6, 12], [0.375, 0.6])
  path = tmp_path / "curves.png"
  runs = {(0, "sft"): {"validation": [["sft", 99, 0.5], ["sft", 199, 0.75]]},
          (0, "grpo"): {"validation": [["rl", 5, 0.75], ["rl", 11, 0.8]]}}
  assert convergence.plot(runs, str(path)) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not convergence.plot({(0, "base"): {"validation": []}}, str(tmp_path / "none.png"))
  assert not (tmp_path / "none.png").exists()
