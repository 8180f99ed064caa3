"""The one training loop every task runs through.

Order of work, so that every configuration mistake surfaces before anything compiles: resolve + validate the
config, build the task (model keys), check mesh and batch against the devices, open the data sources, then
create the train state already sharded (eval_shape -> shardings from logical axes -> jit with out_shardings),
restore or initialise, and run jitted steps with the state donated.
"""
import importlib.util
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax.data import ops as data_ops
from vlmjax.data.batching import check_not_importing_main
from vlmjax.data.pipeline import Component, TrainIterator, check_mixture, make_source
from vlmjax.evaluators import validate_and_build
from vlmjax.tasks import get_task_class
from vlmjax.core import compile_cache, config as config_lib
from vlmjax.core.batch_feed import BatchFeed, device_prefetch
from vlmjax.core.checkpoint import (Checkpointer, check_init_from, load_imported_params, load_params_numpy,
                                     merge_params, read_variables)
from vlmjax.core.distributed import PreemptionWatcher
from vlmjax.core.flops import peak_flops, step_flops
from vlmjax.core.input_wait import InputWait
from vlmjax.core.mesh import (batch_sharding, data_parallel_size, like_params_shardings, logical_shardings, make_mesh,
                               rules_from_config)
from vlmjax.core.metrics import MetricWriter, Progress, log
from vlmjax.core.optim import apply_updates, make_optimizer, store_params
from vlmjax.core.profiling import StepProfiler
from vlmjax.core.restore_check import check_resume_config
from vlmjax.core.run_paths import record_launch_dir
from vlmjax.core.split_runtime import SplitRuntime


