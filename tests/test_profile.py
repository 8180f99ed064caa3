"""`config.profile`: a jax.profiler trace of a window of train steps, written where TensorBoard's profile plugin
reads it; bad settings stop before compiling."""
import glob
import os

import jax
import pytest

from test_core import tiny_config
from vlmjax.core.loop import train
from vlmjax.core.profiling import op_time_summary, trace_summary


def test_profile_window_writes_one_trace(tmp_path, capsys):
    wd = str(tmp_path / "w")
    train(tiny_config(**{"total_steps": 4, "mesh.data": 1, "profile.start_step": 2, "profile.steps": 2}), wd,
          devices=jax.devices()[:1])
    traces = glob.glob(os.path.join(wd, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    assert "profile of steps 2-3 written to" in capsys.readouterr().out
    with open(traces[0], "rb") as f:  # the steps are annotated (StepTraceAnnotation) for the plugin's step view
        assert b"step_num" in f.read()
    summary = trace_summary(os.path.join(wd, "profile"))  # a CPU trace: the XLA thread pool's ops
    assert summary["source"] == "host XLA threads" and summary["op_ms"] > 0 and 0 < summary["busy_frac"] <= 1
    assert summary["ops"] and all(ms > 0 and n >= 1 for _, ms, n in summary["ops"])
    assert not any(name.startswith("ThunkExecutor") for name, _, _ in summary["ops"])


def test_no_trace_by_default_and_bad_settings_name_the_key(tmp_path):
    wd = str(tmp_path / "w")
    train(tiny_config(**{"total_steps": 2, "mesh.data": 1}), wd, devices=jax.devices()[:1])
    assert not os.path.exists(os.path.join(wd, "profile"))
    with pytest.raises(ValueError, match=r"config.profile: start_step=-1"):
        train(tiny_config(**{"profile.start_step": -1}), str(tmp_path / "bad"), devices=jax.devices()[:1])
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")


class _Node:
    def __init__(self, name, children=(), start_ns=0, duration_ns=0, stats=()):
        self.name, self.lines, self.events = name, list(children), list(children)
        self.start_ns, self.duration_ns, self.stats = start_ns, duration_ns, list(stats)


def _gpu_plane(with_xla_ops_line: bool):
    kernels = _Node("Stream #14(Compute)", [
        _Node("cutlass_gemm", start_ns=0, duration_ns=10_000_000, stats=[("hlo_op", "dot.1")]),
        _Node("loop_fusion_kernel", start_ns=5_000_000, duration_ns=10_000_000, stats=[("hlo_op", "fusion.2")]),
        _Node("cutlass_gemm", start_ns=20_000_000, duration_ns=10_000_000, stats=[("hlo_op", "dot.1")])])
    modules = _Node("XLA Modules", [_Node("jit_step", start_ns=0, duration_ns=30_000_000)])
    ops = _Node("XLA Ops", [_Node("dot.1", start_ns=0, duration_ns=4_000_000)])
    return _Node("/device:GPU:0", [modules, kernels] + ([ops] if with_xla_ops_line else []))


def test_op_time_summary_of_a_device_trace():
    """Kernels are counted by their HLO op, derived lines are not counted again, and the busy fraction is the union
    of the op intervals over the span: [0, 10] + [5, 15] + [20, 30] ms is 25 of 30 ms."""
    host = _Node("/host:CPU", [_Node("tf_XLAEigen/1", [_Node("host_op", duration_ns=1)])])
    s = op_time_summary([host, _gpu_plane(False)])
    assert s["source"] == "device lines"
    assert s["ops"] == [["dot.1", 20.0, 2], ["fusion.2", 10.0, 1]]
    assert s["op_ms"] == 30.0 and s["span_ms"] == 30.0 and s["busy_frac"] == pytest.approx(25 / 30)
    s = op_time_summary([_gpu_plane(True)], top=1)  # a trace with the per-op line: that line alone
    assert s["source"] == "XLA Ops line" and s["ops"] == [["dot.1", 4.0, 1]] and s["busy_frac"] == 1.0
