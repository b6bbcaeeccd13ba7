"""Run N training processes on this machine as one multi-host job (CPU devices, gloo collectives).

    python launch/local.py --num_processes 2 --devices_per_process 4 -- \
        --config configs/demo.py:stage1 --workdir /tmp/w [--config.a.b=v ...]

Each process gets `--coordinator_address localhost:PORT --num_processes N --process_id i` and
XLA_FLAGS=--xla_force_host_platform_device_count=D. Process 0 writes to this terminal, the others to
LOG_DIR/process_<i>.log. When one process fails or is killed, the others are stopped; the exit code is the
first failure's (0 when all succeed). Running the same command again resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(devices: int) -> dict:
    """Environment of one CPU process with `devices` simulated devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    return env


def launch(main_args: list[str], num_processes: int, devices: int, log_dir: Path, port: int = 0) -> int:
    """Start the processes, wait for them; stop the rest as soon as one fails. Returns the exit code."""
    address = f"localhost:{port or free_port()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    for i in range(num_processes):
        out = None if i == 0 else open(log_dir / f"process_{i}.log", "w")
        logs.append(out)
        cmd = [sys.executable, "-m", "xllava_jax.main", *main_args, f"--coordinator_address={address}",
               f"--num_processes={num_processes}", f"--process_id={i}"]
        procs.append(subprocess.Popen(cmd, env=process_env(devices), stdout=out, stderr=subprocess.STDOUT if out else None))
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                code = failed[0]
                break
            time.sleep(0.2)
        else:
            code = next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            if f is not None:
                f.close()
    if code:
        print(f"launch/local.py: a process exited with {code}; logs of processes 1..: {log_dir}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse `[options] -- main args` and launch."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python launch/local.py [--num_processes N] [--devices_per_process D] -- MAIN_ARGS")
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--devices_per_process", type=int, default=4)
    p.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    p.add_argument("--log_dir", help="where processes 1.. write their output (default: a temporary directory)")
    args = p.parse_args(argv[:split])
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="xllava-local-"))
    return launch(argv[split + 1:], args.num_processes, args.devices_per_process, log_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
