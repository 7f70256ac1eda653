"""End to end on the noisy-web test corpus: every reason count equals the truth table's.

The expected reason of each pair is computed from its true label and the recipe's rules (the
table below says which rule a label falls to), and exact duplicates from the bytes the server
really serves: nothing here is copied from a run's output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from altsieve.core import reasons
from altsieve.pipeline.cli import run_all
from altsieve.pipeline.demo import DEMO_OVERRIDES, demo_config
from altsieve.testcorpus.generator import EXPECTED_REASON, TestCorpus
from altsieve.testcorpus.server import CorpusServer

# What the default recipe (with the demo's download settings: 1 retry, 2 s timeouts) does to each
# label: the corpus's own truth for the outcomes no rule setting changes, then the default recipe's
# verdict on the labels that depend on it. None: kept by the ingest pass; exact and perceptual
# duplicates are then settled from the served bytes in expected_reasons().
EXPECTED_BY_LABEL: dict[str, str | None] = {
    **EXPECTED_REASON,
    "exact_duplicate": None,  # settled from the served bytes
    "mismatched_caption": None,  # the default recipe has no CLIP (tests/test_clip.py covers the demo recipe)
    "near_dup_reencoded": None,  # pHash dedup: settled from the served images
    "near_dup_resized": None,
    "near_dup_cropped": None,
    "near_dup_brightened": None,
    "boilerplate_caption": reasons.TEXT_BOILERPLATE,  # the default recipe's shipped boilerplate list
    "shared_caption": None,  # corpus-wide text rules are off in the default recipe (see test_text_and_recipes.py)
    "many_captions_image": None,
}


def served_image(corpus: TestCorpus, pair) -> bytes:
    """The image bytes a pair's URL ends at (redirects followed)."""
    response = corpus.responses[pair.path]
    while response.redirect_to is not None:
        response = corpus.responses[response.redirect_to]
    return response.body


def expected_reasons(corpus: TestCorpus) -> dict[int, str | None]:
    """pair_id -> expected final reason: the label's rule, then exact duplicates by served bytes, then pHash
    duplicates (within the default distance of a kept pair with a smaller key) of the served images."""
    from altsieve.core.config import DedupConfig
    from altsieve.transforms.imageops import hamming64, process_image

    expected = {pair.pair_id: EXPECTED_BY_LABEL[pair.label] for pair in corpus.pairs}
    first_with_digest: dict[str, int] = {}
    for pair in corpus.pairs:  # input order = key order: the smallest key of a group is kept
        if expected[pair.pair_id] is not None:
            continue
        digest = hashlib.sha256(corpus.responses[pair.path].body).hexdigest()
        if digest in first_with_digest:
            expected[pair.pair_id] = reasons.DUPLICATE_SHA256
        else:
            first_with_digest[digest] = pair.pair_id
    max_distance = DedupConfig().phash_max_distance
    kept_hashes: list[int] = []
    for pair in corpus.pairs:  # the greedy rule of dedup/resolve.py, as a loop
        if expected[pair.pair_id] is not None:
            continue
        phash = process_image(served_image(corpus, pair)).phash
        if any(hamming64(phash, other) <= max_distance for other in kept_hashes):
            expected[pair.pair_id] = reasons.DUPLICATE_PHASH
        else:
            kept_hashes.append(phash)
    return expected


def key_of(pair_id: int) -> str:
    return f"00000{pair_id:010d}"


@contextmanager
def serving(corpus: TestCorpus, folder: Path):
    """A fresh server (the corpus's stateful responses, such as 503-then-200, start over) and its input file."""
    folder.mkdir(parents=True, exist_ok=True)
    with CorpusServer(corpus) as server:
        input_path = str(folder / "input.parquet")
        corpus.write_input(input_path, server.base_url)
        yield server, input_path


@pytest.fixture
def served(corpus, tmp_path):
    with serving(corpus, tmp_path) as pair:
        yield pair


