"""Multi-process start-up and the few cross-process agreements the loop needs.

`jax.distributed.initialize` is called from flags or the environment:
- explicit: `--coordinator_address host:port --num_processes N --process_id i` (or VLMJAX_COORDINATOR_ADDRESS,
  VLMJAX_NUM_PROCESSES, VLMJAX_PROCESS_ID) — what `launch/local.py`, `launch/slurm.sbatch` and custom GPU
  clusters use. Under SLURM, a coordinator address alone is enough: the count and index come from SLURM_NTASKS
  and SLURM_PROCID (so `VLMJAX_COORDINATOR_ADDRESS=node:port srun python -m vlmjax.cli ...` works);
- TPU pods (`launch/tpu_pod.sh`) and SLURM: `--distributed=auto` lets jax detect the cluster (TPU metadata,
  SLURM_* variables).
On CPU the cross-process collectives go through gloo.
"""
import os
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


def explicit_settings(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                      env=None) -> tuple:
    """(coordinator_address, num_processes, process_id) from flags, else VLMJAX_*, else (count and index only,
    once an address is known) SLURM_NTASKS / SLURM_PROCID. Unset: ('', 0, -1)."""
    env = os.environ if env is None else env
    coordinator_address = coordinator_address or env.get("VLMJAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(env.get("VLMJAX_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(env.get("VLMJAX_PROCESS_ID", "-1"))
    if coordinator_address and "SLURM_PROCID" in env:
        num_processes = num_processes or int(env.get("SLURM_NTASKS", "0"))
        process_id = process_id if process_id >= 0 else int(env["SLURM_PROCID"])
    return coordinator_address, num_processes, process_id


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               mode: str = "") -> bool:
    """Initialise jax.distributed when asked to; returns True if it did."""
    coordinator_address, num_processes, process_id = explicit_settings(coordinator_address, num_processes,
                                                                       process_id)
    if mode == "auto":
        jax.distributed.initialize()
        return True
    if not coordinator_address:
        return False
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"--coordinator_address={coordinator_address} needs --num_processes >= 1 and "
                         f"0 <= --process_id < num_processes (got {num_processes}, {process_id})")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


class PreemptionWatcher:
    """Turns SIGTERM into a flag that every process agrees on at a step boundary."""

    def __init__(self):
        self._flag = False
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        del signum, frame
        self._flag = True

    def should_stop(self) -> bool:
        """True on every process once any process got SIGTERM (a collective when there are several)."""
        if jax.process_count() == 1:
            return self._flag
        flags = multihost_utils.process_allgather(np.array([self._flag], np.int32))
        return bool(np.asarray(flags).any())

    def close(self):
        signal.signal(signal.SIGTERM, self._previous)
