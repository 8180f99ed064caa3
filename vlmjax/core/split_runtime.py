"""The Trainer's data half: its evaluation splits, read as global batches on the mesh, and the evaluators run on them.

`SplitRuntime` extends `Runtime` (arrays the caller already holds) with `predict_all` over a config's split, the
method evaluators call (vlmjax/evaluators/base.py). A subclass sets `config` (resolved), `task`, `evaluators`,
`mesh` and `rules` before the first read; the Trainer (vlmjax/core/loop.py) is the one subclass.
"""
import time

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from vlmjax.core import config as config_lib
from vlmjax.core.mesh import batch_sharding, data_parallel_size
from vlmjax.core.metrics import log
from vlmjax.core.runtime import Runtime
from vlmjax.data.pipeline import VALID_KEY, eval_batches, make_source


class SplitRuntime(Runtime):
    """Evaluation over data splits: sources opened once each, batches padded to the data-parallel size, one
    compiled function per predict function."""

    def __init__(self, mesh, rules=()):
        super().__init__(mesh, rules)
        self._eval_sources = {}
        self._predict_cache = {}

    def _global_batch(self, batch: dict) -> dict:
        sh = batch_sharding(self.mesh)
        return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in batch.items()}

    # -- eval ------------------------------------------------------------------------------------------------------
    def _eval_source(self, data_cfg):
        features = self.task.read_features(data_cfg)
        key = (data_cfg.name, data_cfg.split, data_cfg.data_dir, tuple(features or ()))
        if key not in self._eval_sources:
            self._eval_sources[key] = make_source(data_cfg, data_cfg.split, features)
        return self._eval_sources[key]

    def _eval_batch_size(self, data_cfg) -> int:
        return config_lib.eval_batch_size(data_cfg.batch_size, data_parallel_size(self.mesh), jax.process_count())

    def _log_eval_padding(self):
        """Says once, when the trainer is built, which eval batches are padded to the data-parallel size."""
        for name, ev in self.config.evals.items():
            size = self._eval_batch_size(ev.data)
            if size != ev.data.batch_size:
                log(f"config.evals.{name}.data.batch_size={ev.data.batch_size} is padded to {size}, a multiple of "
                    f"the data-parallel size {data_parallel_size(self.mesh)}; padding rows are not counted")

    def batches(self, data_cfg, example_fn=None):
        """Global eval batches for a data config (with `_valid`), padded to a multiple of the data-parallel size;
        `example_fn` (an evaluator's) is applied to each example after the task's preprocessing."""
        source = self._eval_source(data_cfg)
        pre = self.task.preprocess_fn(data_cfg, train=False)
        if example_fn is not None:
            task_pre = pre
            pre = lambda example, rng: example_fn(task_pre(example, rng))  # noqa: E731
        local = self._eval_batch_size(data_cfg) // jax.process_count()
        for b in eval_batches(source, pre, batch_size=local, process_index=jax.process_index(),
                              process_count=jax.process_count(), max_examples=data_cfg.max_examples or None):
            yield self._global_batch(b)

    def predict_all(self, predict, variables, data_cfg, example_fn=None) -> dict:
        """Run `predict` over the whole split; per-example outputs of the valid rows, on every host."""
        if predict not in self._predict_cache:
            self._predict_cache[predict] = jax.jit(predict, out_shardings=batch_sharding(self.mesh))
        fn = self._predict_cache[predict]
        chunks = []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for batch in self.batches(data_cfg, example_fn):
                out = fn(variables, batch)
                out[VALID_KEY] = batch[VALID_KEY]
                chunks.append(multihost_utils.process_allgather(out, tiled=True))
        if not chunks:
            raise ValueError(f"evaluation on {data_cfg.name}:{data_cfg.split} saw no decodable example")
        out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        valid = out.pop(VALID_KEY).astype(bool)
        return {k: v[valid] for k, v in out.items()}

    def evaluate(self, state, step: int, writer=None, only=None) -> dict:
        variables = {"params": state["params"], **state["model_state"]}
        results = {}
        for name, ev in self.evaluators.items():
            every = self.config.evals[name].every_steps
            if only is None and not (step == self.config.total_steps or (every and step % every == 0)):
                continue
            t0 = time.time()
            metrics = ev.run(variables, self)
            results.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
            if self.config.evals[name].get("quiet", False):  # written below, not printed
                log(f"eval {name} @ {step} ({time.time() - t0:.1f}s): in metrics.jsonl (quiet)")
            else:
                log(f"eval {name} @ {step} ({time.time() - t0:.1f}s): " +
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if writer is not None and ev.images is not None:
                writer.write_images(step, {f"eval/{name}/{k}": v for k, v in ev.images(variables, self).items()})
        return results
