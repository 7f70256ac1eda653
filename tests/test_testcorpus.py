"""The noisy-web test corpus: deterministic, every label present, and served as each label promises."""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from altsieve.testcorpus import (
    BOILERPLATE_CAPTIONS,
    EXPECTED_REASON,
    INPUT_FORMATS,
    LABELS,
    CorpusPair,
    CorpusServer,
    TestCorpus,
    caption_for,
    format_from_path,
    generate_corpus,
    label_counts_for,
    mismatched_caption,
    random_scene,
    serve_forever_cli,
)
from altsieve.testcorpus import server as server_module

TIMEOUT_S = 5.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # surface the 3xx as an HTTPError so the test sees Location without following it


# No proxy: a proxy from the environment must never see loopback test traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_NO_REDIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


@pytest.fixture(scope="module")
def corpus() -> TestCorpus:
    return generate_corpus(100, seed=0)


@pytest.fixture(scope="module")
def base_url(corpus: TestCorpus) -> Iterator[str]:
    with CorpusServer(corpus) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def server(corpus: TestCorpus) -> Iterator[CorpusServer]:
    """A second server for tests that read request counts."""
    with CorpusServer(corpus) as running:
        yield running


def _one(corpus: TestCorpus, label: str) -> CorpusPair:
    return corpus.pairs_with_label(label)[0]


