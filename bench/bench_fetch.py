"""The fetcher alone (no decode, no Beam): URLs/s and CPU per URL, on a zero-latency and a web-like simulation.

    .venv/bin/python bench/bench_fetch.py --pages 2000

The simulated web (altsieve/testcorpus/websim.py) runs in another process, so only the fetcher's own
CPU is counted (its loop thread included). "zero latency": 4 hosts answering at once at any speed,
no failures: what a request costs the fetcher. "web-like": the profile of bench/bench_web.py
(latency, stalls, resets, 404s, 32 Zipf hosts, 4 MB/s per connection): how long the window takes
to drain, and how many of the URLs that serve an image it got.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

from altsieve.core.config import DownloadConfig
from altsieve.testcorpus import websim
from altsieve.transforms.fetch import Fetcher

PROFILES = {
    "zero latency": websim.WebProfile(hosts=4, ttfb_median_s=0.001, ttfb_sigma=0.1, stall_share=0.0, reset_share=0.0,
                                      not_found_share=0.0, bandwidth_bytes_per_s=1e10),
    "web-like": websim.WebProfile(),
}


def _serve(name: str, pages: int, folder: str, urls: mp.Queue) -> None:
    corpus = websim.plan_web(pages, seed=0, profile=PROFILES[name])
    corpus.render(folder)
    with websim.WebSimServer(corpus) as server:
        urls.put(([corpus.url(page, server.port) for page in corpus.pages], corpus.good_images()))
        time.sleep(24 * 3600)  # until terminated


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    # Rendered once per profile and size; the same folder as bench_web.py's when the sizes match.
    cache = Path(tempfile.gettempdir())
    print(f"{'profile':<14}{'URLs':>6}{'images':>8}{'wall s':>8}{'URLs/s':>8}{'CPU ms/URL':>12}")
    for name in PROFILES:
        queue: mp.Queue = mp.Queue()
        folder = str(cache / f"altsieve-websim-bench-fetch-{name.replace(' ', '-')}-{args.pages}")
        server = mp.Process(target=_serve, args=(name, args.pages, folder, queue), daemon=True)
        server.start()
        urls, good = queue.get()
        try:
            for _ in range(args.repeats):
                fetcher = Fetcher(DownloadConfig(allow_private_addresses=["127.0.0.0/8"]))
                started, cpu = time.perf_counter(), _cpu()
                images = sum(result.ok for _, result in fetcher.fetch_many(enumerate(urls)))
                wall, cpu = time.perf_counter() - started, _cpu() - cpu
                fetcher.close()
                print(f"{name:<14}{len(urls):>6}{images:>8}{wall:>8.1f}{len(urls) / wall:>8.0f}"
                      f"{cpu / len(urls) * 1000:>12.2f}   ({good} serve an image)", flush=True)
        finally:
            server.terminate()
            server.join()


if __name__ == "__main__":
    main()
