#!/usr/bin/env python3
"""Engine benchmarks (figures go to BENCHMARKS.md; nothing here passes or fails).

  (a) throughput: N tasks (default 100,000) through the OpenAI-compatible adapter against the
      zero-latency mock server, concurrency 100, SQLite durability as in production
      (WAL, synchronous=NORMAL, group commit). Reports wall time, tasks/s and peak RSS.
  (b) overhead:   5,000 tasks with lognormal latency (median 200 ms, p99 1.5 s), concurrency 200.
      Reports the run's execution span next to the zero-overhead makespan (C slots taking the
      tasks in order with the same latencies), computed by `taskexec-mockserver makespan`.

Usage: scripts/bench.py [a|b|all] [--tasks N]      (builds release binaries first)
The mock server runs as its own process on 127.0.0.1, so it is never inside the measured process.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "taskexec-cli", "-p", "taskexec-mockserver"],
        cwd=ROOT, check=True)


def start_mock(latency, seed=1, threads=1):
    proc = subprocess.Popen(
        [BIN / "taskexec-mockserver", "serve", "--latency", latency, "--seed", str(seed), "--threads", str(threads)],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"mock server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def run_engine(workdir, tasks, base_url, concurrency):
    config = workdir / "bench.toml"
    config.write_text(
        f'[engine]\nconcurrency = {concurrency}\ndefault_timeout_ms = 60000\n'
        f'[deployments.mock]\nkind = "openai-compatible"\nbase_url = "{base_url}"\n')
    db = workdir / "bench.db"
    cmd = [BIN / "taskexec", "run", tasks, "--db", db, "--config", config, "--json", "--quiet"]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        # wait4: the resource use of this process alone (RUSAGE_CHILDREN would also count the
        # cargo build run before it, whose peak RSS is larger).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    if proc.returncode != 0:
        sys.exit(f"taskexec exited {proc.returncode}: {err_text}")
    metrics = json.loads(out_text.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "metrics": metrics,
    }


def gen_tasks(path, n):
    subprocess.run([BIN / "taskexec-mockserver", "gen-tasks", str(n), "--deployment", "mock", "--out", path], check=True)


def bench_a(n):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        tasks = d / "tasks.jsonl"
        gen_tasks(tasks, n)
        mock, url = start_mock("zero", threads=1)
        try:
            r = run_engine(d, tasks, url, 100)
        finally:
            mock.kill()
        m = r["metrics"]
        assert m["completedTasks"] == n, m
        span = n / m["throughput"] if m["throughput"] else float("nan")
        print(f"(a) {n} tasks, concurrency 100, zero-latency mock server")
        print(f"    wall time (validate + submit + run): {r['wall_s']:.2f} s -> {n / r['wall_s']:.0f} tasks/s end to end")
        print(f"    execution span (first start -> last end): {span:.2f} s -> {m['throughput']:.0f} tasks/s")
        print(f"    peak RSS {r['peak_rss_mb']:.1f} MB; CPU {r['cpu_s']:.2f} s")


def bench_b(n=5000):
    latency, seed, conc = "lognormal:200:1500", 1, 200
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        tasks = d / "tasks.jsonl"
        gen_tasks(tasks, n)
        ideal = float(subprocess.run(
            [BIN / "taskexec-mockserver", "makespan", tasks, "--concurrency", str(conc), "--latency", latency,
             "--seed", str(seed)], capture_output=True, text=True, check=True).stdout)
        mock, url = start_mock(latency, seed=seed, threads=1)
        try:
            r = run_engine(d, tasks, url, conc)
        finally:
            mock.kill()
        m = r["metrics"]
        assert m["completedTasks"] == n, m
        span = n / m["throughput"]
        print(f"(b) {n} tasks, lognormal median 200 ms / p99 1.5 s, concurrency {conc}")
        print(f"    zero-overhead makespan {ideal:.3f} s; execution span {span:.3f} s -> ratio {span / ideal:.4f}")
        print(f"    wall time incl. process start, validation and submission {r['wall_s']:.3f} s -> ratio {r['wall_s'] / ideal:.4f}")
        print(f"    latency p50 {m['p50Latency']:.1f} ms, p99 {m['p99Latency']:.1f} ms; peak RSS {r['peak_rss_mb']:.1f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", default="all", choices=["a", "b", "all"])
    p.add_argument("--tasks", type=int, default=100_000, help="tasks for (a)")
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    if not args.no_build:
        build()
    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    if args.which in ("a", "all"):
        bench_a(args.tasks)
    if args.which in ("b", "all"):
        bench_b()


if __name__ == "__main__":
    main()
