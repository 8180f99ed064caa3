"""The measurements of benchmarks/input_pipeline.py: steady-state examples/s of a pipeline (with or without worker
processes), of the pipeline before worker processes (the reference), of the train step on batches already on the
device, and of pipeline + transfer + step together."""
import threading
import time

WORKER_BUFFER = 2  # TrainIterator's per-worker buffer (batches)


def _close_later(it):
    """Stops an iterator's workers in the background: grain waits ~1 s per close for them to see the stop."""
    threading.Thread(target=it.close, daemon=False).start()


def pipeline_rate(source, preprocess, batch_size, workers, min_batches, keep=0):
    """(steady examples/s, seconds to the first batch, the first `keep` batches) of a TrainIterator with `workers`
    processes. Batches are not held (a worker's batch lives in /dev/shm until it is dropped)."""
    from vlmjax.data.pipeline import TrainIterator

    it = TrainIterator(source, preprocess, batch_size=batch_size, seed=0, worker_count=workers,
                       worker_buffer=WORKER_BUFFER)
    t0 = time.perf_counter()
    kept = [next(it)]
    startup = time.perf_counter() - t0
    for _ in range(workers):  # every worker has started
        next(it)
    # A worker's buffered batches arrive at once: time enough batches that the second half is steady production.
    n = max(min_batches, 4 * workers * (WORKER_BUFFER + 1))
    stamps = []
    for _ in range(n):
        b = next(it)
        if len(kept) < keep:
            kept.append(b)
        stamps.append(time.perf_counter())
    _close_later(it)
    half = n // 2
    return (n - 1 - half) * batch_size / (stamps[-1] - stamps[half]), startup, kept


def reference_rate(source, preprocess, batch_size, min_batches):
    """examples/s of the pipeline before worker processes (the 819 ex/s of the README), measured in this run: one
    grain reader thread, examples stacked into batches by a Python loop in the consuming process."""
    import grain
    import numpy as np

    from vlmjax.data.pipeline import DROP_KEY, _safe

    ds = grain.MapDataset.source(source).seed(0).shuffle().repeat().random_map(_safe(preprocess))
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=16)))

    def batch():
        rows = []
        while len(rows) < batch_size:
            ex = next(it)
            if DROP_KEY not in ex:
                rows.append(ex)
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    batch()
    t = time.perf_counter()
    for _ in range(min_batches):
        batch()
    return min_batches * batch_size / (time.perf_counter() - t)


def step_rate(trainer, host_batches, steps):
    """Train-step examples/s on batches already on the device (the rate the accelerator consumes); the host batches
    are cycled (an accelerator step takes ~ms: `steps` x 10 steps there)."""
    import jax

    if jax.default_backend() != "cpu":
        steps *= 10
    step, state = trainer.train_step_fn(), trainer.init_state()
    with jax.set_mesh(trainer.mesh):
        gb = [trainer._global_batch(b) for b in host_batches[:steps]]
        gb = (gb * (-(-steps // len(gb))))[:steps]
        t = time.perf_counter()
        state, m = step(state, gb[0])
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t
        for b in gb[:3]:  # warm
            state, m = step(state, b)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for b in gb:
            state, m = step(state, b)
        jax.block_until_ready(m)
        dt = time.perf_counter() - t
    return steps * len(host_batches[0]["label"]) / dt, compile_s, (step, state)


def end_to_end_rate(trainer, step_state, source, preprocess, batch_size, workers, steps):
    """examples/s of next(pipeline) -> device -> step, as the train loop runs them; steady state as in
    `pipeline_rate` (the second half of enough steps that the workers' buffered batches are spent)."""
    import jax

    from vlmjax.data.pipeline import TrainIterator

    step, state = step_state
    it = TrainIterator(source, preprocess, batch_size=batch_size, seed=1, worker_count=workers,
                       worker_buffer=WORKER_BUFFER)
    n = max(steps, 4 * workers * (WORKER_BUFFER + 1))
    with jax.set_mesh(trainer.mesh):
        for i in range(workers + 1 + n):
            if i == workers + 1 + n // 2:
                jax.block_until_ready(m)
                t = time.perf_counter()
            state, m = step(state, trainer._global_batch(next(it)))
        jax.block_until_ready(m)
        dt = time.perf_counter() - t
    _close_later(it)
    return (n - n // 2) * batch_size / dt, (step, state)  # the state passed in was donated


def tfds_whole_source(data_cfg, split):
    """The source the reference pipeline read: tfds' own deserialisation of every field, images left encoded."""
    import tensorflow_datasets as tfds

    from vlmjax.data.sources.tfds import builder

    ds = builder(data_cfg.name, data_cfg.data_dir)
    return ds.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
