"""The preprocess-op contract, its registry, and the helpers every op family uses.

An op builder `builder(**kwargs) -> op` checks its arguments once and returns `op(example, rng) -> example`: a pure
function of the example (a dict of numpy values) and the shared `np.random.Generator`. An op that meets a record it
cannot use raises `DropExample(reason)`; the pipeline drops the example and counts the reason.

Families of ops register their builders here with `@register(name)` (the host ops: `ops`, `filters`, `negatives`,
`chat_ops`, all imported by `vlmjax.data.ops`) or into their own table (`device_ops`). `build_from_registry` turns
one spec `{'op': NAME, **kwargs}` into an op, with a message naming the spec for every mistake in it.

Helpers for writing ops: `get(example, key)` (a KeyError that lists the keys there are), `as_text(value)` (str of a
str, bytes or 0-d array field), `image_hw(size)` and the `in_key_out_key` decorator for an op that reads one field
and writes one.
"""
import functools
import inspect
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from vlmjax.names import unknown

Example = Dict[str, object]
Op = Callable[[Example, np.random.Generator], Example]


class DropExample(Exception):
    """Raised by an op for a record that cannot be used; `reason` is a short snake_case tag that gets counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


OPS: Dict[str, Callable[..., Op]] = {}
# host op name -> reads(arguments) -> the fields the op may read (its builder's arguments, defaults filled in)
READS: Dict[str, Callable[[dict], Iterable[str]]] = {}


def register(name: str, registry: Optional[Dict[str, Callable]] = None, reads: Optional[Callable] = None):
    """Register an op builder `fn(**kwargs) -> op(example, rng) -> example` under `name` (in `registry`: another
    family of ops, e.g. the device ops; default `OPS`, the host ops). `reads(arguments)` lists every field a host
    op may read (an `in_key_out_key` op declares its `key`); an op that declares none makes `features_read` read
    every field of the records."""

    def deco(fn):
        (OPS if registry is None else registry)[name] = fn
        declared = reads or getattr(fn, "reads", None)
        if registry is None and declared is not None:
            READS[name] = declared
        return fn

    return deco


# ---- helpers for op builders -------------------------------------------------------------------------------------
def get(example: Example, key: str):
    """example[key]; a missing key raises KeyError naming the keys the example has."""
    try:
        return example[key]
    except KeyError:
        raise KeyError(f"preprocess: example has no key {key!r}; it has {sorted(example)}") from None


def as_text(value) -> str:
    """str of a text field: str, bytes / np.bytes_ (UTF-8), or a 0-d array holding either."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def image_hw(size) -> tuple:
    """(h, w) ints of an image size given as an int or [h, w]; ValueError unless both are positive ints."""
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or [h, w], got {size!r}")
    return int(hw[0]), int(hw[1])


def in_key_out_key(builder: Callable) -> Callable:
    """Decorator for an op that reads one field and writes one.

    `builder(..., key=..., [out=None])` returns `fn(value, rng) -> new value`; the decorated builder (same
    signature, so the same spec arguments) returns the op `example -> {**example, out or key: fn(example[key],
    rng)}`. `builder` still receives `key` (and `out`), e.g. for its messages."""
    signature = inspect.signature(builder)
    if "key" not in signature.parameters:
        raise TypeError(f"in_key_out_key: {builder.__name__} has no `key` parameter")

    @functools.wraps(builder)  # keeps the signature: build_from_registry checks spec arguments against it
    def wrapped(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = bound.arguments["key"]
        out = bound.arguments.get("out") or key
        fn = builder(*args, **kwargs)
        return lambda ex, rng: {**ex, out: fn(get(ex, key), rng)}

    wrapped.reads = lambda args: [args["key"]]
    return wrapped


# ---- specs -------------------------------------------------------------------------------------------------------
def spec_dict(spec) -> dict:
    """A spec (dict or ConfigDict) as a plain dict."""
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


def build_from_registry(registry: Dict[str, Callable], section: str, i: int, spec, **context):
    """`registry[spec['op']](**args)`; ValueError "<section>[i] ('name'): ..." naming the unknown op, argument or
    missing argument. `context` fills the builder's keyword-only parameters it declares (e.g. `tokenizer`)."""
    try:
        spec = spec_dict(spec)
    except (TypeError, ValueError):
        raise ValueError(f"{section}[{i}]: expected a dict {{'op': NAME, ...}}, got {spec!r}") from None
    kwargs = dict(spec)
    name = kwargs.pop("op", None)
    if name not in registry:
        raise unknown("op", name, registry, where=f"{section}[{i}]")
    where = f"{section}[{i}] ({name!r})"
    params = inspect.signature(registry[name]).parameters
    allowed = [p for p, v in params.items() if v.kind != inspect.Parameter.KEYWORD_ONLY]
    for arg in kwargs:
        if arg not in allowed:
            raise ValueError(f"{where}: unknown argument {arg!r}; expected one of: {', '.join(allowed)}")
    for p in allowed:
        if params[p].default is inspect.Parameter.empty and p not in kwargs:
            raise ValueError(f"{where}: missing argument {p!r}")
    kwargs.update({k: v for k, v in context.items() if k in params})
    try:
        return registry[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def names(keys) -> List[str]:
    """A key argument given as one name or a list of names, as a list."""
    return [keys] if isinstance(keys, str) else list(keys)


def features_read(specs) -> Optional[List[str]]:
    """The top-level record fields a host preprocess (a spec list) can read, sorted; None when that is not known,
    and every field must be read: no `keep` op, or an op before the last `keep` that declares no `reads`.

    Liveness, kept conservative: what the last `keep` keeps plus everything any op before it may read, whether or
    not a later op overwrites it. A tfds source deserialises only the fields these name, a nested name
    ('captions/text', after flattening) naming its top-level field (vlmjax/data/sources/tfds.py)."""
    specs = [spec_dict(s) for s in specs or []]
    last = max((i for i, s in enumerate(specs) if s.get("op") == "keep"), default=None)
    if last is None:
        return None
    needed = set(names(specs[last].get("keys", ())))
    for spec in specs[:last]:
        args = dict(spec)
        name = args.pop("op", None)
        if name not in READS:
            return None
        try:
            bound = inspect.signature(OPS[name]).bind(**args)
        except TypeError:  # a bad spec: validate_specs names it; read everything meanwhile
            return None
        bound.apply_defaults()
        needed.update(k for k in READS[name](bound.arguments) if k)
    return sorted(needed)
