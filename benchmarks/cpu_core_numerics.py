"""Does a CPU run's result depend on the machine it runs on? The same seed trained in fresh processes that may use
all cores, all cores beside a busy process, and one core (`sched_setaffinity`), with XLA's default flags and with
`--xla_cpu_multi_thread_eigen=false`: the first step whose loss differs from the reference's, and the largest
parameter difference at the end; and the bits of three single ops (a large-K dot, a small dot, a column sum) on one
core and on all. Regenerates:

    .venv/bin/python benchmarks/cpu_core_numerics.py           # ~3 min on 2 cores (scenes/raw: `make bench`)

The run is one arm of benchmarks/sigmoid_vs_softmax.py (tiny towers, 32 px, batch 32, sigmoid loss) without its
evaluations, where the effect was found: XLA CPU sizes its thread pool from the cores a process may use, and how a
dot or reduction is split over the threads moves the last bits. What it means for resume is in docs/guide.md
("Numerics across machines (CPU)"). Writes benchmarks/results/cpu_core_numerics.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from common import write_result  # noqa: E402
from seeds import provenance  # noqa: E402

FLAG = "--xla_cpu_multi_thread_eigen=false"


def child(out: str, steps: int, seed: int, data_dir: str) -> None:
    """Trains the arm in this process (already pinned) and writes its per-step losses and final parameters to
    `out` (.npz)."""
    import jax
    import numpy as np

    import sigmoid_vs_softmax as study
    from vlmjax.core.loop import Trainer
    from vlmjax.core.metrics import read_metrics

    args = study.parse_args(["--data_dir", data_dir, "--workers", "0"])
    cfg = study.run_config("sigmoid", 32, steps, seed, args)
    with cfg.unlocked():
        cfg.evals = {}
        cfg.log_every_steps = 1
    with tempfile.TemporaryDirectory() as wd:
        t = Trainer(cfg, wd, devices=jax.devices()[:1])
        t.run()
        loss = [r["train/loss"] for r in read_metrics(wd) if "train/loss" in r]
        leaves = jax.tree_util.tree_leaves(jax.device_get(t.state["params"]))
    np.savez(out, loss=np.asarray(loss, np.float64), params=np.concatenate([np.ravel(x) for x in leaves]))


def ops_child() -> list:
    """md5 prefixes of three single ops on fixed inputs: a weight gradient's large-K dot (float32[8192, 48]^T @
    float32[8192, 192]), a small dot and a column sum of float32[8192, 192]."""
    import hashlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    r = np.random.RandomState(0)
    a, b = jnp.asarray(r.randn(8192, 48), jnp.float32), jnp.asarray(r.randn(8192, 192), jnp.float32)
    outs = [jax.jit(lambda a, b: a.T @ b)(a, b), jax.jit(lambda a, w: a[:1024] @ w)(a, b[:48]),
            jax.jit(lambda b: b.sum(0))(b)]
    return [hashlib.md5(np.asarray(o).tobytes()).hexdigest()[:8] for o in outs]


def run_pinned(cores: list, flags: str, call: str) -> str:
    """Runs `call` (a Python expression on this module, `m`) in a fresh process pinned to `cores` with XLA_FLAGS
    `flags`, so that jax starts there with that thread pool; returns its stdout."""
    code = (f"import os, sys; os.sched_setaffinity(0, {cores!r}); sys.path[:0] = [{HERE!r}, {ROOT!r}]; "
            f"import cpu_core_numerics as m; {call}")
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout


def ops_variant(cores: list, flags: str) -> dict:
    """`ops_child` in a fresh process pinned to `cores`."""
    out = run_pinned(cores, flags, "import json; print(json.dumps(m.ops_child()))")
    return dict(zip(("large_k_dot", "small_dot", "column_sum"), json.loads(out.strip().splitlines()[-1])))


def variant(name: str, cores: list, flags: str, busy: bool, args, tmp: str) -> dict:
    """Runs `child` in a fresh process pinned to `cores` with XLA_FLAGS `flags` (beside a spinning process when
    `busy`); returns its losses and parameters."""
    import numpy as np

    out = os.path.join(tmp, f"{name}.npz")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        run_pinned(cores, flags, f"m.child({out!r}, {args.steps}, {args.seed}, {args.data_dir!r})")
    finally:
        if spin:
            spin.kill()
    z = np.load(out)
    return {"name": name, "cores": len(cores), "xla_flags": flags, "busy_neighbour": busy, "loss": z["loss"],
            "params": z["params"]}


def compare(ref: dict, run: dict) -> dict:
    """Where `run` leaves `ref`: the first logged step whose loss is not bit-equal (None: none), the final losses
    and the largest absolute parameter difference."""
    import numpy as np

    diff = np.flatnonzero(ref["loss"] != run["loss"])
    return {k: run[k] for k in ("name", "cores", "xla_flags", "busy_neighbour")} | {
        "first_differing_step": int(diff[0]) + 1 if diff.size else None,
        "final_loss": float(run["loss"][-1]), "reference_final_loss": float(ref["loss"][-1]),
        "max_abs_param_diff": float(np.max(np.abs(ref["params"] - run["params"]))),
        "bit_identical_params": bool(np.array_equal(ref["params"], run["params"]))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "tfds"))
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    source = provenance(__file__, argv)
    every = sorted(os.sched_getaffinity(0))
    if len(every) < 2:
        sys.exit("cpu_core_numerics: this process may use one core only; the comparison needs two or more")
    base = os.environ.get("XLA_FLAGS", "")
    single = f"{base} {FLAG}".strip()
    plan = [("all_cores", every, base, False), ("all_cores_again", every, base, False),
            ("all_cores_busy", every, base, True), ("one_core", every[:1], base, False),
            ("all_cores_single_thread_eigen", every, single, False),
            ("one_core_single_thread_eigen", every[:1], single, False)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: variant(name, cores, flags, busy, args, tmp) for name, cores, flags, busy in plan}
    ops = {f"{n}_cores{' ' + FLAG if f != base else ''}": ops_variant(c, f)
           for n, c in ((1, every[:1]), (len(every), every)) for f in (base, single)}
    ref = runs["all_cores"]
    rows = [compare(ref, r) for r in runs.values()]
    rows.append(compare(runs["all_cores_single_thread_eigen"], runs["one_core_single_thread_eigen"])
                | {"name": "one_core_vs_all_cores_single_thread_eigen"})
    write_result("cpu_core_numerics", {**source, "steps": args.steps, "seed": args.seed, "batch": 32,
                                       "loss": "sigmoid", "split": "train", "cores_available": len(every),
                                       "runs": rows, "ops_md5": ops})
    print(json.dumps([{k: r[k] for k in ("name", "first_differing_step", "max_abs_param_diff")} for r in rows]))


if __name__ == "__main__":
    main()
