"""Device mesh, logical-axis rules and the shardings derived from them.

Models name their axes logically ('embed', 'mlp', 'heads', 'batch', ...); `config.sharding_rules` maps those names
onto the mesh axes `data`, `fsdp`, `tensor` (MaxText style), so one model definition serves data-parallel, FSDP
and tensor-parallel runs.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Default logical-axis rules. Parameter names and activation names are distinct so that the batch dimension and a
# parameter dimension never compete for the same mesh axis.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", "tensor"),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("kv", None),
    ("act_kv", None),
    ("act_embed", None),
    ("length", None),
    ("codebook", None),
    ("conv_in", None),
    ("layers", None),
)


def resolve_mesh_shape(shape: dict, num_devices: int) -> tuple:
    """Sizes of (data, fsdp, tensor) with at most one -1 filled in; raises naming `config.mesh`."""
    sizes = [int(shape[a]) for a in MESH_AXES]
    desc = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh ({desc}): at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh ({desc}): axis sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"config.mesh ({desc}): {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh ({desc}): axis sizes multiply to {math.prod(sizes)}, "
                         f"but there are {num_devices} devices")
    return tuple(sizes)


def make_mesh(shape: dict, devices: Sequence = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = resolve_mesh_shape(shape, len(devices))
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # simulated/odd topologies: plain order is fine
        arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES)


def rules_from_config(rules) -> tuple:
    return tuple((name, tuple(ax) if isinstance(ax, (list, tuple)) else ax) for name, ax in rules)


def batch_axes(mesh: Mesh) -> tuple:
    """The mesh axes a batch's leading dimension is split over: ('data', 'fsdp'), those of them `mesh` has (none
    for an empty mesh). The one place that names them: losses and tasks that place or reduce over the batch get
    them from here."""
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def data_parallel_size(mesh: Mesh) -> int:
    """Devices one batch is split over: the product of the `batch_axes` sizes."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def _fit_spec(spec: P, shape, mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (tiny test models, odd vocab sizes)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        kept, size = [], 1
        for a in names:
            if dim % (size * mesh.shape[a]) == 0:
                kept.append(a)
                size *= mesh.shape[a]
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return P(*out)


def logical_shardings(abstract_boxed, mesh: Mesh, rules) -> tuple:
    """(unboxed abstract tree, tree of NamedSharding) from an eval_shape'd tree of nn.Partitioned boxes."""
    specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    abstract = nn.meta.unbox(abstract_boxed)
    shardings = jax.tree.map(lambda x, s: NamedSharding(mesh, _fit_spec(s, x.shape, mesh)), abstract, mesh_specs,
                             is_leaf=lambda x: isinstance(x, P))
    return abstract, shardings


def like_params_shardings(tree, params_abstract, params_shardings, mesh: Mesh):
    """Shardings for an optimizer state: a leaf whose key path ends with a parameter's path and has that
    parameter's shape takes its sharding (Adam's mu/nu, momentum); anything else (adafactor's factored
    rows/columns, counts) is replicated.
    """
    by_path = {}
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0], jax.tree.leaves(params_shardings)):
        by_path[tuple(path)] = (x.shape, s)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        path = tuple(path)
        for i in range(len(path)):
            hit = by_path.get(path[i:])
            if hit is not None and hit[0] == getattr(leaf, "shape", None):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def unsharded_fraction(abstract, shardings) -> float:
    """Fraction of parameter bytes that every device holds whole (reported by the dry run). A spec naming only
    mesh axes of size 1 (P('fsdp') on a mesh with fsdp=1) replicates the parameter just as P() does."""
    total = rep = 0
    for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        n = x.size * x.dtype.itemsize
        total += n
        if s.is_fully_replicated:
            rep += n
    return rep / max(total, 1)
