"""Naming the unknown: the one "did you mean" used by every check on user input (config keys, ops, variants,
tasks, evaluators, formats). Imports nothing from vlmjax, so every layer may use it."""
import difflib
from typing import Iterable


def did_you_mean(name, known: Iterable) -> str:
    """' (did you mean 'x'?)' for the closest of `known` to `name`, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(what: str, name, known: Iterable, where: str = "") -> ValueError:
    """ValueError "<where>: unknown <what> 'name' (did you mean ...?); known <what>s: a, b, c".

    `where` (e.g. 'config.model') prefixes the message when given; `known` is listed sorted."""
    known = sorted(str(k) for k in known)
    prefix = f"{where}: " if where else ""
    return ValueError(f"{prefix}unknown {what} {name!r}{did_you_mean(name, known)}; known {what}s: {', '.join(known)}")
