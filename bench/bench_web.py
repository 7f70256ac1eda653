"""img2dataset against `altsieve run` on a web-like loopback simulation, side by side in one run.

    .venv/bin/python bench/bench_web.py --pages 5000

The simulation (altsieve/testcorpus/websim.py) is the profile of shared/reference/measured-baselines.md
"Download under web-like latency": photo-like JPEGs of about 96 KB, lognormal time to first byte
(median 150 ms), 3 % stalls, 2 % resets mid-body, 5 % 404s, 32 hosts on 127.0.0.2-33 with Zipf
popularity, 4 MB/s per connection. The server runs in its own process (restarted for each tool, so
both meet the same latencies), and its CPU is not counted.

img2dataset runs with processes = cores (its defaults otherwise: 256 threads, 10 s timeout, no retries,
border resize to 256, webdataset output, shards of 1000); `altsieve run` with no tuning flag (only
--allow-private-addresses, without which it refuses loopback). Each is timed as a whole command
(start-up included); CPU-seconds are the user+sys time of the command and every process it waited
for. Printed: images/s, CPU-seconds per image, the CPU ceiling (cores / CPU-seconds per image: the
rate if the tool never waited) and the share of it reached, and altsieve's ratio to img2dataset.

``--per-host N`` adds a row: `altsieve run` with a cap of N connections per host and worker process that never
grows (``download.per_host_concurrency`` and ``per_host_concurrency_max`` both N; only a host's pushback would
lower it, and the simulation never pushes back) instead of its default, 16 that grow to 64 while a host keeps
up. The simulation's busiest host serves a quarter of the URLs, so where the CPU is fast enough such a cap, not
the CPU, sets how long the fetching takes: ``--per-host 16`` measures what the adaptive cap gains over one that
stays at 16 on this machine.

``--time-scale F`` multiplies every network time of the simulation by F (time to first byte, stalls; bandwidth
divided by F) and both tools' timeouts with it: the same web for a CPU F times as fast, to see on a slow machine
what a fast one meets (where the politeness cap starts to bind).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def cores() -> int:
    return len(os.sched_getaffinity(0))


class SimServer:
    """The simulated web in a child process; stopped by closing its stdin."""

    def __init__(self, pages: int, seed: int, folder: Path, input_path: Path, time_scale: float = 1.0) -> None:
        self._command = [sys.executable, "-m", "altsieve.testcorpus.websim", "--pages", str(pages), "--seed",
                         str(seed), "--dir", str(folder), "--input", str(input_path), "--time-scale", str(time_scale)]

    def __enter__(self) -> SimServer:
        self.process = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.info = json.loads(self.process.stdout.readline())
        return self

    def cpu_seconds(self) -> float | None:
        """The server's CPU-seconds so far (user + sys, its children's included); None where /proc is not there."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys of the command and all it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def img2dataset(input_path: Path, output: Path, time_scale: float = 1.0) -> list[str]:
    return [
        sys.executable, "-c", "import sys; from img2dataset import main; sys.exit(main())",
        "--url_list", str(input_path), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
        "--output_folder", str(output), "--processes_count", str(cores()), "--number_sample_per_shard", "1000",
        "--distributor", "multiprocessing", "--enable_wandb", "False", "--timeout", f"{10 * time_scale:g}",
    ]


# altsieve's timeouts, scaled with --time-scale from their defaults.
TIMEOUT_FIELDS = ("connect_timeout_s", "read_timeout_s", "idle_timeout_s", "stall_release_s")


def altsieve(input_path: Path, output: Path, per_host: int | None = None, time_scale: float = 1.0) -> list[str]:
    command = [sys.executable, "-m", "altsieve", "run", str(input_path), "--output", str(output),
               "--allow-private-addresses", "127.0.0.0/8"]
    if per_host:
        command += ["--set", f"download.per_host_concurrency={per_host}",
                    "--set", f"download.per_host_concurrency_max={per_host}"]
    if time_scale != 1.0:
        from altsieve.core.config import DownloadConfig

        for name in TIMEOUT_FIELDS:
            command += ["--set", f"download.{name}={DownloadConfig.model_fields[name].default * time_scale:g}"]
    return command


def img2dataset_images(output: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in output.glob("*_stats.json"))


def altsieve_images(output: Path) -> tuple[int, int]:
    """Images fetched and decoded by ingest (img2dataset's "success"), and the pairs the whole run kept."""
    decoded = 0
    for path in (output / "_candidates").glob("*.parquet"):
        table = pq.read_table(path, columns=["reason"]).column("reason").to_pylist()
        decoded += sum(reason is None for reason in table)
    kept = json.loads((output / "stats.json").read_text())["output_samples"]
    return decoded, kept


