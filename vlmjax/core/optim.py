"""optax optimizer from `config.optimizer` and `config.schedule`.

Parameter groups are chosen by regular expressions matched (`re.fullmatch`) against '/'-joined parameter paths such
as `img/encoder/block00/attn/query/kernel`:
- `optimizer.freeze`: parameters that never change (no optimizer state is kept for them);
- `optimizer.wd_mask`: parameters that get weight decay (default: kernels and embeddings, not biases/norms);
- `optimizer.lr_mults`: ((regex, multiplier), ...) — the first match scales that parameter's updates;
- `optimizer.param_dtype_mask`: parameters kept in `optimizer.param_dtype` (e.g. bfloat16) between steps, while the
  optimizer updates float32 master copies of them (`with_master_weights`).
"""
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "adafactor", "sgd")
PARAM_DTYPES = ("", "bfloat16")  # "": the model's own parameter dtype, no master copy
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")


def param_path(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def tree_paths(tree):
    """Same-structure tree of '/'-joined key paths."""
    return jax.tree_util.tree_map_with_path(lambda p, _: param_path(p), tree)


def _match(regex):
    return lambda path: regex is not None and re.fullmatch(regex, path) is not None


def make_schedule(cfg, total_steps: int, base_lr: float) -> Callable:
    """Warmup (linear from 0) then cosine / linear decay to `end_lr_frac * lr`, rsqrt, or constant."""
    warmup = int(cfg.warmup_steps)
    if cfg.name not in SCHEDULES:
        raise ValueError(f"config.schedule.name={cfg.name!r}: expected one of {', '.join(SCHEDULES)}")
    end = base_lr * float(cfg.end_lr_frac)
    decay_steps = max(total_steps - warmup, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = base_lr * jnp.minimum(1.0, (step + 1) / max(warmup, 1)) if warmup else base_lr
        t = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if cfg.name == "cosine":
            lr = end + (base_lr - end) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        elif cfg.name == "linear":
            lr = base_lr + (end - base_lr) * t
        elif cfg.name == "rsqrt":
            timescale = max(int(cfg.timescale), 1)
            lr = base_lr * jnp.sqrt(timescale / jnp.maximum(step - warmup + timescale, timescale))
        else:
            lr = jnp.asarray(base_lr, jnp.float32)
        return jnp.where(step < warmup, warm, lr)

    return schedule


def _scale_by_tree(factors_fn) -> optax.GradientTransformation:
    """Multiply each update by a per-parameter constant computed from the params' paths."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        factors = factors_fn(updates)
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors), state

    return optax.GradientTransformation(init, update)


class MasterWeightsState(NamedTuple):
    """The float32 master weights (every parameter, same tree) and the wrapped optimizer's state over them."""
    master: Any
    inner: Any


def with_master_weights(inner: optax.GradientTransformation, dtype=jnp.float32) -> optax.GradientTransformation:
    """`inner` run on `dtype` copies of the parameters kept in the optimizer state.

    The model's parameters may then be kept in a lower precision (`store_params`): the gradients it produces are
    cast up, `inner` updates the master copies, and the next parameters are the master rounded to each parameter's
    own dtype (`apply_updates`). Without a master copy a bfloat16 weight loses every update smaller than half its
    spacing (2^-9 of its magnitude).
    """

    def init(params):
        master = jax.tree.map(lambda p: p.astype(dtype), params)
        return MasterWeightsState(master, inner.init(master))

    def update(grads, state, params=None):
        del params
        grads = jax.tree.map(lambda g: g.astype(dtype), grads)
        updates, inner_state = inner.update(grads, state.inner, state.master)
        return updates, MasterWeightsState(optax.apply_updates(state.master, updates), inner_state)

    return optax.GradientTransformation(init, update)


def apply_updates(params, updates, opt_state):
    """The parameters after a step: with master weights, the new master rounded to each parameter's dtype (one
    rounding, not params + (new - params) in low precision); else `optax.apply_updates`."""
    if isinstance(opt_state, MasterWeightsState):
        return jax.tree.map(lambda m, p: m.astype(p.dtype), opt_state.master, params)
    return optax.apply_updates(params, updates)


def store_params(params, cfg):
    """`params` as the train state keeps them between steps: the floating leaves `cfg.param_dtype_mask` selects
    cast to `cfg.param_dtype` (float[...] -> bfloat16[...]); unchanged when `cfg.param_dtype` is empty."""
    if not cfg.get("param_dtype", ""):
        return params
    low, keep = jnp.dtype(cfg.param_dtype), _match(cfg.param_dtype_mask)
    return jax.tree.map(lambda p, path: p.astype(low) if keep(path) and jnp.issubdtype(p.dtype, jnp.floating) else p,
                        params, tree_paths(params))


def make_optimizer(cfg, schedule_cfg, total_steps: int) -> tuple:
    """(optax transform, learning-rate schedule) from config."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={cfg.name!r}: expected one of {', '.join(OPTIMIZERS)}")
    if cfg.get("param_dtype", "") not in PARAM_DTYPES:
        raise ValueError(f"config.optimizer.param_dtype={cfg.param_dtype!r}: expected '' (the model's own parameter "
                         f"dtype) or 'bfloat16' (bfloat16 parameters, float32 master weights in the optimizer)")
    patterns = [("wd_mask", cfg.wd_mask), ("freeze", cfg.freeze), ("param_dtype_mask", cfg.get("param_dtype_mask"))]
    patterns += [(f"lr_mults[{i}]", r[0]) for i, r in enumerate(cfg.lr_mults or ())]
    for key, regex in patterns:
        try:
            re.compile(regex or "")
        except re.error as e:
            raise ValueError(f"config.optimizer.{key}={regex!r}: not a regular expression ({e})") from None
    schedule = make_schedule(schedule_cfg, total_steps, float(cfg.lr))
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
    if cfg.name == "adamw":
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif cfg.name == "adafactor":
        parts.append(optax.scale_by_factored_rms(decay_rate=cfg.b2 if cfg.b2 < 1 else 0.8))
        if cfg.b1:
            parts.append(optax.trace(decay=cfg.b1))
    else:
        if cfg.momentum:
            parts.append(optax.trace(decay=cfg.momentum, nesterov=False))
    if cfg.weight_decay:
        wd_match = _match(cfg.wd_mask)
        parts.append(optax.add_decayed_weights(
            float(cfg.weight_decay), mask=lambda p: jax.tree.map(wd_match, tree_paths(p))))
    parts.append(optax.scale_by_learning_rate(schedule))
    mults = [(re.compile(r), float(m)) for r, m in (cfg.lr_mults or ())]
    if mults:
        def factor(path):
            for regex, m in mults:
                if regex.fullmatch(path):
                    return m
            return 1.0
        parts.append(_scale_by_tree(lambda u: jax.tree.map(factor, tree_paths(u))))
    tx = optax.chain(*parts)
    if cfg.freeze:
        frozen = _match(cfg.freeze)
        tx = optax.multi_transform(
            {"train": tx, "freeze": optax.set_to_zero()},
            lambda p: jax.tree.map(lambda path: "freeze" if frozen(path) else "train", tree_paths(p)))
    if cfg.get("param_dtype", ""):
        tx = with_master_weights(tx)
    return tx, schedule
