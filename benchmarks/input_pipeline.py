"""Input pipeline vs train step throughput for the demo experiment (`experiments/vit_scenes.py`).

    .venv/bin/python benchmarks/input_pipeline.py [--config experiments/vit_scenes.py] [--steps 50]

The pipeline (grain over the tfds ArrayRecord files: read, PNG decode, value range, batching) must deliver
examples at least 5x faster than the train step consumes them, or the accelerator waits for data.
"""
import argparse
import importlib.util
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_result  # noqa: E402


def load_config(path):
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("exp", file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/vit_scenes.py")
    ap.add_argument("--data_dir", default="data/tfds")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    import jax

    from vlmjax.data.pipeline import TrainIterator
    from vlmjax.train.loop import Trainer

    cfg = load_config(args.config)
    cfg.data.data_dir = args.data_dir
    with cfg.unlocked():
        cfg.evals = {}
    trainer = Trainer(cfg, tempfile.mkdtemp())
    it = TrainIterator(trainer.train_source, trainer.task.preprocess_fn(trainer.config.data, train=True),
                       batch_size=cfg.batch_size, seed=0, worker_count=trainer.config.data.worker_count,
                       read_threads=trainer.config.data.read_threads,
                       prefetch_buffer=trainer.config.data.prefetch_buffer)
    next(it)
    t = time.perf_counter()
    batches = [next(it) for _ in range(args.steps)]
    pipe_s = time.perf_counter() - t

    step = trainer.train_step_fn()
    state = trainer.init_state()
    with trainer.mesh:
        gb = [trainer._global_batch(b) for b in batches]
        state, m = step(state, gb[0])
        jax.block_until_ready(m)
        t = time.perf_counter()
        for b in gb:
            state, m = step(state, b)
        jax.block_until_ready(m)
        step_s = time.perf_counter() - t
    n = args.steps * cfg.batch_size
    res = {"config": args.config, "batch_size": cfg.batch_size, "steps": args.steps,
           "read_threads": trainer.config.data.read_threads, "prefetch_buffer": trainer.config.data.prefetch_buffer,
           "pipeline_examples_per_s": n / pipe_s, "train_step_examples_per_s": n / step_s}
    res["ratio_pipeline_over_step"] = res["pipeline_examples_per_s"] / res["train_step_examples_per_s"]
    res["target_ratio"] = 5.0
    res["meets_target"] = res["ratio_pipeline_over_step"] >= 5.0
    write_result("input_pipeline", res)


if __name__ == "__main__":
    main()
