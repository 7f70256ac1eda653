"""``altsieve demo``: serve the noisy-web test corpus on loopback and curate it end to end.

The demo is the main job on embedded defaults: the chosen recipe, plus the few overrides that a
loopback corpus needs (reaching 127.0.0.1 is allowed, for that address only; short timeouts so
the stalled responses cost seconds, not minutes; small partitions and shards so a 100-pair corpus
still exercises partitioning and resharding).
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow.parquet as pq

from altsieve.core import fsutil
from altsieve.core.config import Config, load_config

DEMO_OVERRIDES: dict[str, Any] = {
    "download": {
        "allow_private_addresses": ["127.0.0.1/32"],
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "retries": 1,
        "backoff_base_s": 0.1,
        "backoff_max_s": 0.5,
        "retry_after_max_s": 2.0,
    },
    "input": {"rows_per_partition": 25, "save_additional_columns": ["source_id"]},
    "output": {"samples_per_shard": 32},
}


def demo_config(recipe: str = "default", extra: list[dict[str, Any]] | None = None) -> Config:
    return load_config(recipe, [DEMO_OVERRIDES, *(extra or [])])


def run_demo(output: str, pairs: int, seed: int, recipe: str, beam_args: list[str],
             extra_overrides: list[dict[str, Any]] | None = None) -> dict:
    from altsieve.pipeline.cli import run_all
    from altsieve.testcorpus.generator import generate_corpus
    from altsieve.testcorpus.server import CorpusServer

    corpus = generate_corpus(n_pairs=pairs, seed=seed)
    config = demo_config(recipe, extra_overrides)
    fsutil.makedirs(output)
    input_path = fsutil.join(output, "input.parquet")
    with CorpusServer(corpus) as server:
        corpus.write_input(input_path, server.base_url)
        truth = corpus.truth_table()
        fsutil.write_atomic(fsutil.join(output, "truth.parquet"), lambda handle: pq.write_table(truth, handle))
        stats = run_all(config, [input_path], fsutil.join(output, "dataset"), beam_args)
    # The one-screen summary also at the top of the demo folder, beside input and truth.
    with fsspec.open(fsutil.join(output, "dataset", "summary.txt"), "rt", encoding="utf-8") as handle:
        fsutil.write_text(fsutil.join(output, "summary.txt"), handle.read())
    return stats
