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


# ---------------------------------------------------------------------------------------------
# Thumbnails, two recipes compared, remaining noise, and the page driven in Chromium


@pytest.fixture(scope="module")
def compared(corpus, audited, tmp_path_factory) -> tuple[str, dict, Path]:
    """The demo recipe (default + CLIP) on the same corpus, compared with the default run through the CLI."""
    folder = tmp_path_factory.mktemp("compare")
    output = str(folder / "demo")
    with serving(corpus, folder) as (_, input_path):
        run_all(demo_config("demo"), [input_path], output, [])
    report = folder / "report"
    assert main(["audit", audited[0], "--compare", output, "--report", str(report)]) == 0
    return output, json.loads((report / "compare.json").read_text()), report


def _thumbnail_keys(output: str) -> dict[str, str]:
    from altsieve.transforms.thumbnails import read_thumbnails

    return {key: reason for tar in sorted(Path(output, "_candidates").glob("*_thumbs.tar"))
            for key, reason, _ in read_thumbnails(str(tar))}


def test_ingest_keeps_a_thumbnail_of_every_pair_dropped_after_decode(corpus, audited, compared) -> None:
    from tests.test_clip import expected_with_clip

    # 25 pairs a partition, at most 24 thumbnails a reason and partition: every such pair has one here.
    for output, expected in ((audited[0], expected_reasons(corpus)), (compared[0], expected_with_clip(corpus))):
        after_decode = {key_of(p): r for p, r in expected.items()
                        if r is not None and reasons.stage_of(r).name in (reasons.IMAGE, reasons.CLIP)}
        assert after_decode and _thumbnail_keys(output) == after_decode
    assert any(r.startswith("clip_") for r in _thumbnail_keys(compared[0]).values())


def test_compare_of_two_recipes_shows_the_deltas_the_truth_implies(corpus, compared) -> None:
    from tests.test_clip import expected_with_clip

    _, data, report = compared
    default, demo = expected_reasons(corpus), expected_with_clip(corpus)
    transitions = Counter((default[p.pair_id] or "kept", demo[p.pair_id] or "kept") for p in corpus.pairs)
    assert {(r["a"], r["b"]): r["count"] for r in data["transitions"]} == dict(transitions)
    truth_a = Counter(r for r in default.values() if r is not None)
    truth_b = Counter(r for r in demo.values() if r is not None)
    assert {r["reason"]: r["delta"] for r in data["reasons"]} == {
        code: truth_b[code] - truth_a[code] for code in set(truth_a) | set(truth_b)}
    kept_a = {p for p, r in default.items() if r is None}
    kept_b = {p for p, r in demo.items() if r is None}
    overlap = data["overlap"]
    assert (overlap["kept_both"], overlap["kept_only_a"], overlap["kept_only_b"]) == (
        len(kept_a & kept_b), len(kept_a - kept_b), len(kept_b - kept_a))
    assert overlap["match_on"] == "key" and overlap["jaccard"] == round(len(kept_a & kept_b) / len(kept_a | kept_b), 5)
    # What the default kept and the demo's CLIP dropped, with the default run's image and the demo's score.
    kept_by_a = {g["reason"]: g for g in data["galleries"][0]["groups"]}
    clip_dropped = kept_by_a[reasons.CLIP_SCORE_BELOW_THRESHOLD]
    assert clip_dropped["count"] == transitions[("kept", reasons.CLIP_SCORE_BELOW_THRESHOLD)]
    assert all(s["thumbnail"] and s["other_clip_score"] < 0.5 for s in clip_dropped["samples"])
    assert {s["key"] for s in clip_dropped["samples"]} <= {key_of(p) for p in kept_a - kept_b}
    funnel = {r["stage"]: r for r in data["funnel"]}
    assert funnel["kept"]["delta"] == len(kept_b) - len(kept_a)
    for side in ("a", "b"):
        assert (report / side / "report.html").exists() and (report / side / "audit.json").exists()


