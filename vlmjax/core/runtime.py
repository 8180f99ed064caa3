"""What the core lends evaluators and the API: running functions on the mesh over host arrays.

`Runtime(mesh)` is the part that needs no data sources (the API's text embeddings); `SplitRuntime`
(vlmjax/core/split_runtime.py), which the Trainer extends, adds `predict_all` over a split (see
vlmjax/evaluators/base.py for the contract evaluators rely on).
"""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax.core.mesh import batch_axes, batch_sharding, data_parallel_size


class Runtime:
    """Places arrays on `mesh` (batch split over its batch axes) and runs jitted functions there."""

    _shared = {}  # mesh -> Runtime, for callers without a Trainer (the API): compiled functions are kept

    def __init__(self, mesh, rules=()):
        self.mesh, self.rules = mesh, rules
        self._array_fns = {}

    @classmethod
    def for_mesh(cls, mesh) -> "Runtime":
        """One Runtime per mesh, so that repeated calls reuse its compiled functions."""
        if mesh not in cls._shared:
            cls._shared[mesh] = cls(mesh)
        return cls._shared[mesh]

    @property
    def batch_axes(self) -> tuple:
        """Mesh axes the batch dimension is split over (vlmjax.core.mesh.batch_axes)."""
        return batch_axes(self.mesh)

    def predict_arrays(self, fn, variables, arrays, chunk: int = 256) -> np.ndarray:
        """`fn(variables, *arrays)` over host arrays of N rows each -> np.ndarray[N, ...].

        Rows go in chunks of min(chunk, N) rounded up to the data-parallel size (the last one zero-padded), each
        split over the batch axes; the output is gathered replicated and the padding rows dropped."""
        n = len(arrays[0])
        dp = data_parallel_size(self.mesh)
        chunk = -(-min(chunk, n) // dp) * dp
        if fn not in self._array_fns:
            self._array_fns[fn] = jax.jit(fn, out_shardings=NamedSharding(self.mesh, P()))
        sharding = batch_sharding(self.mesh)
        out = []
        with jax.set_mesh(self.mesh):
            for start in range(0, n, chunk):
                parts = [a[start:start + chunk] for a in arrays]
                parts = [np.pad(p, ((0, chunk - len(p)),) + ((0, 0),) * (p.ndim - 1)) for p in parts]
                args = [jax.make_array_from_callback(p.shape, sharding, lambda idx, p=p: p[idx]) for p in parts]
                out.append(np.asarray(self._array_fns[fn](variables, *args)))
        return np.concatenate(out)[:n]
