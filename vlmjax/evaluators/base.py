"""The evaluator contract, and what the core lends every evaluator (the `runtime`).

An evaluator runs over one split and returns `{metric: float}` (logged as `eval/<name>/<metric>`). It is built
once from `config.evals.<name>` over the task's predict functions (`vlmjax.evaluators.build_evaluators`) and never
imports `vlmjax.core`: what it needs from the core comes through the `runtime` passed to `run`:

  runtime.predict_all(predict, variables, data_cfg, example_fn=None) -> {key: np.ndarray[N, ...]}
      `predict(variables, batch) -> {key: Array[B, ...]}` jitted on the mesh over every batch of the split
      (`example_fn`: a host function applied to each example after the task's preprocessing); the per-example
      outputs of the valid rows, gathered to every host.
  runtime.predict_arrays(fn, variables, arrays, chunk=256) -> np.ndarray[N, ...]
      `fn(variables, *arrays)` over host arrays of N rows (e.g. tokenized prompts): rows split over the mesh's
      batch axes in chunks of at most `chunk`, the output gathered.
"""
import dataclasses
from typing import Any, Callable, Dict, Optional

Metrics = Dict[str, Any]
# Keys every `config.evals.<name>` may hold, whatever its kind. `quiet`: True writes the metrics (metrics.jsonl,
# TensorBoard) without printing them, e.g. a study's test evaluations during a sitting that must not read them.
COMMON_KEYS = ("type", "every_steps", "data", "quiet")


@dataclasses.dataclass
class Evaluator:
    """The default `run` streams the split through `predict`, gathers the per-example outputs of valid rows to the
    host and calls `reduce` on them. Evaluators that need a set-up pass (e.g. zero-shot class embeddings)
    override `run`."""

    data: Any  # ConfigDict: name, split, data_dir, preprocess, batch_size, max_examples
    predict: Optional[Callable] = None  # (variables, batch) -> {key: Array[B, ...]}
    reduce: Optional[Callable] = None  # ({key: np.ndarray[N, ...]}) -> {metric: float}
    images: Optional[Callable] = None  # (variables, runtime) -> {name: uint8[N, H, W, 3]} for TensorBoard grids
    example_fn: Optional[Callable] = None  # host: example after the task's preprocessing -> example

    def run(self, variables, runtime) -> Metrics:
        outputs = runtime.predict_all(self.predict, variables, self.data, example_fn=self.example_fn)
        return self.reduce(outputs)