def _get(url: str, timeout: float = TIMEOUT_S) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) without following redirects; HTTP errors are returned, not raised."""
    try:
        with _NO_REDIRECT_OPENER.open(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def _final_body(corpus: TestCorpus, path: str) -> bytes:
    """Body at the end of a server-path redirect chain, read straight from the plan."""
    response = corpus.responses[path]
    for _ in range(10):
        if response.redirect_to is None:
            return response.body
        response = corpus.responses[response.redirect_to]
    raise AssertionError(f"{path} redirects too often")


# ---------------------------------------------------------------------------------------------
# Scenes and captions


def test_captions_in_every_language() -> None:
    import random

    rng = random.Random(3)
    for _ in range(200):
        spec = random_scene(rng)
        assert len(caption_for(spec, "en", rng).split()) >= 3
        for lang in ("zh", "ja", "de"):
            assert caption_for(spec, lang, rng)
    spec = random_scene(rng)
    for _ in range(50):
        other = mismatched_caption(spec, "en", rng)
        assert spec.colour not in other.split() and spec.shape not in other


def test_caption_examples() -> None:
    import random

    from altsieve.testcorpus import SceneSpec

    spec = SceneSpec("circle", "red", "left", 2, "gray")
    texts = {lang: {caption_for(spec, lang, random.Random(k)) for k in range(40)} for lang in ("en", "zh", "ja", "de")}
    assert "two red circles on the left" in texts["en"]
    assert "左边有两个红色的圆形" in texts["zh"]
    assert "左側に赤い丸が二つあります" in texts["ja"]
    assert "Zwei rote Kreise auf der linken Seite" in texts["de"]


# ---------------------------------------------------------------------------------------------
# Generation


def test_generation_is_deterministic() -> None:
    first, second = generate_corpus(60, seed=5), generate_corpus(60, seed=5)
    assert first.pairs == second.pairs
    assert list(first.responses) == list(second.responses)
    for path in first.responses:
        assert first.responses[path].body == second.responses[path].body, path
    other = generate_corpus(60, seed=6)
    assert [p.caption for p in other.pairs] != [p.caption for p in first.pairs]


def test_every_label_present(corpus: TestCorpus) -> None:
    counts = corpus.label_counts()
    assert len(corpus.pairs) == 100
    assert [p.pair_id for p in corpus.pairs] == list(range(100))
    assert {label for label, n in counts.items() if n == 0} == set()
    assert set(EXPECTED_REASON) <= set(LABELS)


def test_label_counts_scale() -> None:
    counts = label_counts_for(10_000)
    assert sum(counts.values()) == 10_000
    assert counts["http_404"] == 100 and counts["shared_caption"] == 50
    assert counts["clean"] > 5_000
    small = generate_corpus(20, seed=1)
    assert len(small.pairs) == 20 and small.pairs[0].label == "clean"
    assert generate_corpus(10, label_counts={}).label_counts()["clean"] == 10


def test_duplicates_point_to_earlier_originals(corpus: TestCorpus) -> None:
    by_id = {pair.pair_id: pair for pair in corpus.pairs}
    copies = Counter(pair.duplicate_of for pair in corpus.pairs_with_label("exact_duplicate"))
    assert max(copies.values()) >= 2  # one image at three URLs
    for pair in corpus.pairs:
        if pair.label == "exact_duplicate":
            original = by_id[pair.duplicate_of]
            assert original.label == "clean" and original.pair_id < pair.pair_id
            assert corpus.responses[pair.path].body == corpus.responses[original.path].body
            assert pair.path != original.path
        elif pair.label.startswith("near_dup_"):
            original = by_id[pair.duplicate_of]
            assert original.label == "clean" and original.pair_id < pair.pair_id
            assert corpus.responses[pair.path].body != corpus.responses[original.path].body


def test_shared_and_many_captions(corpus: TestCorpus) -> None:
    shared = corpus.pairs_with_label("shared_caption")
    assert len(shared) >= 3 and len({p.caption for p in shared}) == 1
    assert len({corpus.responses[p.path].body for p in shared}) == len(shared)
    many = corpus.pairs_with_label("many_captions_image")
    assert len(many) >= 3
    assert len({corpus.responses[p.path].body for p in many}) == 1
    assert len({p.caption for p in many}) == len(many)
    assert len({p.path for p in many}) == len(many)
    assert [p.duplicate_of for p in many][0] is None
    assert all(p.duplicate_of == many[0].pair_id for p in many[1:])


def test_captions_and_languages(corpus: TestCorpus) -> None:
    assert {p.language for p in corpus.pairs_with_label("clean")} == {"en", "zh", "ja", "de"}
    for pair in corpus.pairs:
        if pair.language == "en" and pair.label not in ("shared_caption",):
            assert len(pair.caption.split()) >= 3, pair
    assert _one(corpus, "empty_caption").caption == ""
    assert _one(corpus, "boilerplate_caption").caption in BOILERPLATE_CAPTIONS
    assert _one(corpus, "bad_url").raw_url == "not a url"
    assert _one(corpus, "ftp_url").raw_url == "ftp://example.com/a.jpg"


def test_images_match_truth(corpus: TestCorpus) -> None:
    checked = 0
    for pair in corpus.pairs:
        if pair.expected_width is None:
            continue
        image = Image.open(io.BytesIO(_final_body(corpus, pair.path)))
        assert image.format == pair.image_format, pair
        image.load()
        upright = ImageOps.exif_transpose(image)
        assert upright.size == (pair.expected_width, pair.expected_height), pair
        checked += 1
    assert checked > 70
    clean = _one(corpus, "clean")
    assert min(clean.expected_width, clean.expected_height) >= 200


def test_special_formats(corpus: TestCorpus) -> None:
    def open_label(label: str) -> Image.Image:
        return Image.open(io.BytesIO(corpus.responses[_one(corpus, label).path].body))

    assert open_label("cmyk_jpeg").mode == "CMYK"
    assert open_label("palette_png").mode == "P"
    alpha = open_label("alpha_png")
    assert alpha.mode == "RGBA" and alpha.getchannel("A").getextrema() == (0, 255)
    gif = open_label("animated_gif")
    assert gif.format == "GIF" and gif.n_frames == 3
    assert open_label("webp").format == "WEBP"
    assert open_label("tiny").size == (40, 30)
    assert open_label("extreme_aspect").size == (900, 100)
    rotated = open_label("exif_rotated")
    assert rotated.size == (240, 320) and rotated.getexif()[0x0112] == 6
    assert ImageOps.exif_transpose(rotated).size == (320, 240)


@pytest.mark.parametrize("label", ["truncated", "corrupt"])
def test_damaged_jpegs_fail_on_load(corpus: TestCorpus, label: str) -> None:
    pair = _one(corpus, label)
    assert pair.image_format == "JPEG" and pair.expected_width is None
    image = Image.open(io.BytesIO(corpus.responses[pair.path].body))
    assert image.format == "JPEG" and image.size == (320, 240)
    with pytest.raises(OSError):
        image.load()


def test_corrupt_jpegs_never_decode() -> None:
    corpus = generate_corpus(60, seed=9, label_counts={"corrupt": 20})
    for pair in corpus.pairs_with_label("corrupt"):
        with pytest.raises(OSError):
            Image.open(io.BytesIO(corpus.responses[pair.path].body)).load()


def test_bomb_header_only(corpus: TestCorpus, monkeypatch: pytest.MonkeyPatch) -> None:
    body = corpus.responses[_one(corpus, "bomb").path].body
    assert len(body) < 1000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    image = Image.open(io.BytesIO(body))  # header only: never .load() it
    assert image.format == "PNG" and image.size == (30000, 30000)


# ---------------------------------------------------------------------------------------------
# Server


def test_serves_images_and_errors(corpus: TestCorpus, base_url: str) -> None:
    clean = _one(corpus, "clean")
    status, headers, body = _get(base_url + clean.path)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == corpus.responses[clean.path].body and headers["Content-Length"] == str(len(body))
    assert _get(base_url + "/no/such/path")[0] == 404
    assert _get(base_url + _one(corpus, "http_404").path)[0] == 404
    for _ in range(2):
        assert _get(base_url + _one(corpus, "http_500").path)[0] == 500
        status, headers, _ = _get(base_url + _one(corpus, "http_429").path)
        assert status == 429 and headers["Retry-After"] == "1"
    status, headers, body = _get(base_url + _one(corpus, "html_as_image").path)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body.startswith(b"<!DOCTYPE html>")


def test_robots_headers(corpus: TestCorpus, base_url: str) -> None:
    assert _get(base_url + _one(corpus, "robots_noai").path)[1]["X-Robots-Tag"] == "noai"
    assert _get(base_url + _one(corpus, "robots_noimageai_agent").path)[1]["X-Robots-Tag"] == "altsieve: noimageai"


def test_fail_first_sequences(corpus: TestCorpus, server: CorpusServer) -> None:
    limited = _one(corpus, "rate_limited_then_ok").path
    status, headers, _ = _get(server.base_url + limited)
    assert status == 429 and headers["Retry-After"] == "1"
    assert _get(server.base_url + limited)[0] == 200
    assert server.request_count(limited) == 2
    transient = _one(corpus, "transient_then_ok").path
    statuses = [_get(server.base_url + transient)[0] for _ in range(7)]
    assert statuses == [503] * 5 + [200, 200]
    assert server.request_count(transient) == 7


def test_slow_body_arrives(corpus: TestCorpus, base_url: str) -> None:
    pair = _one(corpus, "slow")
    started = time.monotonic()
    status, _, body = _get(base_url + pair.path, timeout=2.0)
    assert status == 200 and body == corpus.responses[pair.path].body
    assert time.monotonic() - started >= 0.4


def test_stalled_times_out(corpus: TestCorpus, base_url: str) -> None:
    pair = _one(corpus, "stalled")
    started = time.monotonic()
    with _OPENER.open(base_url + pair.path, timeout=0.5) as response:
        assert response.status == 200  # headers arrive; the body stalls
        with pytest.raises(TimeoutError):
            response.read()
    assert time.monotonic() - started < 3
    # Other requests are not blocked by the stall.
    assert _get(base_url + _one(corpus, "clean").path, timeout=1.0)[0] == 200


def test_redirects(corpus: TestCorpus, base_url: str) -> None:
    chain = _one(corpus, "redirect_chain")
    hops, url = 0, base_url + chain.path
    while (answer := _get(url))[0] == 302:
        hops, url = hops + 1, base_url + answer[1]["Location"]
    assert hops == 3 and answer[0] == 200
    with _OPENER.open(base_url + chain.path, timeout=TIMEOUT_S) as response:  # urllib follows it
        body = response.read()
    assert Image.open(io.BytesIO(body)).size == (chain.expected_width, chain.expected_height)

    loop = _one(corpus, "redirect_loop_too_many")
    seen, url = [], base_url + loop.path
    for _ in range(12):
        status, headers, _ = _get(url)
        assert status == 302
        seen.append(url)
        url = base_url + headers["Location"]
    assert url == base_url + loop.path and len(set(seen)) == 12

    status, headers, _ = _get(base_url + _one(corpus, "redirect_private").path)
    assert status == 302 and headers["Location"] == "http://169.254.169.254/latest/meta-data/"


def test_stop_is_prompt_with_stalled_request(corpus: TestCorpus) -> None:
    server = CorpusServer(corpus)
    url = server.start() + _one(corpus, "stalled").path
    outcome: list[object] = []

    def fetch() -> None:
        try:
            with _OPENER.open(url, timeout=20) as response:
                outcome.append(response.read())
        except Exception as error:  # noqa: BLE001 - any failure is the expected outcome
            outcome.append(error)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    deadline = time.monotonic() + 2
    while server.request_count(_one(corpus, "stalled").path) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    thread.join(timeout=3)
    assert outcome and not isinstance(outcome[0], bytes)  # the stalled body never completed


# ---------------------------------------------------------------------------------------------
# Input and truth files


def _read_rows(path: Path, fmt: str) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(raw)).to_pylist()
    if fmt == "jsonl":
        return [json.loads(line) for line in raw.decode().splitlines()]
    return list(csv.DictReader(io.StringIO(raw.decode(), newline=""), delimiter="\t" if fmt == "tsv" else ","))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", INPUT_FORMATS)
def test_write_input_round_trips(corpus: TestCorpus, tmp_path: Path, fmt: str, gz: bool) -> None:
    path = tmp_path / f"input.{fmt}{'.gz' if gz else ''}"
    corpus.write_input(str(path), "http://127.0.0.1:9999", fmt)
    assert format_from_path(str(path)) == fmt
    rows = _read_rows(path, fmt)
    assert rows == corpus.input_table("http://127.0.0.1:9999").to_pylist()
    assert [row["source_id"] for row in rows] == [f"src-{i}" for i in range(100)]
    by_label = {pair.label: rows[pair.pair_id] for pair in corpus.pairs}
    assert by_label["bad_url"]["url"] == "not a url"
    assert by_label["ftp_url"]["url"] == "ftp://example.com/a.jpg"
    assert by_label["clean"]["url"].startswith("http://127.0.0.1:9999/img/")
    assert by_label["empty_caption"]["caption"] == ""


def test_truth_table(corpus: TestCorpus) -> None:
    table = corpus.truth_table()
    assert table.num_rows == 100
    assert table.schema.field("duplicate_of").type == pa.int64()
    assert table.column("label").to_pylist() == [pair.label for pair in corpus.pairs]
    assert set(table.column_names) >= {
        "pair_id", "path", "caption", "label", "language", "duplicate_of", "expected_width", "expected_height",
        "image_format",
    }


def test_serve_forever_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(server_module, "_wait_for_interrupt", interrupt)
    assert serve_forever_cli(40, 0, str(tmp_path / "in.jsonl.gz"), seed=2) == 0
    base_url = capsys.readouterr().out.splitlines()[0]
    assert base_url.startswith("http://127.0.0.1:")
    assert pq.read_table(tmp_path / "truth.parquet").num_rows == 40
    assert len(_read_rows(tmp_path / "in.jsonl.gz", "jsonl")) == 40
