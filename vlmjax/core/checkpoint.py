"""Checkpoints with orbax: the train state and the input iterator's state, saved together under one step.

`workdir/checkpoints/<step>/{state,data}`; saves are asynchronous (the next steps run while the arrays are
written), orbax commits a step atomically, and the last `keep` steps are kept. Restoring onto the current mesh's
shardings means a run can resume on a different mesh.
"""
import os
import re
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from vlmjax.models import foreign
from vlmjax.core.optim import param_path
from vlmjax.core.restore_check import (StateMismatchError, UnreadableCheckpoint, is_unreadable,
                                         state_mismatch)


_TS_WRITE_ERROR = re.compile(r"RESOURCE_EXHAUSTED|PERMISSION_DENIED|No space left on device|Read-only file system")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only or unwritable directory)."""


def multihost_sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(save_interval_steps=max(int(every_steps), 1), max_to_keep=keep,
                                               enable_async_checkpointing=async_save, create=True)
        # Handlers named up front, so that a step's metadata (shapes) can be read before its arrays.
        self.mngr = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                         "data": ocp.JsonCheckpointHandler()})
        self._in_flight, self._reported = None, False
        _drop_orphaned_callback_reports()  # before any failure: the reports can come before the exception

    def latest_step(self):
        return self.mngr.latest_step()

    def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
        """Start saving `step` (async). A failed write -- of this step or of the one still in flight -- raises
        CheckpointWriteError naming the step and the last complete checkpoint, which is left intact."""
        if not (force or self.mngr.should_save(step)):
            return False
        self.wait()  # orbax would wait for the save in flight here anyway; its failure is that step's
        try:
            saved = self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 data=ocp.args.JsonSave(data_state)), force=force)
        except Exception as e:  # noqa: BLE001 -- only file-system failures are rewritten, see _write_error
            raise self._write_error(e, step) from e
        self._in_flight = step if saved else None
        return saved

    def restore(self, step: int, abstract_state):
        """abstract_state: tree of jax.ShapeDtypeStruct with `.sharding` -> (state placed on those shardings, data)."""
        out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                              data=ocp.args.JsonRestore()))
        return out.state, out.data

    def check_structure(self, step: int, abstract_state) -> None:
        """Raise StateMismatchError naming the leaves when checkpoint `step` holds a train state of another structure
        or other shapes than `abstract_state` (read from its metadata, before any array);
        UnreadableCheckpoint when that metadata is missing."""
        meta = self.mngr.item_metadata(step)["state"]
        if meta is None:
            raise UnreadableCheckpoint(f"no readable state/_METADATA in {os.path.join(self.directory, str(step))}")
        diff = state_mismatch(getattr(meta, "tree", meta), abstract_state)
        if diff:
            raise StateMismatchError(
                f"checkpoint {os.path.join(self.directory, str(step))} holds a train state that does not fit this "
                f"config ({'; '.join(diff)}); nothing was moved or deleted. Was the config changed? Use a new "
                f"--workdir, or the config the checkpoints were written with")

    def restore_latest(self, abstract_state, warn=print):
        """(step, state, data) from the newest checkpoint that restores, or None if there is none.

        Only a checkpoint whose data cannot be read (`restore_check.is_unreadable`: truncated or missing files,
        a missing item, bad JSON) is reported by name, moved aside to `checkpoints_corrupt/` (kept, not deleted),
        and the previous one tried. Any other failure -- a state of another structure, a bug -- is raised with
        every checkpoint left in place; so is the case where checkpoints exist and none is readable. A run never
        silently starts from step 0 in a workdir that has checkpoints.
        """
        steps = sorted(self.mngr.all_steps(), reverse=True)
        moved = []
        for step in steps:
            path = os.path.join(self.directory, str(step))
            try:
                self.check_structure(step, abstract_state)
                state, data = self.restore(step, abstract_state)
                error = None
            except Exception as e:  # noqa: BLE001 -- sorted below: damage falls back, anything else is raised
                error = e
            unreadable = error is not None and is_unreadable(error)
            any_unreadable, any_other = _any_process([unreadable, error is not None and not unreadable])
            if any_other:
                if isinstance(error, StateMismatchError):
                    raise error
                raise RuntimeError(f"checkpoint {path} could not be restored, and not because its files are "
                                   f"damaged ({_first_line(error) if error else 'failed on another process'}); "
                                   f"nothing was moved or deleted") from error
            if not any_unreadable:
                return step, state, data
            aside = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt", f"{step}-{int(time.time())}")
            warn(f"WARNING: checkpoint {path} is unreadable "
                 f"({_first_line(error) if error else 'on another process'}); moved to {aside}, "
                 f"trying the previous one")
            if jax.process_index() == 0:
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(path, aside)
            multihost_sync(f"moved_corrupt_{step}")
            self.mngr.reload()
            moved.append(aside)
        if moved:
            raise FileNotFoundError(  # the CLI prints it as one line and exits 2
                f"no checkpoint in {self.directory} is readable: moved {', '.join(moved)} aside (kept). Nothing "
                f"was trained. Use a new --workdir; re-running this command would start from step 0 here")
        return None

    def wait(self):
        try:
            self.mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(e, self._in_flight) from e
        self._in_flight = None

    def close(self):
        """Wait for a save in flight, then stop orbax's threads and event loop (also after an error: without this
        an exit prints asyncio 'Event loop is closed' tracebacks). A write failure already raised by `save` is
        not raised again."""
        try:
            self.wait()
        except CheckpointWriteError:
            if not self._reported:
                raise
        finally:
            self.mngr.close()

    def _write_error(self, e: BaseException, step):
        """CheckpointWriteError when the file system refused the write (disk full, read-only, permissions: an
        OSError, or tensorstore's RESOURCE_EXHAUSTED / PERMISSION_DENIED with the OS error); else `e` itself."""
        if isinstance(e, CheckpointWriteError):
            return e
        cause, reason = e, None
        while cause is not None and reason is None:
            if isinstance(cause, OSError):
                reason = (cause.errno, cause.strerror or str(cause))
            else:
                m = _TS_WRITE_ERROR.search(str(cause))
                if m:
                    code = re.search(r"os_error_code='(\d+)'", str(cause))
                    errno_ = int(code.group(1)) if code else None
                    reason = (errno_, os.strerror(errno_) if errno_ else m.group(0))
            cause = cause.__cause__ or cause.__context__
        if reason is None:
            return e
        self._reported = True
        done = [int(d) for d in os.listdir(self.directory) if d.isdigit()] if os.path.isdir(self.directory) else []
        last = f"step {max(done)} in {self.directory}, intact" if done else "none"
        return CheckpointWriteError(
            reason[0], f"checkpoint step {step} could not be written to {self.directory} ({reason[1]}); the last "
            f"complete checkpoint is {last}. Free space or fix the permissions, then re-run the same command to "
            f"resume from it")


def _orphaned_callback(exc, tb) -> bool:
    """Whether `exc` is asyncio's 'Event loop is closed' raised in `call_soon_threadsafe`: a tensorstore read or
    write of a failed checkpoint operation finishing after orbax closed its event loop, with no one awaiting it."""
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


def _drop_orphaned_callback_reports() -> None:
    """After a failed restore or save, tensorstore still finishes the operation's other reads/writes and posts
    each result to the event loop orbax has already closed; asyncio then prints a 'RuntimeError: Event loop is
    closed' traceback for each (through sys.unraisablehook or sys.excepthook, often at exit). Drop exactly these
    reports; everything else goes to the previous hooks."""
    if getattr(sys.unraisablehook, "drops_orphaned_callbacks", False):
        return
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable_hook(u):
        if not _orphaned_callback(u.exc_value, u.exc_traceback):
            previous_unraisable(u)

    def except_hook(kind, value, tb):
        if not _orphaned_callback(value, tb):
            previous_except(kind, value, tb)

    unraisable_hook.drops_orphaned_callbacks = True
    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def _any_process(flags: list) -> list:
    """Each flag, true on every process when it is true on any: all processes fall back or stop together."""
    if jax.process_count() == 1:
        return [bool(f) for f in flags]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array(flags, np.int32))
    return [bool(x) for x in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0)]


