"""Metric sinks: `workdir/metrics.jsonl`, TensorBoard event files (scalars and image grids) and a console line.

Only process 0 writes. TensorBoard events are written by tensorboardX (no TensorFlow import).
"""
import json
import math
import os
import sys
import time

import numpy as np


def image_grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """uint8[N, H, W, 3] -> one uint8[rows*H, cols*W, 3] grid (blank cells at the end)."""
    n, h, w, c = images.shape
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = im
    return grid


class MetricWriter:
    """Writes metrics rows to `workdir/metrics.jsonl` and TensorBoard events to `workdir/tb` (tensorboardX: the
    event-file format TensorBoard reads, without TensorFlow or tensorboard installed); only where `enabled`
    (process 0). Every write is flushed, so a preempted run loses nothing it logged."""

    def __init__(self, workdir: str, enabled: bool = True, wandb_cfg=None, config=None):
        """`wandb_cfg` (config.wandb): with a `project`, rows also go to Weights & Biases, one run per workdir (its
        id derives from the workdir's path, so a resumed run continues the same W&B run); `config` is logged with
        it. `wandb` is imported only then; without it installed, ImportError names the key."""
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
        if wandb_cfg is not None and wandb_cfg.get("project"):
            self._wandb = wandb_run(workdir, wandb_cfg, config)

    def write(self, step: int, metrics: dict) -> None:
        """One jsonl row {'step': step, **metrics} and one TensorBoard scalar per metric."""
        if not self.enabled or not metrics:
            return
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in sorted(metrics.items())})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for k, v in metrics.items():
            self._tb.add_scalar(k, float(v), int(step))
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def write_images(self, step: int, images: dict) -> None:
        """images: {tag: uint8[N, H, W, 3]} -> one grid per tag."""
        if not self.enabled or not images:
            return
        for tag, ims in images.items():
            self._tb.add_image(tag, image_grid(np.asarray(ims)), int(step), dataformats="HWC")
        self._tb.flush()

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            if self._wandb is not None:
                self._wandb.finish()


def wandb_run(workdir: str, wandb_cfg, config=None):
    """A `wandb.init` run for `workdir`: id = a hash of its absolute path (resume='allow' continues it on a re-run),
    name = `wandb_cfg.name` or the workdir's name; `entity`/`mode` ('online', 'offline', 'disabled') when set."""
    import hashlib

    try:
        import wandb
    except ImportError:
        raise ImportError("config.wandb.project is set but the wandb package is not installed (pip install wandb); "
                          "or leave config.wandb.project empty") from None
    path = os.path.abspath(workdir)
    kwargs = dict(project=wandb_cfg.project, name=wandb_cfg.get("name") or os.path.basename(path.rstrip("/")),
                  id=hashlib.sha1(path.encode()).hexdigest()[:16], resume="allow", dir=path,
                  config=config.to_dict() if hasattr(config, "to_dict") else config)
    kwargs.update({k: wandb_cfg[k] for k in ("entity", "mode") if wandb_cfg.get(k)})
    return wandb.init(**kwargs)


def read_metrics(workdir: str) -> list:
    """Rows of metrics.jsonl; where a resumed run logged a step again, the last row for that step wins."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows.setdefault(row["step"], {}).update(row)
    return [rows[s] for s in sorted(rows)]


CLEAR_LINE = "\r\033[K"  # back to column 0 and erase: a log line replaces the live bar


def log(msg: str) -> None:
    """Process 0 prints `msg`; on a terminal it first erases the live progress bar (Progress.tick)."""
    import jax  # here, not at the top: reading metrics files needs no jax

    if jax.process_index() == 0:
        print((CLEAR_LINE if sys.stdout.isatty() else "") + msg, flush=True)


class Progress:
    """Console progress line, one per log interval: step, loss, steps/s, examples/s, MFU, ETA.

    When stdout is a terminal (`tty`, default: sys.stdout.isatty()) the line also draws a bar of the steps done;
    in a pod or batch log (not a terminal) it stays one plain line per interval, which greps well."""

    BAR = 20  # characters

    def __init__(self, total_steps: int, batch_size: int, first_step: int, tty: bool = None):
        self.total, self.batch = total_steps, batch_size
        self._t, self._s = time.time(), first_step
        self.tty = sys.stdout.isatty() if tty is None else tty

    def restart(self, step: int) -> None:
        """Counts from `step`, now: what came before (the train step's compilation) stays out of rate and ETA."""
        self._t, self._s = time.time(), step

    def rate(self, step: int) -> float:
        """Steps/s since the previous call (or `restart`)."""
        now = time.time()
        rate = (step - self._s) / max(now - self._t, 1e-9)
        self._t, self._s = now, step
        return rate

    def bar(self, step: int) -> str:
        """`[#####...............]  25%` for `step` of the total."""
        frac = min(max(step / max(self.total, 1), 0.0), 1.0)
        done = int(round(self.BAR * frac))
        return f"[{'#' * done}{'.' * (self.BAR - done)}] {100 * frac:3.0f}%"

    def tick(self, step: int, out=None) -> None:
        """On a terminal, redraws `\r[bar] step N/T` after every step (the next log line overwrites it)."""
        if self.tty:
            out = out or sys.stdout
            out.write(f"\r{self.bar(step)} step {step}/{self.total}")
            out.flush()

    def line(self, step: int, metrics: dict, rate: float) -> str:
        eta = (self.total - step) / max(rate, 1e-9)
        loss = metrics.get("train/loss", float("nan"))
        mfu = f" | MFU {100 * metrics['train/mfu']:.1f}%" if "train/mfu" in metrics else ""
        bar = f" {self.bar(step)}" if self.tty else ""
        return (f"step {step}/{self.total}{bar} | loss {loss:.4f} | {rate:.2f} steps/s | {rate * self.batch:.0f} ex/s"
                f"{mfu} | ETA {int(eta // 60)}m{int(eta % 60):02d}s")
