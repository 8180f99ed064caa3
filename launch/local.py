#!/usr/bin/env python3
"""Run N processes x M simulated CPU devices on this machine: the multi-host rehearsal before a pod.

    python launch/local.py --num_processes 2 --devices_per_process 4 -- \\
        --config experiments/vit_scenes.py:runlocal --workdir /tmp/w

Every process runs `python -m vlmjax.cli <args> --coordinator_address 127.0.0.1:PORT --num_processes N
--process_id i` with `XLA_FLAGS=--xla_force_host_platform_device_count=M` and gloo CPU collectives. Logs go to
`<workdir>/logs/process_<i>.log` (process 0 is also echoed). SIGTERM/SIGINT are forwarded to every process (so a
preemption drill works), and the exit code is the first non-zero one.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir_of(args) -> str:
    for i, a in enumerate(args):
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
        if a == "--workdir" and i + 1 < len(args):
            return args[i + 1]
    raise SystemExit("launch/local.py: pass --workdir to the trainer (after --)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_processes", type=int, default=2)
    ap.add_argument("--devices_per_process", type=int, default=4)
    ap.add_argument("--module", default="vlmjax.cli", help="python -m target")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the trainer's arguments")
    a = ap.parse_args(argv)
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    logdir = os.path.join(workdir_of(rest), "logs")
    os.makedirs(logdir, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    for i in range(a.num_processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={a.devices_per_process}")
        log = open(os.path.join(logdir, f"process_{i}.log"), "w")
        logs.append(log)
        cmd = [sys.executable, "-m", a.module, *rest, f"--coordinator_address=127.0.0.1:{port}",
               f"--num_processes={a.num_processes}", f"--process_id={i}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if i == 0 else log,
                                      stderr=subprocess.STDOUT, text=True))

    def tee():
        for line in procs[0].stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            logs[0].write(line)
        logs[0].flush()

    t = threading.Thread(target=tee, daemon=True)
    t.start()

    def forward(signum, frame):
        del frame
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    t.join(timeout=5)
    for log in logs:
        log.close()
    bad = [c for c in codes if c]
    if bad:
        print(f"launch/local.py: exit codes {codes}; see {logdir}", file=sys.stderr)
    return bad[0] if bad else 0


if __name__ == "__main__":
    sys.exit(main())