def read_variables(workdir: str, keys=("params",), step: int = None, where: str = "config.init_from.workdir"):
    """(step, {key: subtree}) of another run's train state as host numpy arrays (latest step by default).

    The one reader of a finished run for every caller (init_from, tasks that carry a frozen model, the CLIs, the
    Python API). Only the named top-level keys of the state are read, or a named subtree one level below one
    ('opt_state/master') (`partial_restore`; keys the checkpoint lacks, e.g. an empty `model_state`, are left out):
    the optimizer's moments are never loaded, and the arrays land on the host whatever mesh wrote them. `where`
    names the setting that pointed here in the errors.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{where}={workdir!r}: no checkpoints directory at {directory}")
    # Handlers named up front: without them a read-only manager returns no metadata for the items.
    mngr = ocp.CheckpointManager(directory, item_names=("state", "data"),
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                "data": ocp.JsonCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{where}={workdir!r}: no finished checkpoint in {directory}")
        meta = mngr.item_metadata(step)["state"]
        meta = getattr(meta, "tree", meta)
        wanted = {}
        for key in keys:  # 'opt_state/master': a subtree below a top-level key
            top, _, sub = key.partition("/")
            node = meta.get(top)
            if sub and isinstance(node, dict) and sub in node:
                wanted.setdefault(top, {})[sub] = node[sub]
            elif not sub and node is not None:
                wanted[top] = node
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=wanted, restore_args=restore_args, partial_restore=True))).state
    finally:
        mngr.close()
    return step, dict(state)


def load_params_numpy(workdir: str, step: int = None) -> dict:
    """The params of another run's checkpoint (latest step by default) as host numpy arrays (`read_variables`).
    A run that kept bfloat16 parameters with float32 master weights (`config.optimizer.param_dtype`) gives its
    master weights: the values its optimizer updated, of which its parameters are the rounding."""
    state = read_variables(workdir, ("params", "opt_state/master"), step)[1]
    return state.get("opt_state", {}).get("master", state["params"])


def check_init_from(init) -> None:
    """`config.init_from` names one source: `workdir` (a vlmjax run) or `path` + `format` (imported weights, one of
    `vlmjax.models.foreign.FORMATS`)."""
    if init.workdir and init.path:
        raise ValueError(f"config.init_from: set workdir={init.workdir!r} (a vlmjax run) or path={init.path!r} "
                         f"(imported weights), not both")
    if init.path or init.format:
        if init.format not in foreign.FORMATS:
            raise ValueError(f"config.init_from.format={init.format!r}: expected one of {', '.join(foreign.FORMATS)} "
                             f"for config.init_from.path={init.path!r}")
        if not init.path:
            raise ValueError(f"config.init_from.format={init.format!r} needs config.init_from.path (a .safetensors / "
                             f".bin / .npz file or a HF model folder)")
        if not os.path.exists(os.path.expanduser(init.path)):
            raise FileNotFoundError(f"config.init_from.path={init.path!r}: no such file or folder")


def _source_paths(params, include: str, rewrite) -> dict:
    """{source path (after `rewrite`): shape} for the leaves of `params` that `include` selects."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        target = param_path(path)
        if re.fullmatch(include, target):
            for pattern, repl in rewrite:
                target = re.sub(pattern, repl, target)
            out[target] = tuple(leaf.shape)
    return out


