"""Where `altsieve run` leaves the cores idle on the web-like simulation: the start, the workers, the tail.

    .venv/bin/python bench/bench_web_idle.py --repeats 3 --plot /tmp/idle.png

bench_web.py gives the share of altsieve's CPU ceiling a run reaches; this says where the rest goes. It runs
`altsieve run` as bench_web.py does (same simulation, same command) and samples /proc every 50 ms: the machine's
busy time and each process's CPU (the launcher, the fork server, the workers, the simulator). Printed per run:
idle core-seconds before the first worker process, while worker processes exist, and after the last one ends
(the launcher's select and reshard), the seconds with more than 0.1 core-s idle, and the simulator's CPU-s
(busy, but not altsieve's). ``--plot`` draws each process's CPU over time, one panel per run. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _proc import descendants  # bench/_proc.py: scripts here run with bench/ on sys.path
from bench_web import (
    SimServer,
    add_simulation_arguments,
    altsieve,
    cache_folder,
    cores,
)

TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05


def busy_seconds() -> float:
    """The machine's busy CPU-seconds so far (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICKS


def process_tree(root: int) -> dict[int, tuple[str, float]]:
    """``root`` and its descendants: pid -> (role, CPU-seconds so far)."""
    found: dict[int, tuple[str, float]] = {}  # pid -> (command, CPU-s)
    tree = descendants(root)
    for pid in tree:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):  # it ended while being read
            continue
        found[pid] = (command, (int(fields[11]) + int(fields[12])) / TICKS)
    return {pid: (_role(pid == root, found.get(tree[pid] or 0, ("", 0.0))[0], command), cpu)
            for pid, (command, cpu) in found.items()}


def _role(is_root: bool, parent_command: str, command: str) -> str:
    if is_root:
        return "launcher"
    if "--serve" in parent_command:  # forked by the server: its command line is the server's
        return "worker"
    if "--serve" in command:
        return "fork server"
    return "worker client" if "--via" in command else "other"


@dataclass
class Sample:
    at: float  # seconds since the command started
    busy: float  # the machine's busy CPU-seconds
    simulator: float
    processes: dict[int, tuple[str, float]] = field(default_factory=dict)


def sample_run(server: SimServer, command: list[str]) -> list[Sample]:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while process.poll() is None:
        samples.append(Sample(time.perf_counter() - started, busy_seconds(), server.cpu_seconds() or 0.0,
                              process_tree(process.pid)))
        time.sleep(SAMPLE_S)
    samples.append(Sample(time.perf_counter() - started, busy_seconds(), server.cpu_seconds() or 0.0))
    if process.returncode != 0:
        raise SystemExit(f"altsieve run failed ({process.returncode}): rerun bench_web.py to see its error")
    return samples


def idle(samples: list[Sample], first: int, last: int) -> float:
    """Idle core-seconds between two samples."""
    return cores() * (samples[last].at - samples[first].at) - (samples[last].busy - samples[first].busy)


def report(samples: list[Sample]) -> str:
    with_workers = [i for i, s in enumerate(samples) if any(role == "worker" for role, _ in s.processes.values())]
    end = len(samples) - 1
    first, last = (with_workers[0], with_workers[-1]) if with_workers else (end, end)
    per_second: dict[int, float] = {}
    for i in range(1, len(samples)):
        second = int(samples[i].at)
        per_second[second] = per_second.get(second, 0.0) + idle(samples, i - 1, i)
    idle_seconds = ", ".join(f"{s}s: {v:.2f}" for s, v in sorted(per_second.items()) if v > 0.1)
    return (f"{samples[-1].at:.2f} s; idle core-s: before the workers {idle(samples, 0, first):.2f} "
            f"(to {samples[first].at:.2f} s), with workers {idle(samples, first, last):.2f} "
            f"(to {samples[last].at:.2f} s), after them {idle(samples, last, end):.2f}; "
            f"the simulator {samples[-1].simulator - samples[0].simulator:.2f} CPU-s\n"
            f"    seconds with over 0.1 core-s idle: {idle_seconds or 'none'}")


def plot(runs: list[list[Sample]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), squeeze=False)
    for axis, samples in zip(axes[:, 0], runs, strict=True):
        times = [s.at for s in samples[1:]]
        series: dict[str, list[float]] = {}
        for index, (before, after) in enumerate(zip(samples, samples[1:], strict=False)):
            step = after.at - before.at
            rates = {"simulator": (after.simulator - before.simulator) / step}
            for pid, (role, cpu) in after.processes.items():
                label = f"{role} {pid}" if role == "worker" else role
                rates[label] = rates.get(label, 0.0) + (cpu - before.processes.get(pid, (role, cpu))[1]) / step
            for label, rate in rates.items():
                series.setdefault(label, [0.0] * len(times))[index] = rate
        axis.stackplot(times, *series.values(), labels=list(series), linewidth=0)
        axis.axhline(cores(), color="black", linewidth=0.8)
        axis.set_ylabel("cores busy")
        axis.set_ylim(0, cores() * 1.15)
        axis.legend(loc="lower center", ncol=4, fontsize=7)
    axes[-1, 0].set_xlabel("seconds since `altsieve run` started")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_simulation_arguments(parser)
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw each process's CPU over time here")
    args = parser.parse_args()
    if not os.path.exists("/proc/stat"):
        raise SystemExit("bench_web_idle.py samples /proc: it runs on Linux only")
    cache = cache_folder(args)
    work = Path(tempfile.mkdtemp(prefix="altsieve-bench-idle-"))
    input_path = work / "input.parquet"
    runs = []
    try:
        for repeat in range(args.repeats):
            output = work / f"run-{repeat}"
            with SimServer(args.pages, args.seed, cache, input_path) as server:
                runs.append(sample_run(server, altsieve(input_path, output)))
            print(f"repeat {repeat}: {report(runs[-1])}", flush=True)
            shutil.rmtree(output, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sampler = os.times()  # its own only: the children's times are altsieve's and the simulator's
    print(f"(this script's own CPU, counted as busy above: {sampler.user + sampler.system:.2f} s in all)")
    if args.plot:
        plot(runs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
