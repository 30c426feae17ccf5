"""Local multi-worker training: N processes on this machine, each with its TF_CONFIG.

  python -m tfawd.launch --workers=2 -- --flagfile=configs/lstm_base_wt2_cpu.cfg \\
      --model_dir=runs/lstm_2workers

Every worker runs `main.py <flags> --distribute=multi_worker` with TF_CONFIG naming all the
workers on 127.0.0.1 (free ports chosen here) and its own index; worker 0 is the chief (it
alone writes --model_dir). `--threads_per_worker` splits the cores between them. Output lines
are prefixed `[w0]`, `[w1]`, ... When a worker fails, the others are stopped after
`--grace_s` (they would otherwise wait for it until --collective_timeout_s); the exit code is
the first failure's, else 0. For workers on several machines set TF_CONFIG on each yourself
(BUILD.md, "Several machines").
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n: int) -> list:
    """n ports free on 127.0.0.1 now (the OS picks them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list, index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _relay(proc, prefix):
    for line in proc.stdout:
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def launch(program: list, workers: int, threads: int = 0, grace_s: float = 30.0,
           extra_env: dict | None = None) -> int:
    """Runs `program` (argv) as `workers` workers; returns the exit code (see module doc)."""
    ports = free_ports(workers)
    procs = []
    for i in range(workers):
        env = {**os.environ, **(extra_env or {}), "TF_CONFIG": tf_config(ports, i)}
        argv = list(program) + ["--distribute=multi_worker"]
        if threads:
            argv += [f"--intra_op_threads={threads}", f"--inter_op_threads={threads}"]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, cwd=REPO))
    relays = [threading.Thread(target=_relay, args=(p, f"[w{i}]"), daemon=True)
              for i, p in enumerate(procs)]
    for t in relays:
        t.start()
    failed_at, code = None, 0
    try:
        while any(p.poll() is None for p in procs):
            bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if bad and failed_at is None:
                failed_at, code = time.monotonic(), bad[0]
                print(f"[launch] a worker exited with {code}; stopping the others in "
                      f"{grace_s:.0f} s", flush=True)
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C: every worker checkpoints and exits
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
    for t in relays:
        t.join(timeout=5)
    return code or next((p.returncode for p in procs if p.returncode), 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="python -m tfawd.launch [options] -- <main.py flags>")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (>= 1)")
    parser.add_argument("--threads_per_worker", type=int, default=0,
                        help="intra/inter-op threads of each worker (0: TensorFlow's default)")
    parser.add_argument("--grace_s", type=float, default=30.0,
                        help="seconds the others get after a worker fails")
    parser.add_argument("--script", default=os.path.join(REPO, "main.py"),
                        help="the program each worker runs (a .py file)")
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        cut = argv.index("--")
        ours, flags = argv[:cut], argv[cut + 1:]
    else:
        ours, flags = argv, []
    args = parser.parse_args(ours)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if any(f.startswith("--distribute") for f in flags):
        parser.error("do not pass --distribute: every worker runs --distribute=multi_worker")
    return launch([sys.executable, args.script] + flags, args.workers,
                  args.threads_per_worker, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