def load_imported_params(init, params) -> dict:
    """Nested host params read from `init.path` in `init.format` by the model that owns the format
    (`vlmjax.models.foreign`), in the layout of the leaves of `params` that `init_from` selects."""
    template = _source_paths(params, init.include, [tuple(r) for r in init.rewrite])
    try:
        return foreign.load(init.format, os.path.expanduser(init.path), template)
    except (ValueError, KeyError) as e:
        raise ValueError(f"config.init_from.path={init.path!r} (format {init.format!r}): {e}") from None


def merge_params(params, loaded, include: str, rewrite, where: str = "config.init_from"):
    """Replace leaves of `params` whose path matches `include` by `loaded[source path]`.

    The source path is the target path after the `rewrite` substitutions ((pattern, replacement), ...), so one
    tower can be taken from a run whose parameters sat at the top level (e.g. `(('^img/', ''),)`).
    Returns (new params, list of the loaded paths). Raises naming the path on a missing or misshapen source.
    """
    flat_loaded = {param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    taken = []

    def pick(path, leaf):
        target = param_path(path)
        if not re.fullmatch(include, target):
            return leaf
        source = target
        for pattern, repl in rewrite:
            source = re.sub(pattern, repl, source)
        if source not in flat_loaded:
            raise KeyError(f"{where}: parameter {target!r} (source {source!r}) is not in the loaded checkpoint; "
                           f"it has e.g. {sorted(flat_loaded)[:5]}")
        value = flat_loaded[source]
        if tuple(value.shape) != tuple(leaf.shape):
            raise ValueError(f"{where}: parameter {target!r} has shape {tuple(leaf.shape)} but the checkpoint's "
                             f"{source!r} has {tuple(value.shape)}")
        taken.append(target)
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, params), taken