def test_noise_estimates_hold_the_truth(corpus, audited, compared) -> None:
    from altsieve.transforms.imageops import hamming64, process_image
    from tests.test_clip import expected_with_clip
    from tests.test_end_to_end import served_image

    demo = json.loads((compared[2] / "b" / "audit.json").read_text())["noise_estimates"]
    # CLIP: the demo recipe dropped every mismatched English caption, so none is left among the kept ones.
    english = next(r for r in demo["clip"]["by_group"] if r["group"] == "en")
    expected = expected_with_clip(corpus)
    kept_english = [p for p in corpus.pairs if expected[p.pair_id] is None and p.language == "en"]
    assert not [p for p in kept_english if p.label == "mismatched_caption"]
    assert english["interval"][0] == 0.0 and english["sample"] >= 0.9 * len(kept_english)
    # Language purity: each checked language's interval holds the truth (the corpus's own caption language).
    default = audited[1]["noise_estimates"]
    rows = {row["key"]: row for row in e2e_rows(audited[0])}
    for estimate in default["language_purity"]["by_language"]:
        labelled = [p for p in corpus.pairs if rows[key_of(p.pair_id)]["reason"] is None
                    and rows[key_of(p.pair_id)]["language"] == estimate["language"]]
        purity = sum(p.language == estimate["language"] for p in labelled) / len(labelled)
        assert estimate["interval"][0] <= purity <= estimate["interval"][1], estimate
    # Near duplicates: every kept pair is checked (a small corpus), so the share within the looser distance is
    # exact; the planted copies left near their kept original are among them.
    near = default["near_duplicates"]
    assert near["exact"] and near["run_distance"] == 4 and near["loose_distance"] == 8
    truth = expected_reasons(corpus)
    kept = [p for p in corpus.pairs if truth[p.pair_id] is None]
    hashes = {p.pair_id: process_image(served_image(corpus, p)).phash for p in kept}
    near_truth = {p for p in hashes if any(hamming64(hashes[p], hashes[q]) <= 8 for q in hashes if q != p)}
    by_distance = {r["distance"]: r for r in near["by_distance"]}
    assert by_distance[8]["share_near"] == round(len(near_truth) / len(kept), 5)
    assert by_distance[4]["share_near"] == 0.0  # the run's own distance left nothing


def e2e_rows(output: str) -> list[dict]:
    from tests.test_end_to_end import all_rows

    return list(all_rows(output).values())


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through WebDriver (Debian's chromedriver), offline, with a fresh profile."""
    _chromium()
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromedriver is missing in CI: .ci/run installs it (apt-get install chromium-driver)")
        pytest.skip("chromedriver is not installed (apt-get install -y chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.resolve().as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.body.dataset.imagesLoaded !== 'pending' && "
                                   "document.body.dataset.ready === 'true'"))


def _visible_rows(browser, table_id: str) -> list[list[str]]:
    return browser.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".filter(r => r.style.display !== 'none').map(r => Array.from(r.cells).map("
        "c => c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent.trim()))", table_id)


def test_the_page_sorts_filters_drills_down_and_loads_every_image(audited, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, data, report = audited
    _open(browser, report / "report.html")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.src.slice(0, 5)])")
    assert images and all(ok and src == "data:" for ok, src in images)
    assert browser.execute_script("return document.body.dataset.imagesLoaded") == "true"
    # Every gallery image decoded, hidden ones ('show more') included.
    gallery = browser.find_elements(By.CSS_SELECTOR, "#gallery img.t")
    assert len(gallery) >= sum(len(g["samples"]) for g in data["gallery"])
    # Sorting: the first click on a count sorts descending, the second ascending.
    header = browser.find_element(By.XPATH, "//table[@id='reasons-table']//th[text()='pairs']")
    header.click()
    counts = [int(row[2]) for row in _visible_rows(browser, "reasons-table")]
    assert counts == sorted(data["reasons"].values(), reverse=True)
    header.click()
    assert [int(row[2]) for row in _visible_rows(browser, "reasons-table")] == sorted(data["reasons"].values())
    # Search and category filter change what is shown.
    table = browser.find_element(By.ID, "reasons-table")
    toolbar = table.find_element(By.XPATH, "preceding-sibling::div[@class='toolbar'][1]")
    toolbar.find_element(By.CSS_SELECTOR, "input.t-search").send_keys("download")
    shown = _visible_rows(browser, "reasons-table")
    assert shown and all("download" in row[0] for row in shown)
    assert len(shown) == sum(1 for r in data["reasons"] if "download" in r) < len(data["reasons"])
    toolbar.find_element(By.CSS_SELECTOR, "input.t-search").clear()
    browser.execute_script("arguments[0].dispatchEvent(new Event('input'))",
                           toolbar.find_element(By.CSS_SELECTOR, "input.t-search"))
    Select(toolbar.find_element(By.CSS_SELECTOR, "select.t-filter")).select_by_value("decoded")
    shown = _visible_rows(browser, "reasons-table")
    assert sorted(row[0] for row in shown) == sorted(r for r in data["reasons"] if r.startswith("decode_"))
    # The funnel table's rule rows travel with their stage when searched.
    funnel_toolbar = browser.find_element(By.XPATH, "//table[@id='funnel-table']/preceding-sibling::div[1]")
    funnel_toolbar.find_element(By.CSS_SELECTOR, "input.t-search").send_keys("image_too_small")
    assert [row[0] for row in _visible_rows(browser, "funnel-table")] == ["image rules", reasons.IMAGE_TOO_SMALL]
    # Drill down by language: the counts of its pairs, rule by rule, as the audit counted them.
    Select(browser.find_element(By.ID, "explore-dim")).select_by_value("language")
    languages = data["languages"]["languages"]
    Select(browser.find_element(By.ID, "explore-choice")).select_by_index(0)
    summary = browser.find_element(By.ID, "explore-summary")
    assert int(summary.get_attribute("data-total")) == languages[0]["total"]
    assert int(summary.get_attribute("data-kept")) == languages[0]["labels"].get("kept", 0)
    assert {row[0]: int(row[2]) for row in _visible_rows(browser, "explore-table")} == languages[0]["labels"]
    # ... and the gallery filtered to it: every card shown is of that language.
    browser.find_element(By.ID, "explore-gallery").click()
    shown_languages = browser.execute_script(
        "return Array.from(document.querySelectorAll('#gallery figure.thumb'))"
        ".filter(f => getComputedStyle(f).display !== 'none').map(f => f.dataset.lang)")
    assert shown_languages and set(shown_languages) == {languages[0]["language"]}
    browser.find_element(By.CSS_SELECTOR, "#gallery .g-clear").click()
    # More samples on demand: the kept block shows 6, then 12.
    kept = browser.find_element(By.ID, "gallery-kept")

    def visible_cards() -> int:
        return browser.execute_script("return Array.from(arguments[0].querySelectorAll('figure.thumb'))"
                                      ".filter(f => getComputedStyle(f).display !== 'none').length", kept)

    assert visible_cards() == 6
    kept.find_element(By.CSS_SELECTOR, "button.more-button").click()
    assert visible_cards() == min(12, len(next(g for g in data["gallery"] if g["reason"] == "kept")["samples"]))
    # The gallery's reason filter leaves one reason's block.
    Select(browser.find_element(By.CSS_SELECTOR, "#gallery .g-reason")).select_by_value(reasons.IMAGE_TOO_SMALL)
    blocks = browser.execute_script("return Array.from(document.querySelectorAll('#gallery .reason'))"
                                    ".filter(b => getComputedStyle(b).display !== 'none').map(b => b.dataset.reason)")
    assert blocks == [reasons.IMAGE_TOO_SMALL]


