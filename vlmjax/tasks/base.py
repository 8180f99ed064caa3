"""The contract between the trainer core and a model family.

A task says how to build the model, what its variables look like, how to compute the loss and train metrics,
and which predict functions and evaluator kinds it offers (`vlmjax.evaluators` builds `config.evals` over them).
The core owns everything else: mesh, sharding, optimizer, loop, checkpoints, input pipeline, logging. Tasks never
import `vlmjax.core` and never place arrays on devices.

Batches are dicts of arrays whose leading dimension is the (global) batch. Model variables are
`{'params': ..., **collections}`: any collection other than 'params' (EMA codebooks, ...) is model state that the
loss may update; the core carries it in the train state and checkpoints it.
"""
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

Metrics = Dict[str, Any]


class Task:
    """Base class; subclasses override what their family needs."""

    # Model state collections updated by the loss (besides 'params'), e.g. ('vq_stats',).
    mutable: Sequence[str] = ()
    # Modules' rng streams used in training besides 'dropout'.
    rng_streams: Sequence[str] = ("dropout",)
    # Kinds of `config.evals.<name>.type` this task's predict fns serve (vlmjax.evaluators), in the order the
    # "this task offers ..." message lists them.
    eval_kinds: Sequence[str] = ()
    # Mesh axes the batch dimension is split over: set by the core once it has built the mesh (a loss that
    # communicates across the batch, e.g. the contrastive ring, names them); () = not sharded.
    batch_axes: Sequence[str] = ()

    def __init__(self, config):
        self.config = config
        self.frozen = {}  # name -> variables of a run named by frozen_runs(), filled by the core
        self._device_fn = _device_preprocess_fn(config)  # a bad spec fails here, before anything compiles

    @classmethod
    def config_defaults(cls) -> Dict[str, Any]:
        """Top-level config keys this task adds to the core schema, with their defaults (and so their types)."""
        return {}

    # -- set-up ---------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Checks that must pass before anything compiles (model keys, files). Raise ValueError naming the key.
        `config.evals` is checked once, by building the evaluators (vlmjax.evaluators.validate_and_build)."""

    def frozen_runs(self) -> Dict[str, tuple]:
        """{name: (workdir, config key)} of trained runs whose variables this task carries frozen (e.g. a VQ
        tokenizer). The core reads each one's latest checkpoint (`{'params', **model_state}` as host numpy) before
        `init` and puts it in `self.frozen[name]`."""
        return {}

    def read_features(self, data_cfg) -> Optional[list]:
        """The record fields `preprocess_fn(data_cfg)` can read, for the source to deserialise only those (the
        batches are the same); None: every field. A task whose preprocessing reads more than `data_cfg.preprocess`
        says so here."""
        from vlmjax.data.op_registry import features_read

        return features_read(data_cfg.preprocess)

    def preprocess_fn(self, data_cfg, train: bool) -> Callable:
        """Per-example preprocessing `fn(example, rng) -> dict` for a data config."""
        from vlmjax.data.ops import get_preprocess_fn

        return get_preprocess_fn(data_cfg.preprocess, tokenizer=self.tokenizer())

    def tokenizer(self):
        return None

    def dummy_batch(self, batch_size: int) -> Dict[str, np.ndarray]:
        """A host batch with the shapes and dtypes the model is initialised with."""
        raise NotImplementedError

    def init(self, rng, batch) -> Dict[str, Any]:
        """Model variables (boxed with logical axis names) for `batch`; run under eval_shape/jit by the core."""
        raise NotImplementedError

    # -- training -------------------------------------------------------------------------------------------------
    def device_preprocess(self, batch, rng):
        """Called by the core inside the jitted train step on the global train batch ({key: Array[B, ...]}, as the
        host pipeline made it), before `loss`; returns the batch the loss sees (`dummy_batch`'s shapes and dtypes).
        Default: the ops of `config.data.device_preprocess` in order (`vlmjax.data.device_ops`); none: unchanged."""
        if getattr(self, "_device_fn", None) is None:  # a subclass whose __init__ skipped Task's
            self._device_fn = _device_preprocess_fn(self.config)
        return self._device_fn(batch, rng)

    def loss(self, params, state, batch, rngs, step):
        """(scalar loss, (metrics dict of scalars, new model state dict)). `state` holds the non-param collections."""
        raise NotImplementedError

    def check_batch(self, batch: Dict[str, np.ndarray], where: str) -> None:
        """Host-side checks on each batch before it is sent to devices (e.g. no supervised token)."""

    # -- evaluation / inference ----------------------------------------------------------------------------------
    def predict_fns(self) -> Dict[str, Callable]:
        """{name: jit-able fn(variables, ...)}: what evaluators and the API run."""
        return {}


def _device_preprocess_fn(config) -> Callable:
    from vlmjax.data.device_ops import get_device_preprocess_fn

    data = config.get("data") if hasattr(config, "get") else None
    try:
        return get_device_preprocess_fn(data.get("device_preprocess", []) if data is not None else [])
    except ValueError as e:
        raise ValueError(f"config.data.{e}") from None
