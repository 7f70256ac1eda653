"""``altsieve audit``: its counts equal the truth table's, its HTML renders, it reads img2dataset output.

The truth is the test corpus's own (each pair's label, the bytes the server serves), through the
end-to-end test's ``expected_reasons``: nothing here is copied from a run's output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altsieve.core import reasons
from altsieve.pipeline.audit import HIST_SPECS, audit, img2dataset_reason
from altsieve.pipeline.audit.html import SECTIONS
from altsieve.pipeline.cli import main, run_all
from altsieve.pipeline.demo import demo_config
from altsieve.testcorpus.generator import TestCorpus, generate_corpus
from altsieve.testcorpus.server import CorpusServer
from tests.test_end_to_end import expected_reasons, key_of, serving


@pytest.fixture(scope="module")
def corpus() -> TestCorpus:
    return generate_corpus(n_pairs=100, seed=0)  # the end-to-end test's corpus


@pytest.fixture(scope="module")
def audited(corpus, tmp_path_factory) -> tuple[str, dict, Path]:
    """A run on the test corpus, audited through the command line."""
    folder = tmp_path_factory.mktemp("audit")
    output = str(folder / "out")
    with serving(corpus, folder) as (_, input_path):
        run_all(demo_config(), [input_path], output, [])
    assert main(["audit", output, "--report", str(folder / "report")]) == 0
    return output, json.loads((folder / "report" / "audit.json").read_text()), folder / "report"


def test_counts_equal_the_truth(corpus, audited) -> None:
    output, data, _ = audited
    expected = expected_reasons(corpus)
    truth = Counter(reason for reason in expected.values() if reason is not None)
    kept = sum(1 for reason in expected.values() if reason is None)
    assert data["kind"] == "altsieve"
    assert data["input_pairs"] == len(corpus.pairs) == data["funnel"]["input_pairs"]
    assert data["reasons"] == dict(truth)
    assert data["kept"] == kept == data["funnel"]["stages"][-1]["remaining"]
    # Each rule of each stage, and the stages' remaining counts, follow from the same truth.
    per_rule = {r["reason"]: r["count"] for stage in data["funnel"]["stages"] for r in stage["reasons"]}
    assert per_rule == dict(truth)
    stages = {stage["stage"]: stage for stage in data["funnel"]["stages"]}
    # Text rules (text_*) run before download too: a pair they drop is never fetched.
    fetched_truth = len(corpus.pairs) - sum(n for r, n in truth.items() if r.startswith(("url_", "caption_",
                                                                                          "text_", "download_")))
    assert stages["fetched"]["remaining"] == fetched_truth
    assert reasons.DUPLICATE_SHA256 in {r["reason"] for r in stages["deduplicated"]["reasons"]}
    # Duplicate clusters: as many redundant pairs as the truth's duplicates, whichever method found them.
    duplicates = sum(n for r, n in truth.items() if r.startswith("duplicate_"))
    assert data["duplicate_clusters"]["redundant_pairs"] == duplicates
    # Image widths of the kept pairs: the truth's expected widths, bin for bin (the bins the data chose, and the
    # overflow bins at either end).
    widths = np.array([p.expected_width for p in corpus.pairs if expected[p.pair_id] is None], dtype=float)
    edges = np.array(data["histograms"]["width"]["edges"])
    inside = widths[(widths >= edges[0]) & (widths < edges[-1])]
    kept_widths = data["histograms"]["width"]["by_label"]["kept"]
    assert kept_widths["counts"] == np.bincount(np.searchsorted(edges, inside, side="right") - 1,
                                                minlength=len(edges) - 1).tolist()
    assert kept_widths["underflow"] == int((widths < edges[0]).sum())
    assert kept_widths["overflow"] == int((widths >= edges[-1]).sum())
    # Failures by error add up to the truth's download failures; the run's own stats.json agrees.
    downloads = sum(n for r, n in truth.items() if r.startswith("download_"))
    assert data["download_failures"]["total"] == downloads
    assert sum(row["count"] for row in data["download_failures"]["by_error"]) == downloads
    assert data["run"]["stats_json_agrees"] is True
    assert data["run"]["recipe"] == "default" and "pyarrow" in data["run"]["versions"]
    # A gallery for every drop reason, each sample carrying its reason; duplicates have their image.
    gallery = {group["reason"]: group for group in data["gallery"]}
    assert set(truth) | {"kept"} == set(gallery)
    by_key = {key_of(pair.pair_id): expected[pair.pair_id] for pair in corpus.pairs}
    for reason, group in gallery.items():
        assert group["samples"] and all(by_key[s["key"]] == (None if reason == "kept" else reason)
                                        for s in group["samples"])
    assert all(s["thumbnail"] for s in gallery[reasons.DUPLICATE_SHA256]["samples"])
    assert not any(s["thumbnail"] for s in gallery[reasons.DOWNLOAD_NOT_FOUND]["samples"])
    # Every reason that had an image shows it: the image rules' drops from ingest's thumbnails, kept pairs and
    # duplicates from the shards, each duplicate beside the pair it names.
    for reason in (reasons.IMAGE_TOO_SMALL, reasons.IMAGE_ASPECT_RATIO, reasons.DUPLICATE_SHA256, "kept"):
        assert gallery[reason]["samples"] and all(s["thumbnail"] for s in gallery[reason]["samples"]), reason
    for sample in gallery[reasons.DUPLICATE_SHA256]["samples"] + gallery.get(reasons.DUPLICATE_PHASH, {}).get(
            "samples", []):
        assert sample["original"]["key"] == sample["duplicate_of"] and sample["original"]["image"]
        assert by_key[sample["original"]["key"]] is None  # the pair it duplicates was kept
    # Only what the run has no values for is "not computed": CLIP scores exist when the recipe enabled CLIP.
    has_clip = demo_config().clip.enabled
    assert data["histograms"]["clip_score"]["computed"] is has_clip
    assert [item["what"] for item in data["not_computed"]] == (
        [] if has_clip else ["CLIP score", "Remaining noise: mismatched captions left"])
    # The run's own thresholds (its config) are drawn beside the published ones.
    assert [64.0, "this run: shorter side >= 64 px"] in data["histograms"]["width"]["run_markers"]
    assert [3.0, "this run: <= 3"] in data["histograms"]["aspect_ratio"]["run_markers"]
    assert data["histograms"]["width"]["markers"] == [[200, "ALIGN/DataComp/COYO 200 px"]]


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    return binary


def _headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # No network at all: the report is one file, and chromium's own background services stay off.
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(audited, tmp_path) -> None:
    binary = _chromium()
    _, data, report = audited
    page = (report / "report.html").resolve().as_uri()
    dom = _headless(binary, tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom", page).stdout
    for section_id, _ in SECTIONS:
        assert f'id="{section_id}"' in dom, f"section {section_id} is missing"
    for group in data["gallery"]:
        assert f'id="gallery-{group["reason"]}"' in dom
    for name in [*(s.name for s in HIST_SPECS), "languages", "duplicates"]:
        assert f'id="hist-{name}"' in dom
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    assert 'data-images-loaded="true"' in body, body
    sources = re.findall(r'<img[^>]*src="([^"]*)"', dom)
    assert len(sources) == total > sum(len(g["samples"]) for g in data["gallery"])  # thumbnails and plots
    assert all(source.startswith("data:") for source in sources)
    screenshot = tmp_path / "report.png"
    _headless(binary, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,6000", page)
    from PIL import Image

    image = Image.open(screenshot).convert("L")
    assert image.size == (1400, 6000)
    assert np.asarray(image).std() > 20  # a page with content, not a blank one


# Labels whose URLs stay on the loopback server: img2dataset has no private-address guard, so the
# redirect to a link-local address and the ftp/invalid URLs are left out, and so are the
# decompression bomb (img2dataset would decode it whole) and the stalled/slow responses (time).
IMG2DATASET_LABELS = {"http_404": 2, "http_500": 1, "corrupt": 1, "html_as_image": 1, "exact_duplicate": 2,
                      "tiny": 1, "webp": 1, "truncated": 1, "palette_png": 1}


def test_img2dataset_output_audits(tmp_path) -> None:
    small = generate_corpus(n_pairs=30, seed=3, label_counts=IMG2DATASET_LABELS)
    output = tmp_path / "i2d"
    # No proxy may see loopback test traffic.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["no_proxy"] = env["NO_PROXY"] = "*"
    with CorpusServer(small) as server:
        input_path = str(tmp_path / "input.parquet")
        small.write_input(input_path, server.base_url)
        command = [str(Path(sys.executable).parent / "img2dataset"), "--url_list", input_path,
                   "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
                   "--output_format", "webdataset", "--output_folder", str(output), "--processes_count", "1",
                   "--thread_count", "8", "--image_size", "64", "--retries", "0", "--timeout", "5",
                   "--enable_wandb", "False", "--distributor", "multiprocessing"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(next(output.glob("*.parquet"))).to_pylist()
    data = audit(str(output), str(tmp_path / "report"), samples_per_reason=4)
    assert data["kind"] == "img2dataset"
    assert data["input_pairs"] == len(rows) == len(small.pairs)
    assert data["kept"] == sum(1 for row in rows if row["status"] == "success")
    assert data["reasons"][reasons.DOWNLOAD_NOT_FOUND] == IMG2DATASET_LABELS["http_404"]
    assert data["reasons"][reasons.DOWNLOAD_SERVER_ERROR] == IMG2DATASET_LABELS["http_500"]
    assert data["run"]["tool"] == "img2dataset" and data["run"]["stats_json_agrees"] is True
    assert data["duplicate_clusters"]["method"].startswith("sha256")
    assert data["duplicate_clusters"]["redundant_pairs"] >= IMG2DATASET_LABELS["exact_duplicate"]
    kept = next(group for group in data["gallery"] if group["reason"] == "kept")
    assert all(sample["thumbnail"] for sample in kept["samples"])  # images read from img2dataset's tars
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


def test_bare_parquet_reports_what_it_cannot_compute(tmp_path) -> None:
    small = generate_corpus(n_pairs=30, seed=1)
    input_path = str(tmp_path / "input.parquet")
    small.write_input(input_path, "http://127.0.0.1:9")  # never fetched: metadata only
    data = audit(input_path, str(tmp_path / "report"))
    assert data["kind"] == "parquet" and data["input_pairs"] == 30 and data["kept"] is None
    missing = {item["what"] for item in data["not_computed"]}
    assert {"Image width (original)", "CLIP score", "Language distribution", "Duplicate cluster sizes",
            "Thumbnails"} <= missing
    assert data["histograms"]["caption_chars"]["computed"] is True
    every = data["histograms"]["caption_chars"]["by_label"]["all"]
    assert every["underflow"] + sum(every["counts"]) + every["overflow"] == 30
    assert "not computed" in (tmp_path / "report" / "report.html").read_text()


def test_unreadable_input_is_one_clear_error(tmp_path, capsys) -> None:
    pq.write_table(pa.table({"link": ["http://example.com/a.jpg"], "caption": ["a cat"]}), tmp_path / "pairs.parquet")
    assert main(["audit", str(tmp_path / "pairs.parquet"), "--report", str(tmp_path / "r")]) == 2
    message = capsys.readouterr().err
    assert "pairs.parquet" in message and "'url'" in message and "--url-col" in message


@pytest.mark.parametrize(("status", "message", "expected"), [
    ("success", None, None),
    ("failed_to_download", "HTTP Error 404: Not Found", reasons.DOWNLOAD_NOT_FOUND),
    ("failed_to_download", "HTTP Error 503: Service Unavailable", reasons.DOWNLOAD_SERVER_ERROR),
    ("failed_to_download", "<urlopen error timed out>", reasons.DOWNLOAD_TIMEOUT),
    ("failed_to_download", "something new", "download_error"),
    ("failed_to_resize", "image too small", reasons.IMAGE_TOO_SMALL),
    ("failed_to_resize", "cannot identify image file", reasons.DECODE_ERROR),
])
def test_img2dataset_status_maps_to_reason_codes(status, message, expected) -> None:
    assert img2dataset_reason(status, message) == expected