def test_cjk_captions_render_as_glyphs_not_boxes(audited, browser) -> None:
    """A Chinese and a Japanese caption, rendered in the page's own caption style, against characters no font
    has (private use: what tofu looks like): the screenshots differ, and two different captions differ too."""
    import io as _io

    from PIL import Image
    from selenium.webdriver.common.by import By

    _, data, report = audited
    captions = [r["caption"] for g in data["gallery"] for r in g["samples"]
                if r.get("caption") and re.search(r"[\u4e00-\u9fff\u3040-\u30ff]", r["caption"])]
    assert captions, "the test corpus's gallery has Chinese or Japanese captions"
    _open(browser, report / "report.html")
    probe = browser.execute_script(
        "var d = document.createElement('div'); d.className = 'cap'; d.id = 'cjk-probe';"
        "d.style.cssText = 'position:fixed;top:80px;left:10px;font-size:28px;background:#fff;z-index:9;"
        "padding:4px;white-space:nowrap'; document.body.appendChild(d); return d;")

    def shot(text: str, lang: str) -> np.ndarray:
        browser.execute_script("arguments[0].textContent = arguments[1]; arguments[0].lang = arguments[2];",
                               probe, text, lang)
        png = browser.find_element(By.ID, "cjk-probe").screenshot_as_png
        return np.asarray(Image.open(_io.BytesIO(png)).convert("L"))

    for text, lang in (("一只猫坐在沙发上", "zh"), ("猫がソファに座っている", "ja"), (captions[0][:10], "zh")):
        glyphs = shot(text, lang)
        tofu = shot("\ue000" * len(text), lang)
        assert glyphs.std() > 20, text  # ink on the page
        assert glyphs.shape != tofu.shape or np.abs(glyphs.astype(int) - tofu.astype(int)).mean() > 5, text
    a, b = shot("蓝天白云", "zh"), shot("山水画卷", "zh")
    assert a.shape != b.shape or np.abs(a.astype(int) - b.astype(int)).mean() > 5  # tofu boxes would be identical


def test_the_comparison_page_shows_the_deltas(compared, browser) -> None:
    from selenium.webdriver.common.by import By

    _, data, report = compared
    _open(browser, report / "report.html")
    assert browser.execute_script("return document.body.dataset.imagesLoaded") == "true"
    deltas = {row[0]: int(row[4]) for row in _visible_rows(browser, "compare-reasons-table")}
    assert deltas == {r["reason"]: r["delta"] for r in data["reasons"]}
    assert deltas[reasons.CLIP_SCORE_BELOW_THRESHOLD] > 0
    cards = browser.find_elements(By.CSS_SELECTOR, f"#compare-a-{reasons.CLIP_SCORE_BELOW_THRESHOLD} figure.thumb")
    assert cards and all(card.get_attribute("data-reason") == reasons.CLIP_SCORE_BELOW_THRESHOLD for card in cards)
