"""Peak memory of the ingest pass on a large URL list: 1M URLs, most failing fast.

    .venv/bin/python bench/bench_memory.py --urls 1000000

The test-corpus server answers 404 for most URLs and serves a real image for 1 % of them. The
ingest runs as its own process tree (DirectRunner, multi_processing, 2 workers); the resident
memory of the whole tree (launcher + workers) is sampled every 0.5 s and its peak printed with
the duration and pairs/s. Target: peak under 4 GiB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _proc import tree_rss_bytes  # bench/_proc.py: scripts here run with bench/ on sys.path

from altsieve.testcorpus.generator import generate_corpus
from altsieve.testcorpus.server import CorpusServer


def write_input(path: Path, base_url: str, urls: int, image_paths: list[str]) -> None:
    batch = 100_000
    writer = None
    for start in range(0, urls, batch):
        ids = range(start, min(start + batch, urls))
        rows = {
            "url": [
                f"{base_url}{image_paths[i // 100 % len(image_paths)]}" if i % 100 == 0 else f"{base_url}/missing/{i}"
                for i in ids
            ],
            "caption": [f"a photo number {i} of a red circle" for i in ids],
        }
        table = pa.table(rows)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--urls", type=int, default=1_000_000)
    parser.add_argument("--rows-per-partition", type=int, default=10_000)
    args = parser.parse_args()

    corpus = generate_corpus(2000, seed=3, label_counts={})
    work = Path(tempfile.mkdtemp(prefix="altsieve-mem-"))
    try:
        with CorpusServer(corpus) as server:
            input_path = work / "input.parquet"
            write_input(input_path, server.base_url, args.urls, [pair.path for pair in corpus.pairs])
            command = [
                str(Path(sys.executable).parent / "altsieve"), "ingest", str(input_path), "--output", str(work / "out"),
                "--allow-private-addresses", "127.0.0.1/32", "--retries", "0",
                "--rows-per-partition", str(args.rows_per_partition),
                "--direct_running_mode=multi_processing", "--direct_num_workers=2",
            ]
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            peak = 0
            while process.poll() is None:
                peak = max(peak, tree_rss_bytes(process.pid))
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
            stderr = process.stderr.read() if process.stderr else ""
            if process.returncode != 0:
                raise SystemExit(f"ingest failed:\n{stderr[-3000:]}")
        print(f"urls {args.urls}, partitions of {args.rows_per_partition}: {elapsed:.0f} s, "
              f"{args.urls / elapsed:.0f} pairs/s, peak RSS of the process tree {peak / 2**30:.2f} GiB "
              f"(target < 4 GiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