def add_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulated web's size and seed, the repeats and the image cache (bench_web_idle.py takes the same)."""
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cache", default=None, help="folder for the rendered images (default: a temp folder, kept)")


def cache_folder(args: argparse.Namespace) -> Path:
    return Path(args.cache or Path(tempfile.gettempdir()) / f"altsieve-websim-{args.seed}-{args.pages}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_simulation_arguments(parser)
    parser.add_argument("--per-host", type=int, default=None, metavar="N",
                        help="also run altsieve with a cap of N connections per host and worker that never grows")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="F",
                        help="every network time of the simulation and both tools' timeouts x F (default 1)")
    args = parser.parse_args()

    cache = cache_folder(args)
    work = Path(tempfile.mkdtemp(prefix="altsieve-bench-web-"))
    input_path = work / "input.parquet"
    started = time.perf_counter()
    with SimServer(args.pages, args.seed, cache, input_path) as server:
        info = server.info
    print(f"simulated web: {info['pages']} URLs, {info['kinds']}, {info['good_images']} serve an image, "
          f"{info['mean_bytes'] / 1024:.0f} KB mean; ready in {time.perf_counter() - started:.0f} s; "
          f"{cores()} cores; network times x{args.time_scale:g}", flush=True)
    rows: dict[str, list[tuple[float, float, int, float | None]]] = {"img2dataset": [], "altsieve run": []}
    if args.per_host:
        rows[f"altsieve {args.per_host}/host"] = []
    kept: list[int] = []
    try:
        for repeat in range(args.repeats):
            for index, label in enumerate(rows):
                output = work / f"run-{index}-{repeat}"
                with SimServer(args.pages, args.seed, cache, input_path, args.time_scale) as server:
                    sim_before = server.cpu_seconds()
                    if label == "img2dataset":
                        wall, cpu = run_measured(img2dataset(input_path, output, args.time_scale))
                        images = img2dataset_images(output)
                    else:
                        per_host = args.per_host if label.endswith("/host") else None
                        wall, cpu = run_measured(altsieve(input_path, output, per_host, args.time_scale))
                        images, final = altsieve_images(output)
                        kept.append(final)
                    sim_after = server.cpu_seconds()
                sim_cpu = sim_after - sim_before if sim_before is not None and sim_after is not None else None
                rows[label].append((wall, cpu, images, sim_cpu))
                print(f"repeat {repeat}: {label}: {images} images in {wall:.1f} s, {cpu:.1f} CPU-s,"
                      f" {cpu / (cores() * wall):.3f} of its CPU ceiling"
                      f" (the simulated web: {_cpu_text(sim_cpu)} CPU-s)", flush=True)
                shutil.rmtree(output, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'tool':<20}{'images':>8}{'wall s':>9}{'images/s':>10}{'CPU-s/img':>11}{'ceiling/s':>11}"
          f"{'of ceiling':>12}{'ratio':>8}{'sim CPU-s':>11}{'of cores left':>15}")
    best = {label: min(runs, key=lambda run: run[0]) for label, runs in rows.items()}
    baseline = best["img2dataset"][2] / best["img2dataset"][0]
    for label, (wall, cpu, images, sim_cpu) in best.items():
        rate, per_image = images / wall, cpu / max(images, 1)
        ceiling = cores() / per_image
        left = f"{cpu / (cores() * wall - sim_cpu):.2f}" if sim_cpu is not None else "n/a"
        print(f"{label:<20}{images:>8}{wall:>9.1f}{rate:>10.1f}{per_image * 1000:>9.2f}ms{ceiling:>11.1f}"
              f"{rate / ceiling:>12.2f}{rate / baseline:>8.2f}{_cpu_text(sim_cpu):>11}{left:>15}")
    print(f"(altsieve run kept {kept[-1]} pairs after its rules and deduplication; images = fetched and decoded)")
    if args.repeats > 1:  # the table shows each tool's fastest run; this machine's speed drifts between repeats
        for label, runs in rows.items():
            shares = sorted(cpu / (cores() * wall) for wall, cpu, _, _ in runs)
            print(f"{label}: of its CPU ceiling over {len(runs)} repeats {shares[0]:.3f}-{shares[-1]:.3f}, "
                  f"median {statistics.median(shares):.3f}")


def _cpu_text(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f}"


if __name__ == "__main__":
    main()
