"""altsieve's ingest (and full run) against img2dataset: same server, same images, same two cores.

    .venv/bin/python bench/bench_ingest_vs_img2dataset.py --images 5000

Both download the same N photo-like 640x480 JPEGs (about 120 KB each) from one loopback server
(all bodies rendered before timing starts, so the server only copies bytes), resize to 256 px
keep_ratio, re-encode JPEG and write webdataset shards: img2dataset with two worker processes,
altsieve with its defaults (the local runner with a worker process per core, partitions sized from
the input; no tuning flag). Times are wall-clock of the whole command, start-up included. Prints
images/s and the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from altsieve.testcorpus.generator import generate_corpus
from altsieve.testcorpus.server import CorpusServer


def img2dataset_command(input_path: str, output: str, size: int, mode: str) -> list[str]:
    return [
        sys.executable, "-c", "import sys; from img2dataset import main; sys.exit(main())",
        "--url_list", input_path, "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
        "--output_folder", output, "--processes_count", "2", "--thread_count", "32",
        "--image_size", str(size), "--resize_mode", mode, "--number_sample_per_shard", "1000",
        "--distributor", "multiprocessing", "--enable_wandb", "False", "--retries", "0", "--timeout", "10",
    ]


def altsieve_command(command: str, input_path: str, output: str, size: int, mode: str) -> list[str]:
    return [
        sys.executable, "-m", "altsieve", command, input_path, "--output", output, "--recipe", "default",
        "--image-size", str(size), "--resize-mode", mode, "--samples-per-shard", "1000",
        "--allow-private-addresses", "127.0.0.1/32",
    ]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{result.stderr[-3000:]}")
    return elapsed


def count_altsieve(output: str, final: bool) -> int:
    if final:
        return json.loads(Path(output, "stats.json").read_text())["output_samples"]
    return sum(json.loads(p.read_text())["successes"] for p in Path(output, "_candidates").glob("*_stats.json"))


def count_img2dataset(output: str) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in Path(output).glob("*_stats.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--resize-mode", default="keep_ratio")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    corpus = generate_corpus(args.images, seed=1, image_size=(640, 480), texture=True, label_counts={},
                             cache_size=args.images + 16)
    started = time.perf_counter()
    total_bytes = sum(len(corpus.responses[pair.path].body) for pair in corpus.pairs)
    print(f"rendered {args.images} images, {total_bytes / args.images / 1024:.0f} KB mean, "
          f"in {time.perf_counter() - started:.1f} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="altsieve-bench-"))
    results: dict[str, list[float]] = {"img2dataset": [], "altsieve ingest": [], "altsieve run (3 passes)": []}
    try:
        with CorpusServer(corpus) as server:
            input_path = str(work / "input.parquet")
            corpus.write_input(input_path, server.base_url)
            for repeat in range(args.repeats):
                out = work / f"i2d-{repeat}"
                seconds = timed(img2dataset_command(input_path, str(out), args.size, args.resize_mode))
                results["img2dataset"].append(count_img2dataset(str(out)) / seconds)
                for label, command, final in (("altsieve ingest", "ingest", False),
                                              ("altsieve run (3 passes)", "run", True)):
                    out = work / f"{command}-{repeat}"
                    seconds = timed(altsieve_command(command, input_path, str(out), args.size, args.resize_mode))
                    results[label].append(count_altsieve(str(out), final) / seconds)
                print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = max(results["img2dataset"])
    print(f"\n{'tool':<28}{'images/s (best)':>16}{'ratio':>8}")
    for label, rates in results.items():
        print(f"{label:<28}{max(rates):>16.0f}{max(rates) / baseline:>8.2f}")


if __name__ == "__main__":
    main()