class Trainer(SplitRuntime):
    """Holds the compiled pieces of one experiment; `run()` trains, `evaluate()` runs the evaluators (it is the
    `runtime` they run on: vlmjax/evaluators/base.py)."""

    allow_config_change = False  # resume a workdir under a changed lr, total_steps, ... (restore_check.WITH_FLAG)

    def __init__(self, config, workdir: str, devices=None, open_data=True):
        """`open_data`: True opens the train and eval splits now, 'eval' only the eval splits, False none (the
        eval splits open when first read)."""
        task_cls = get_task_class(config.get("task", ""))
        self.config = cfg = config_lib.resolve(config, getattr(task_cls, "config_defaults", dict)())
        config_lib.fill_eval_data(cfg)
        self.workdir = workdir
        for where, specs in [("config.data.preprocess", cfg.data.preprocess)] + [
                (f"config.data.mixture.{n}.preprocess", c.preprocess) for n, c in cfg.data.mixture.items()
                if "preprocess" in c] + [
                (f"config.evals.{n}.data.preprocess", e.data.preprocess) for n, e in cfg.evals.items()]:
            try:
                data_ops.validate_specs(specs)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        check_init_from(cfg.init_from)
        if cfg.wandb.project and importlib.util.find_spec("wandb") is None:
            raise ValueError(f"config.wandb.project={cfg.wandb.project!r}: the wandb package is not installed "
                             f"(pip install wandb), or leave config.wandb.project empty")
        self.task = task_cls(cfg)
        self.evaluators = validate_and_build(self.task)  # config.evals checked once, and kept
        devices = jax.devices() if devices is None else list(devices)
        config_lib.check_runtime(cfg, len(devices), jax.process_count())
        super().__init__(make_mesh(cfg.mesh, devices), rules_from_config(cfg.sharding_rules))
        self.task.batch_axes = self.batch_axes
        self._log_eval_padding()
        if open_data:  # a missing split fails now, not after an hour of training
            if open_data != "eval" and cfg.total_steps > 0:  # total_steps=0 evaluates only: no train data
                self.train_sources = {name: self._train_source(name, dc)
                                      for name, _, dc in config_lib.mixture_components(cfg.data)}
            for name, ev in cfg.evals.items():
                self._eval_source(ev.data)
        self.tx, self.schedule = make_optimizer(cfg.optimizer, cfg.schedule, max(cfg.total_steps, 1))
        self._load_frozen_runs()
        self._build_state_shardings()
        self._train_step = None
        self._compiled = None

    # -- state -----------------------------------------------------------------------------------------------------
    def _load_frozen_runs(self):
        """The trained runs the task carries frozen (Task.frozen_runs), read once, before init."""
        for name, (workdir, where) in self.task.frozen_runs().items():
            if name not in self.task.frozen:
                _, state = read_variables(workdir, ("params", "model_state"), where=where)
                self.task.frozen[name] = {"params": state["params"], **state.get("model_state", {})}

    def _dummy(self):
        return jax.tree.map(jnp.asarray, self.task.dummy_batch(data_parallel_size(self.mesh)))

    def _init_variables(self, rng):
        with nn.logical_axis_rules(self.rules):
            return self.task.init(rng, self._dummy())

    def _build_state_shardings(self):
        rng = jax.random.key(self.config.seed)
        with jax.set_mesh(self.mesh):
            boxed = jax.eval_shape(self._init_variables, rng)
        params_abs, params_sh = logical_shardings(boxed["params"], self.mesh, self.rules)
        ms_abs, ms_sh = logical_shardings({k: v for k, v in boxed.items() if k != "params"}, self.mesh, self.rules)
        opt_abs = jax.eval_shape(self.tx.init, params_abs)
        self.params_dtypes = jax.tree.map(lambda a: a.dtype, params_abs)  # before store_params: what init_from reads
        params_abs = jax.eval_shape(lambda p: store_params(p, self.config.optimizer), params_abs)
        replicated = NamedSharding(self.mesh, P())
        self.state_shardings = {"step": replicated, "nonfinite": replicated, "params": params_sh, "model_state": ms_sh,
                                "opt_state": like_params_shardings(opt_abs, params_abs, params_sh, self.mesh)}
        abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "nonfinite": jax.ShapeDtypeStruct((), jnp.int32),
                    "params": params_abs, "model_state": ms_abs,
                    "opt_state": opt_abs}
        self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                           abstract, self.state_shardings)

    def init_state(self):
        """A fresh train state, created directly in its sharded layout (never whole on one device)."""

        def create(rng):
            variables = nn.meta.unbox(self._init_variables(rng))
            params = variables.pop("params")
            return {"step": jnp.zeros((), jnp.int32), "nonfinite": jnp.zeros((), jnp.int32),
                    "params": store_params(params, self.config.optimizer), "model_state": dict(variables),
                    "opt_state": self.tx.init(params)}  # master weights (if any) from the full-precision init

        with jax.set_mesh(self.mesh):
            state = jax.jit(create, out_shardings=self.state_shardings)(jax.random.key(self.config.seed))
        init = self.config.init_from
        if init.workdir or init.path:
            current = jax.tree.map(lambda x, d: np.asarray(x).astype(d), jax.device_get(state["params"]),
                                   self.params_dtypes)
            loaded = load_params_numpy(init.workdir) if init.workdir else load_imported_params(init, current)
            params, taken = merge_params(current, loaded, init.include, [tuple(r) for r in init.rewrite])
            log(f"init_from {init.workdir or f'{init.path} ({init.format})'}: loaded {len(taken)} parameters")
            state = self.with_params(state, params)
        return state

    def with_params(self, state, params):
        """`state` with these parameters (host or device arrays in the model's own dtypes, e.g. imported weights)
        and a fresh optimizer state for them: master weights, if kept, from `params` before `store_params`."""
        params = jax.device_put(params, self.state_shardings["params"])
        opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
        stored = jax.jit(lambda p: store_params(p, self.config.optimizer),
                         out_shardings=self.state_shardings["params"])(params)
        return {**state, "params": stored, "opt_state": opt_state}

    # -- step ------------------------------------------------------------------------------------------------------
    def train_step_fn(self, jit: bool = True):
        """The train step `(state, batch) -> (state, metrics)`, jitted with the state's shardings and donated
        (`jit=False`: the plain function, e.g. to trace for FLOPs)."""
        task, tx, cfg = self.task, self.tx, self.config
        accum = int(cfg.optimizer.grad_accum_steps)
        base_key = jax.random.key(cfg.seed + 1)

        def grads_of(params, model_state, batch, rng, step):
            rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(task.rng_streams)}
            (loss, (metrics, new_ms)), grads = jax.value_and_grad(task.loss, has_aux=True)(
                params, model_state, batch, rngs, step)
            return loss, metrics, new_ms, grads

        def step_fn(state, batch):
            step = state["step"]
            rng = jax.random.fold_in(base_key, step)
            batch = task.device_preprocess(batch, jax.random.fold_in(rng, 1 << 30))  # a stream of its own
            params = state["params"]
            with nn.logical_axis_rules(self.rules):
                if accum == 1:
                    loss, metrics, model_state, grads = grads_of(params, state["model_state"], batch, rng, step)
                else:
                    # Microbatch j takes rows j, j+accum, ...: every device keeps its share of each microbatch.
                    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]),
                                                                0, 1), batch)

                    def body(carry, xs):
                        ms, gsum, lsum, msum = carry
                        mb, j = xs
                        loss, m, ms, g = grads_of(params, ms, mb, jax.random.fold_in(rng, j), step)
                        return (ms, jax.tree.map(jnp.add, gsum, g), lsum + loss,
                                jax.tree.map(jnp.add, msum, m)), None

                    m_shape = jax.eval_shape(lambda: grads_of(params, state["model_state"],
                                                              jax.tree.map(lambda x: x[0], micro), rng, step)[1])
                    # gradients summed in float32 even for bfloat16 parameters
                    zeros = (state["model_state"], jax.tree.map(lambda p: jnp.zeros(
                        p.shape, jnp.promote_types(p.dtype, jnp.float32)), params), jnp.zeros(()),
                             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape))
                    (model_state, grads, loss, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
                    grads = jax.tree.map(lambda g: g / accum, grads)
                    loss = loss / accum
                    metrics = jax.tree.map(lambda m: m / accum, metrics)
            updates, opt_state = tx.update(grads, state["opt_state"], params)
            new = {"params": apply_updates(params, updates, opt_state), "model_state": model_state,
                   "opt_state": opt_state}
            grad_norm = optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
            # A non-finite loss or gradient never reaches the state: the step is dropped and counted, and the
            # host decides (config.nan_policy) whether to stop or go on.
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            old = {"params": params, "model_state": state["model_state"], "opt_state": state["opt_state"]}
            new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
            out = {"train/loss": loss, "train/lr": self.schedule(step), "train/grad_norm": grad_norm,
                   "train/param_norm": optax.tree.norm(new["params"])}
            out.update({f"train/{k}": v for k, v in metrics.items()})
            nonfinite = state["nonfinite"] + (~ok).astype(jnp.int32)
            out["train/nonfinite_steps"] = nonfinite
            return {"step": step + 1, "nonfinite": nonfinite, **new}, out

        if not jit:
            return step_fn
        return jax.jit(step_fn, in_shardings=(self.state_shardings, batch_sharding(self.mesh)),
                       out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())), donate_argnums=(0,))

    def compile_step(self, state, gbatch):
        """Compile the train step for these shapes ahead of time; sets `step_flops` ({'model', 'hardware'} FLOPs
        per device per step, counted on the jaxpr: vlmjax.core.flops) and returns the compiled step."""
        if self._train_step is None:
            self._train_step = self.train_step_fn()
        hits, t = compile_cache.counts()["hits"], time.perf_counter()
        with jax.set_mesh(self.mesh):
            self._compiled = self._train_step.lower(state, gbatch).compile()
            self.compile_s = time.perf_counter() - t
            self.compile_cache_hit = compile_cache.counts()["hits"] > hits
            flops = step_flops(self.train_step_fn(jit=False), state, gbatch)
        self.step_flops = {k: v / self.mesh.size for k, v in flops.items()}
        return self._compiled

    # -- loop ------------------------------------------------------------------------------------------------------
    def _write_run_record(self) -> None:
        """Process 0 writes the resolved config.json and the launch directory, against which the config's relative
        paths resolve from anywhere (run_paths.py)."""
        if jax.process_index() == 0:
            with open(os.path.join(self.workdir, "config.json"), "w") as f:
                f.write(config_lib.to_json(self.config))
            record_launch_dir(self.workdir)

    def _evaluate_initial(self) -> dict:
        """`total_steps=0`: evaluate the initial state (init_from's imported or copied weights), log it at step 0
        and checkpoint it, so `vlmjax-eval`, `vlmjax.load` and the other tools can use the workdir. No train data."""
        cfg = self.config
        ckpt = Checkpointer(self.workdir, 1, cfg.checkpoint.keep, async_save=False)
        writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0, wandb_cfg=cfg.wandb, config=cfg)
        try:
            restored = ckpt.restore_latest(self.abstract_state, warn=log)
            state = restored[1] if restored is not None else self.init_state()
            self._write_run_record()
            with jax.set_mesh(self.mesh):
                final = self.evaluate(state, 0, writer, only=True)
            writer.write(0, final)
            if restored is None:
                ckpt.save(0, state, {}, force=True)
        finally:
            ckpt.close()
            writer.close()
        self.state = state
        return final

    def _train_source(self, component: str, data_cfg):
        """The source of config.data, or of mixture `component` (its errors then say which component)."""
        try:
            return make_source(data_cfg, data_cfg.split, self.task.read_features(data_cfg))
        except (ValueError, FileNotFoundError) as e:
            if not component:
                raise
            raise type(e)(f"config.data.mixture.{component}: {e}") from None

    def _train_data(self) -> tuple:
        """(source, preprocess) of config.data, or ([Component, ...], None) of config.data.mixture, whose examples
        are checked to batch together here, before anything compiles."""
        comps = config_lib.mixture_components(self.config.data)
        parts = [Component(name, self.train_sources[name], self.task.preprocess_fn(dc, train=True), weight)
                 for name, weight, dc in comps]
        if not self.config.data.mixture:
            return parts[0].source, parts[0].preprocess
        check_mixture(parts, self.config.seed)
        total = sum(w for _, w, _ in comps)
        log("train data: a mixture of " + ", ".join(f"{n} {w / total:.1%} ({dc.name} {dc.split}, "
                                                      f"{len(self.train_sources[n])} records)" for n, w, dc in comps))
        return parts, None

    def run(self) -> dict:
        cfg = self.config
        # Before anything is written: may this config resume the workdir's checkpoints? (exit 2 naming the keys)
        check_resume_config(self.workdir, cfg, self.allow_config_change, log, type(self.task).config_defaults())
        os.makedirs(self.workdir, exist_ok=True)
        if cfg.total_steps == 0:
            return self._evaluate_initial()
        writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0, wandb_cfg=cfg.wandb, config=cfg)
        train_iter = TrainIterator(*self._train_data(), batch_size=cfg.batch_size // jax.process_count(), seed=cfg.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   worker_count=cfg.data.worker_count, backend=jax.default_backend(),
                                   shuffle=cfg.data.shuffle,
                                   prefetch_buffer=cfg.data.prefetch_buffer,
                                   on_corrupt_record=cfg.data.on_corrupt_record)
        ckpt = Checkpointer(self.workdir, cfg.checkpoint.every_steps, cfg.checkpoint.keep, cfg.checkpoint.async_save)
        try:  # a failed restore is raised (never a fresh start), with orbax closed first: no asyncio tracebacks
            restored = ckpt.restore_latest(self.abstract_state, warn=log)
            if restored is not None:
                start, state, data_state = restored
                if data_state:  # a total_steps=0 run's checkpoint has no input position: start at the beginning
                    train_iter.set_state(data_state)
                log(f"resumed from {ckpt.directory}/{start} (step {start} done; continuing at step {start + 1})")
            else:
                start, state = 0, self.init_state()
        except BaseException:
            ckpt.close()
            writer.close()
            raise
        self._write_run_record()  # once the checkpoints it describes are known to fit it
        if self._train_step is None:
            self._train_step = self.train_step_fn()
        progress = Progress(cfg.total_steps, cfg.batch_size, start)
        self.peak_flops, peak_src = peak_flops(self.mesh.devices.flat[0])  # outside the mesh: it runs a matmul
        preemption = PreemptionWatcher()
        profiler = StepProfiler(cfg.profile, self.workdir, log)
        final, self.preempted = {}, False
        if start >= cfg.total_steps:  # already finished: report its evaluation instead of silently exiting
            with jax.set_mesh(self.mesh):
                final = self.evaluate(state, start, only=True)
        input_wait, t_interval, warned_input_bound = InputWait(), time.perf_counter(), False
        feed = BatchFeed(train_iter, self._global_batch, self.task.check_batch, input_wait,
                         device_prefetch(cfg.data.device_prefetch, jax.default_backend()), cfg.total_steps)
        try:
            with jax.set_mesh(self.mesh):
                for step in range(start + 1, cfg.total_steps + 1):
                    gbatch, data_state = feed.take(step)
                    if self._compiled is None:  # compile once, ahead of time, to read its FLOPs for MFU
                        self.compile_step(state, gbatch)
                        progress.restart(step - 1)  # the ETA excludes compilation
                        # ... and the input-bound measure both compilation and the pipeline's start-up.
                        input_wait.take()
                        t_interval = time.perf_counter()
                        log(f"train step: compiled in {self.compile_s:.1f}s"
                            f"{' (persistent cache hit)' if self.compile_cache_hit else ''}; "
                            f"{self.step_flops['model']:.4g} model FLOPs per device "
                            f"({self.step_flops['hardware']:.4g} with recomputation); peak "
                            f"{self.peak_flops:.4g} FLOP/s ({peak_src})")
                    with profiler.step(step):
                        state, metrics = self._compiled(state, gbatch)
                    input_wait.dispatched(step, metrics)
                    feed.fill(step)  # while the step runs
                    profiler.done(step, metrics)
                    if jax.process_index() == 0:
                        progress.tick(step)
                    will_save = step == cfg.total_steps or ckpt.mngr.should_save(step)
                    if step % cfg.log_every_steps == 0 or will_save:
                        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        m.update(train_iter.drop_metrics())
                        self._check_finite(m, step, ckpt)
                        if step % cfg.log_every_steps == 0 or step == cfg.total_steps:
                            interval, data_wait = time.perf_counter() - t_interval, input_wait.take()
                            rate = progress.rate(step)
                            if step > start + 1:  # the first interval includes compilation
                                # a CPU peak timed under load reads low: timed again (a chip's is its table value)
                                self.peak_flops, _ = peak_flops(self.mesh.devices.flat[0], refresh=True)
                                m["train/steps_per_s"] = rate
                                m["train/mfu"] = self.step_flops["model"] * rate / self.peak_flops
                                m["train/hfu"] = self.step_flops["hardware"] * rate / self.peak_flops
                                m["train/data_wait_frac"] = data_wait / max(interval, 1e-9)
                                if m["train/data_wait_frac"] > 0.2 and not warned_input_bound:
                                    warned_input_bound = True
                                    log(f"warning: input-bound: the step waited for data "
                                        f"{m['train/data_wait_frac']:.0%} of the time (train/data_wait_frac: "
                                        f"the device idle while the next batch was read); "
                                        f"raise config.data.worker_count or move work to the device")
                            t_interval = time.perf_counter()
                            writer.write(step, m)
                            log(progress.line(step, m, rate))
                            final.update(m)
                    evals = self.evaluate(state, step, writer)
                    if evals:
                        writer.write(step, evals)
                        final.update(evals)
                    stop = preemption.should_stop()
                    ckpt.save(step, state, data_state, force=step == cfg.total_steps or stop)
                    if stop:
                        log(f"preempted (SIGTERM): saved step {step}; re-run the same command to resume")
                        self.preempted = True
                        break
                    if cfg.debug.sleep_per_step:
                        time.sleep(cfg.debug.sleep_per_step)
        finally:
            input_wait.close()
            profiler.close()
            preemption.close()
            ckpt.close()
            writer.close()
        self.state = state
        return final

    def _check_finite(self, metrics: dict, step: int, ckpt) -> None:
        if self.config.nan_policy == "stop" and metrics.get("train/nonfinite_steps", 0) > 0:
            raise FloatingPointError(
                f"non-finite loss or gradients at or before step {step} (config.nan_policy='stop'); no checkpoint "
                f"was written after it — the last good one is step {ckpt.latest_step()} in {ckpt.directory}. "
                f"Use config.nan_policy='skip' to drop such steps and go on.")


def train(config, workdir: str, devices=None, allow_config_change: bool = False) -> dict:
    """Train (or resume) `config` in `workdir` on `devices` (default: all); returns the last logged metrics."""
    check_not_importing_main("vlmjax train()")
    trainer = Trainer(config, workdir, devices)
    trainer.allow_config_change = allow_config_change
    return trainer.run()
