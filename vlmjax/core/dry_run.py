"""AOT dry run: compile the train step for N devices without running it, and report what a pod would hit.

    vlmjax-train --config EXPERIMENT --workdir /tmp/dry --dry_run --num_devices 64 [--target tpu_v5p]

Prints per-device memory (parameters, optimizer state, compiler temporaries), FLOPs per step, the sharding of every
parameter and the fraction of parameter bytes left unsharded (held whole by every device); fails with one message
when that fraction is above `--max_unsharded_fraction` on a mesh with an fsdp or tensor axis (a purely
data-parallel mesh replicates every parameter by design: reported, not an error), or when the per-device total
exceeds the target chip's memory. No data is read.
"""
import math

import jax
import numpy as np

from vlmjax.core.flops import CHIPS, cost_of, memory_of, per_device_bytes, step_flops
from vlmjax.core.mesh import batch_sharding, unsharded_fraction
from vlmjax.core.optim import param_path


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.3f} GiB"


def dry_run(config, target: str = "", max_unsharded_fraction: float = 0.5, show_params: int = 10_000) -> dict:
    from vlmjax.core.loop import Trainer

    trainer = Trainer(config, workdir="", open_data=False)
    cfg = trainer.config
    dummy = trainer.task.dummy_batch(1)
    bsh = batch_sharding(trainer.mesh)
    batch = {k: jax.ShapeDtypeStruct((cfg.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype, sharding=bsh)
             for k, v in dummy.items()}
    step = trainer.train_step_fn()
    with jax.set_mesh(trainer.mesh):
        compiled = step.lower(trainer.abstract_state, batch).compile()
        flops = step_flops(trainer.train_step_fn(jit=False), trainer.abstract_state, batch)
    st = trainer.abstract_state
    mem = memory_of(compiled)
    params_b, opt_b = per_device_bytes(st["params"]), per_device_bytes(st["opt_state"])
    ms_b = per_device_bytes(st["model_state"])
    total = mem.get("argument_size_in_bytes", params_b + opt_b) + mem.get("temp_size_in_bytes", 0)
    frac = unsharded_fraction(st["params"], jax.tree.map(lambda x: x.sharding, st["params"]))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(st["params"]))
    flat = jax.tree_util.tree_flatten_with_path(st["params"])[0]
    report = {"num_devices": trainer.mesh.size, "mesh": dict(trainer.mesh.shape), "num_params": n_params,
              "per_device_bytes": {"params": params_b, "optimizer": opt_b, "model_state": ms_b, **mem,
                                   "total": total},
              "flops_per_step_per_device": flops["model"] / trainer.mesh.size,
              "hardware_flops_per_step_per_device": flops["hardware"] / trainer.mesh.size,
              "xla_cost_analysis_flops": cost_of(compiled)["flops"], "unsharded_param_fraction": frac,
              "param_shardings": {param_path(path): str(x.sharding.spec) for path, x in flat}}
    model_parallel = trainer.mesh.shape["fsdp"] * trainer.mesh.shape["tensor"] > 1
    lines = [f"dry run: {trainer.mesh.size} devices, mesh {dict(trainer.mesh.shape)}, {n_params / 1e6:.2f}M params, "
             f"global batch {cfg.batch_size}",
             f"per device: params {_gib(params_b)}, optimizer {_gib(opt_b)}, model state {_gib(ms_b)}, "
             f"temporaries {_gib(mem.get('temp_size_in_bytes', 0))}, total {_gib(total)}",
             f"model FLOPs per step per device: {report['flops_per_step_per_device']:.4g} (with remat recompute "
             f"{report['hardware_flops_per_step_per_device']:.4g}; XLA's cost analysis: "
             f"{report['xla_cost_analysis_flops']:.4g}, it counts each scanned loop body once)",
             f"unsharded parameter bytes: {100 * frac:.1f}%" + (
                 "" if model_parallel else " (data-parallel mesh: every parameter replicated by design)"),
             "parameter shardings:"]
    for path, x in flat[:show_params]:
        lines.append(f"  {param_path(path):60s} {str(tuple(x.shape)):20s} {x.sharding.spec}")
    print("\n".join(lines), flush=True)
    if frac > max_unsharded_fraction and model_parallel:
        raise ValueError(f"dry run: {100 * frac:.1f}% of parameter bytes are unsharded (> "
                         f"{100 * max_unsharded_fraction:.0f}%): check config.sharding_rules / config.mesh")
    if target:
        if target not in CHIPS:
            raise ValueError(f"--target={target!r}: expected one of {', '.join(CHIPS)}")
        hbm_gib = CHIPS[target][1]
        if total > hbm_gib * 2 ** 30:
            raise ValueError(f"dry run: needs {_gib(total)} per device but a {target} has {hbm_gib} GiB: "
                             "it would not fit (more fsdp, remat, a smaller batch, or bf16)")
        print(f"fits on {target}: {_gib(total)} of {hbm_gib} GiB", flush=True)
    return report
