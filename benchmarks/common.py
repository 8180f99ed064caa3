"""Shared benchmark plumbing: timing and writing results to benchmarks/results/<name>.json."""
import json
import os
import platform
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of `fn()` (fn must block until its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def per_cpu_second(fn, n: int, repeats: int) -> float:
    """`n` / the process CPU seconds of one `fn()` (fn does n items of work), best of `repeats` after one warm-up.
    CPU time, not wall time: a busy machine moves it far less, for single-threaded work."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return n / best


def timing_setup(workdir: str) -> str:
    """For benchmarks that time a Trainer's step on batches they build themselves: registers the `bench:` data
    source (the Trainer opens its source; the timed steps never read it) and trains a tiny SentencePiece model in
    `workdir` (the contrastive and prefix-LM tasks need one). Returns the model's path."""
    import numpy as np

    from vlmjax.data import pipeline
    from vlmjax.data.tokenizer import train_from_texts

    pipeline.register_source("bench")(lambda cfg, split: [{"image": np.zeros((8, 8, 3), np.uint8), "text": "x"}])
    return train_from_texts([f"a photo of thing {i}" for i in range(200)], os.path.join(workdir, "spm.model"),
                            vocab_size=300).path


def scenes_images(data_dir: str, split: str, n: int, size: int, name: str = "scenes/default") -> tuple:
    """(records, images float32[n, size, size, 3] in [-1, 1]) of the first n records of `split` of the tfds dataset
    `name` (a `scenes` config), resized (linear) when the run's image_size differs from the stored one."""
    import jax
    import numpy as np
    import tensorflow_datasets as tfds

    src = tfds.data_source(name, split=split, data_dir=data_dir)
    exs = [src[i] for i in range(min(n, len(src)))]
    images = np.stack([e["image"] for e in exs]).astype(np.float32)
    if images.shape[1] != size:
        images = np.asarray(jax.image.resize(images, (len(images), size, size, 3), "linear"))
    return exs, images / 127.5 - 1


def cpu_description() -> str:
    """The CPU's model name and the vector extensions XLA's CPU kernels choose between (avx2, avx512f,
    amx_tile): another set can give other float bits for the same program, as another core count does
    (docs/guide.md, "Numerics across machines"), so a row that may be compared across sittings records it."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown"
    field = lambda key: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(key)), "")  # noqa: E731
    isa = [f for f in ("avx2", "avx512f", "amx_tile") if f in field("flags").split()]
    return f"{field('model name') or 'unknown'} ({' '.join(isa) or 'no avx2'})"


def write_result(name: str, result: dict) -> str:
    import jax

    result = dict(result)
    result.setdefault("machine", {"platform": platform.platform(), "processor": platform.processor(),
                                  "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
                                  "devices": [str(d) for d in jax.devices()][:4]})
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(json.dumps(result, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return path


def update_doc(path: str, title: str, begin: str, end: str, text: str) -> None:
    """Replaces the `begin`..`end` block of the markdown page `path` by `text` (which carries both markers); the rest
    of the page, written by hand, is kept. A page without the block gets it appended."""
    doc = open(path).read() if os.path.exists(path) else f"# {title}\n\n{begin}\n{end}\n"
    if begin not in doc or end not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    with open(path, "w") as f:
        f.write(head + text + rest.split(end, 1)[1])


def publish_study(name: str, result: dict, rows: list, plot, plot_path: str, markdown, doc: str, title: str,
                  begin: str, end: str) -> None:
    """A study's three outputs: benchmarks/results/<name>.json, `plot(rows, plot_path)` and the `begin`..`end` block
    of the page `doc` (`markdown(rows, result)`)."""
    write_result(name, result)
    plot(rows, plot_path)
    update_doc(doc, title, begin, end, markdown(rows, result))
    print(f"wrote {plot_path} and the results block of {doc}")


def read_runs(path) -> list:
    """The rows of a study's runs file (its finished runs, one JSON line each; none if there is no file). A truncated
    last line (a run killed while writing) is skipped."""
    if not path or not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def last_run(done: list, settings: dict):
    """The last row of `done` (a runs file's rows) whose values equal `settings` on every key of it; None if none."""
    found = [r for r in done if {k: r.get(k) for k in settings} == settings]
    return found[-1] if found else None


def append_run(path: str, row: dict) -> None:
    """Appends `row` as one JSON line, on a line of its own even after a truncated last line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row) + "\n").encode())
