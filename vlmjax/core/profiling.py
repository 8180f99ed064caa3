"""A jax.profiler trace of a window of train steps (`config.profile`), for TensorBoard's profile plugin or xprof.

    vlmjax-train --config siglip_b16 --workdir W --config.profile.start_step=10 --config.profile.steps=5
    tensorboard --logdir W/profile          # Profile tab: the trace viewer, op and memory profiles per step

`start_step` 0 (the default) traces nothing. Steps `start_step .. start_step + steps - 1` are traced, each marked
with a `StepTraceAnnotation` (the plugin's step view); the trace stops once the last traced step's results are
ready, so the window holds whole steps. Start after the first step: that one compiles. A run resumed past the
window traces nothing. Each process writes its own trace (named by host) under `dir` (default `<workdir>/profile`).
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
