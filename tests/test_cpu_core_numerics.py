"""benchmarks/cpu_core_numerics.py's comparison: where one run leaves another, against hand-made runs."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import cpu_core_numerics as ccn  # noqa: E402


def run(loss, params, name="x"):
    return {"name": name, "cores": 1, "xla_flags": "", "busy_neighbour": False,
            "loss": np.asarray(loss, np.float64), "params": np.asarray(params, np.float32)}


def test_compare_finds_the_first_differing_step_and_the_largest_parameter_gap():
    ref = run([2.0, 1.5, 1.25, 1.0], [0.5, -1.0, 3.0])
    out = ccn.compare(ref, run([2.0, 1.5, 1.2500001, 1.1], [0.5, -1.25, 3.0625]))
    assert out["first_differing_step"] == 3  # steps are 1-based: the third logged loss
    assert out["max_abs_param_diff"] == 0.25 and not out["bit_identical_params"]
    assert (out["final_loss"], out["reference_final_loss"]) == (1.1, 1.0)


def test_compare_of_identical_runs_reports_no_difference():
    ref = run([2.0, 1.0], [0.5, -0.0])
    out = ccn.compare(ref, run([2.0, 1.0], [0.5, -0.0]))
    assert out["first_differing_step"] is None and out["bit_identical_params"] and out["max_abs_param_diff"] == 0.0
