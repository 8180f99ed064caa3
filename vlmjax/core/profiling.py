"""A jax.profiler trace of a window of train steps (`config.profile`), for TensorBoard's profile plugin or xprof.

    vlmjax-train --config siglip_b16 --workdir W --config.profile.start_step=10 --config.profile.steps=5
    tensorboard --logdir W/profile          # Profile tab: the trace viewer, op and memory profiles per step

`start_step` 0 (the default) traces nothing. Steps `start_step .. start_step + steps - 1` are traced, each marked
with a `StepTraceAnnotation` (the plugin's step view); the trace stops once the last traced step's results are
ready, so the window holds whole steps. Start after the first step: that one compiles. A run resumed past the
window traces nothing. The trace goes under `dir` (default `<workdir>/profile`), in `process_<i>/` when the run
has several processes (traces are named by host, and local processes share one).
A bad setting stops the run before anything compiles (`config.check_runtime`); the setting may change on resume.
"""
import contextlib
import os

import jax


class StepProfiler:
    """`with profiler.step(step): <run the step>`, then `profiler.done(step, outputs)` once per step."""

    def __init__(self, cfg, workdir: str, log=print):
        self.first = int(cfg.start_step)
        self.last = self.first + int(cfg.steps) - 1
        self.dir = cfg.dir or os.path.join(workdir, "profile")
        if jax.process_count() > 1:
            self.dir = os.path.join(self.dir, f"process_{jax.process_index()}")
        self.active, self._log = False, log

    def step(self, step: int):
        """Starts the trace at the window's first step; the step's annotation while tracing."""
        if self.first and step == self.first:
            jax.profiler.start_trace(self.dir)
            self.active = True
        return jax.profiler.StepTraceAnnotation("train", step_num=step) if self.active else contextlib.nullcontext()

    def done(self, step: int, outputs) -> None:
        """Stops the trace after the window's last step, once `outputs` (the step's results) are computed."""
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            self.close()
            self._log(f"profile of steps {self.first}-{self.last} written to {self.dir} "
                      f"(tensorboard --logdir {self.dir})")

    def close(self) -> None:
        """Stops a trace still running (a run that ended or failed inside the window)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


# Lines the profiler derives from others (counting them too would count an op twice).
_DERIVED_LINES = ("XLA Modules", "Steps", "XLA TraceMe", "Framework Ops", "Framework Name Scope", "Source code")


def op_time_summary(planes, top: int = 25) -> dict:
    """Where the device time of a trace went, by XLA op: {'source', 'op_ms', 'span_ms', 'busy_frac', 'ops':
    [[name, ms, count], ...] (the `top` longest)}. `planes`: a trace's planes (`jax.profiler.ProfileData.planes`).

    Device planes ('/device:...'): their 'XLA Ops' line where the trace has one, else every non-derived line
    (kernels, keyed by their `hlo_op` stat when they carry it). A CPU-only trace: the XLA thread-pool lines of the
    host, less the executor's wrapper events. `span_ms`: first op start to last op end; `busy_frac`: the union of
    the ops' intervals over the span (the device idle between ops, e.g. waiting for the host, is the rest)."""
    chosen, source, planes = [], "", list(planes)  # ProfileData's planes iterate once
    for plane in planes:
        if plane.name.startswith("/device:"):
            lines = list(plane.lines)
            ops = [ln for ln in lines if ln.name == "XLA Ops"]
            chosen += ops or [ln for ln in lines if ln.name not in _DERIVED_LINES]
            source = "XLA Ops line" if ops else "device lines"
    if not chosen:
        for plane in planes:
            if plane.name == "/host:CPU":
                chosen += [ln for ln in plane.lines if ln.name.startswith("tf_XLA")]
        source = "host XLA threads"
    total, count, intervals = {}, {}, []
    for line in chosen:
        for ev in line.events:
            if ev.name.startswith("ThunkExecutor::"):
                continue
            stats = dict(ev.stats)
            name = str(stats.get("hlo_op") or ev.name)
            total[name] = total.get(name, 0.0) + ev.duration_ns
            count[name] = count.get(name, 0) + 1
            intervals.append((ev.start_ns, ev.start_ns + ev.duration_ns))
    if not intervals:
        return {"source": source, "op_ms": 0.0, "span_ms": 0.0, "busy_frac": None, "ops": []}
    intervals.sort()
    busy, (lo, hi) = 0.0, intervals[0]
    for a, b in intervals[1:]:
        if a > hi:
            busy, lo = busy + hi - lo, a
        hi = max(hi, b)
    busy += hi - lo
    span = max(b for _, b in intervals) - intervals[0][0]
    ops = sorted(total, key=total.get, reverse=True)[:top]
    return {"source": source, "op_ms": sum(total.values()) / 1e6, "span_ms": span / 1e6,
            "busy_frac": busy / span if span else None,
            "ops": [[name, total[name] / 1e6, count[name]] for name in ops]}


def trace_summary(directory: str, top: int = 25) -> dict:
    """`op_time_summary` of the newest trace `jax.profiler` wrote under `directory`."""
    import glob

    from jax.profiler import ProfileData

    paths = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no jax.profiler trace (plugins/profile/*/*.xplane.pb) under {directory}")
    return op_time_summary(ProfileData.from_file(paths[-1]).planes, top)