@pytest.fixture(scope="module")
def in_memory_run(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in_memory")
    with serving(corpus, folder) as (_, input_path):
        stats = run_all(demo_config(), [input_path], str(folder / "out"), [])
    return str(folder / "out"), stats


def all_rows(output: str) -> dict[str, dict]:
    """key -> final row: the candidate row with the select decision laid over it."""
    rows = {}
    for path in sorted(Path(output, "_candidates").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows[row["key"]] = row
    for path in sorted(Path(output, "_decisions").glob("*.parquet")):
        for decision in pq.read_table(path).to_pylist():
            rows[decision["key"]]["reason"] = decision["reason"]
            rows[decision["key"]]["duplicate_of"] = decision["duplicate_of"]
    return rows


def final_keys(output: str) -> list[str]:
    keys = []
    for path in sorted(Path(output).glob("[0-9][0-9][0-9][0-9][0-9].parquet")):
        keys += pq.read_table(path, columns=["key"])["key"].to_pylist()
    return keys


def test_every_reason_count_equals_the_truth(corpus, in_memory_run) -> None:
    output, stats = in_memory_run
    expected = expected_reasons(corpus)
    rows = all_rows(output)
    assert len(rows) == len(corpus.pairs)
    expected_counts = Counter(r for r in expected.values() if r is not None)
    assert stats["reasons"] == dict(expected_counts)
    # Not only the counts: each pair has its own expected reason.
    wrong = {
        pair.label: (rows[key_of(pair.pair_id)]["reason"], expected[pair.pair_id])
        for pair in corpus.pairs
        if rows[key_of(pair.pair_id)]["reason"] != expected[pair.pair_id]
    }
    assert wrong == {}


def test_every_kept_pair_appears_once_with_the_right_image(corpus, in_memory_run) -> None:
    output, stats = in_memory_run
    expected = expected_reasons(corpus)
    kept = sorted(key_of(pid) for pid, reason in expected.items() if reason is None)
    keys = final_keys(output)
    assert keys == kept  # each kept pair exactly once, in key order
    assert stats["output_samples"] == len(kept) == stats["funnel"]["kept"]
    shard_stats = [json.loads(Path(p).read_text()) for p in sorted(Path(output).glob("[0-9]*_stats.json"))]
    counts = [s["successes"] for s in shard_stats]  # img2dataset's meaning: the samples in the shard
    per_shard = DEMO_OVERRIDES["output"]["samples_per_shard"]
    assert all(c == per_shard for c in counts[:-1]) and 0 < counts[-1] <= per_shard
    # ... and its "count": the input rows it stands for, so that the shards together count the whole input
    assert sum(s["count"] for s in shard_stats) == len(corpus.pairs)
    by_key = {pair.pair_id: pair for pair in corpus.pairs}
    rows = {r["key"]: r for p in Path(output).glob("[0-9]*.parquet") for r in pq.read_table(p).to_pylist()}
    for key in keys:
        pair, row = by_key[int(key[5:])], rows[key]
        assert row["status"] == "success" and row["reason"] is None
        assert (row["original_width"], row["original_height"]) == (pair.expected_width, pair.expected_height)
        assert (row["width"], row["height"]) == (256, 256)  # border mode
        assert row["caption"] == pair.caption
        assert row["source_id"] is not None  # the carried input column


def test_dropped_duplicates_name_the_pair_they_duplicate(corpus, in_memory_run) -> None:
    output, _ = in_memory_run
    rows = all_rows(output)
    duplicates = [r for r in rows.values() if r["reason"] == reasons.DUPLICATE_SHA256]
    assert duplicates
    for row in duplicates:
        keeper = rows[row["duplicate_of"]]
        assert keeper["reason"] is None and keeper["sha256"] == row["sha256"] and keeper["key"] < row["key"]
    from altsieve.transforms.imageops import hamming64

    near = [r for r in rows.values() if r["reason"] == reasons.DUPLICATE_PHASH]
    assert near
    for row in near:
        keeper = rows[row["duplicate_of"]]
        assert keeper["reason"] is None and keeper["key"] < row["key"] and hamming64(keeper["phash"], row["phash"]) <= 4


def test_output_reads_back_with_webdataset(in_memory_run) -> None:
    import webdataset as wds

    output, stats = in_memory_run
    tars = sorted(str(p) for p in Path(output).glob("[0-9]*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "txt", "json"))
    assert len(samples) == stats["output_samples"]
    for key, image, caption, meta in samples:
        assert image.size == (256, 256) and image.mode == "RGB"
        assert meta["key"] == key and meta["caption"] == caption


def test_open_clip_loader_reads_the_shards(in_memory_run) -> None:
    """open_clip's training loader (webdataset pipeline with its own decoder) reads the tars as they are."""
    pytest.importorskip("open_clip")
    import webdataset as wds

    output, stats = in_memory_run
    tars = sorted(str(p) for p in Path(output).glob("[0-9]*.tar"))
    # The stages open_clip_train.data.get_wds_dataset chains: keys jpg;png;jpeg;webp and txt.
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(tars), wds.tarfile_to_samples(), wds.decode("pilrgb"),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"), wds.to_tuple("image", "text"),
    )
    assert sum(1 for _ in pipeline) == stats["output_samples"]


def test_manifest_and_stats(in_memory_run) -> None:
    output, stats = in_memory_run
    manifest = json.loads(Path(output, "manifest.json").read_text())
    assert manifest["total_samples"] == stats["output_samples"]
    assert sum(s["count"] for s in manifest["shards"]) == stats["output_samples"]
    assert manifest["config"]["download"]["allow_private_addresses"] == ["127.0.0.1/32"]
    funnel = stats["funnel"]
    assert funnel["input_pairs"] == 100
    assert funnel["stages"][-1]["remaining"] == funnel["kept"]
    assert "input pairs" in Path(output, "summary.txt").read_text()


def test_multi_processing_gives_the_same_output(served, in_memory_run, tmp_path) -> None:
    _, input_path = served
    reference, _ = in_memory_run
    output = str(tmp_path / "mp")
    run_all(demo_config(), [input_path], output,
            ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert final_keys(output) == final_keys(reference)
    for path in sorted(Path(reference).glob("[0-9]*.tar")):
        assert _comparable(_tar_members(path)) == _comparable(_tar_members(Path(output, path.name)))
    assert _without_server(all_rows(output)) == _without_server(all_rows(reference))


# Each run has its own server port, which shows in these fields.
PORT_DEPENDENT = ("url", "final_url", "error_message")


def _without_server(rows: dict[str, dict]) -> dict[str, dict]:
    return {key: {c: v for c, v in row.items() if c not in PORT_DEPENDENT} for key, row in rows.items()}


def _comparable(members: dict[str, bytes]) -> dict[str, object]:
    return {
        name: {k: v for k, v in json.loads(data).items() if k not in PORT_DEPENDENT} if name.endswith(".json") else data
        for name, data in members.items()
    }


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_killed_run_resumes_without_loss_or_duplicates(served, in_memory_run, tmp_path) -> None:
    """Kill a run after some partitions are written; the rerun skips them and completes the rest."""
    _, input_path = served
    reference, _ = in_memory_run
    output = tmp_path / "killed"
    args = [sys.executable, "-m", "altsieve.pipeline.cli", "run", input_path, "--output", str(output),
            "--allow-private-addresses", "127.0.0.1/32", "--timeout", "2", "--retries", "1",
            "--rows-per-partition", "10", "--samples-per-shard", "32",
            "--set", "download.connect_timeout_s=2", "--set", "download.backoff_max_s=0.5",
            "--set", "download.retry_after_max_s=2", "--set", "input.save_additional_columns=[source_id]"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = output / "_candidates"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(markers.glob("*.done"))) < 2:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in markers.glob("*.done")}
    assert 2 <= len(done_before) < 10, "the kill must land mid-run"
    assert not list(output.glob("[0-9]*.tar"))
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The finished partitions were not redone, and no temporary file is left behind.
    assert {p.name: p.stat().st_mtime_ns for p in markers.glob("*.done") if p.name in done_before} == done_before
    assert not list(output.rglob(".tmp-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"altsieve-beam-{process.pid}-*"))  # the killed run's Beam folder
    assert final_keys(str(output)) == final_keys(reference)


def test_retry_failed_fetches_only_transient_failures(corpus, served, tmp_path) -> None:
    server, input_path = served
    output = str(tmp_path / "retry")
    run_all(demo_config(), [input_path], output, [])
    transient = corpus.pairs_with_label("transient_then_ok")[0]
    assert all_rows(output)[key_of(transient.pair_id)]["reason"] == reasons.DOWNLOAD_SERVER_ERROR
    watched = {label: corpus.pairs_with_label(label)[0].path for label in ("clean", "http_404", "robots_noai")}
    before = {label: server.request_count(path) for label, path in watched.items()}
    # More retries now: the server answers 503 five times in all, then 200.
    stats = run_all(demo_config(extra=[{"download": {"retries": 4}}]), [input_path], output, [],
                    retry_failed=True)
    assert {label: server.request_count(path) for label, path in watched.items()} == before
    rows = all_rows(output)
    assert rows[key_of(transient.pair_id)]["reason"] is None
    assert key_of(transient.pair_id) in final_keys(output)
    assert rows[key_of(corpus.pairs_with_label("http_404")[0].pair_id)]["reason"] == reasons.DOWNLOAD_NOT_FOUND
    assert stats["funnel"]["input_pairs"] == 100
    # The merged candidate shard still holds every earlier image once.
    keys = [k for p in Path(output, "_candidates").glob("*.tar") for k in _tar_members(p) if k.endswith(".jpg")]
    assert len(keys) == len(set(keys))


def test_bad_input_is_one_clear_error(tmp_path, capsys) -> None:
    from altsieve.pipeline.cli import main

    table_path = tmp_path / "pairs.csv"
    table_path.write_text("link,text\nhttp://example.com/a.jpg,a cat\n")
    code = main(["run", str(table_path), "--output", str(tmp_path / "out")])
    assert code == 2
    message = capsys.readouterr().err
    assert "pairs.csv" in message and "'url'" in message and "--url-col" in message


def test_image_bytes_are_resized_jpegs(in_memory_run) -> None:
    from PIL import Image

    output, _ = in_memory_run
    first = sorted(Path(output).glob("[0-9]*.tar"))[0]
    images = [v for k, v in _tar_members(first).items() if k.endswith(".jpg")]
    assert images and all(Image.open(io.BytesIO(b)).format == "JPEG" for b in images)
