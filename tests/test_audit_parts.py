"""The audit's parts against known truth: histogram bins, registered domains, thumbnail samples, noise estimates."""

from __future__ import annotations

import io
import socket
import tarfile
import zlib

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from altsieve.core import reasons
from altsieve.pipeline.audit.domains import DomainMapper
from altsieve.pipeline.audit.estimates import ClipEmbeddingSample, KeptHashes, wilson
from altsieve.pipeline.audit.histograms import SPECS, Histogram
from altsieve.transforms.thumbnails import SET_ASIDE_FIELD, ThumbnailSample, read_thumbnails, set_aside


def test_bins_follow_the_data_and_the_tails_are_counted_apart() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.62, 0.05, 2000)
    scores[:7] = 0.95  # a far tail on each side
    scores[7:11] = -0.8
    labels = ["kept", "clip_score_below_threshold"]
    codes = (scores < 0.55).astype(np.int64)
    histogram = Histogram(SPECS["clip_score"])
    histogram.add(scores, codes, labels)
    data = histogram.to_json([0.5])
    edges = np.array(data["edges"])
    # The bins span the central 99 % (about 0.49 .. 0.75 here), widened to the run's threshold, not -1 .. 1.
    assert -0.1 < edges[0] <= 0.5 < 0.7 < edges[-1] < 0.95 and 10 <= len(edges) - 1 <= 45
    assert np.allclose(np.diff(edges), np.diff(edges)[0])  # equal steps on a round grid
    for code, label in enumerate(labels):
        values = scores[codes == code]
        part = data["by_label"][label]
        assert part["underflow"] == int((values < edges[0]).sum())
        assert part["overflow"] == int((values >= edges[-1]).sum())
        inside = values[(values >= edges[0]) & (values < edges[-1])]
        assert part["counts"] == np.bincount(np.searchsorted(edges, inside, side="right") - 1,
                                             minlength=len(edges) - 1).tolist()
    # The planted tails are in the overflow bins, not squashed into the edge bins.
    assert data["by_label"]["kept"]["overflow"] >= 7
    assert data["by_label"]["clip_score_below_threshold"]["underflow"] >= 4


def test_powers_of_two_are_exact_edges() -> None:
    histogram = Histogram(SPECS["width"])
    widths = np.array([256.0] * 10 + [1024.0] * 5)
    histogram.add(widths, np.zeros(15, dtype=np.int64), ["kept"])
    data = histogram.to_json([])
    edges = data["edges"]
    part = data["by_label"]["kept"]
    assert 256.0 in edges and 1024.0 in edges
    assert part["counts"][edges.index(256.0)] == 10 and part["counts"][edges.index(1024.0)] == 5


def test_registered_domains_come_from_the_public_suffix_list_offline(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the domain lookup tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    urls = pa.array(["https://img.bbc.co.uk/a.jpg", "http://www.bbc.co.uk/b.png", "https://foo.blogspot.com/c.jpg",
                     "https://a.b.example.com:8080/x", "http://127.0.0.1:9000/y.jpg", "not a url", None,
                     "https://user@cdn.Shop.COM.cn/z.webp"])
    assert DomainMapper().domains(urls).to_pylist() == [
        "bbc.co.uk", "bbc.co.uk", "foo.blogspot.com", "example.com", "127.0.0.1", "(no host)", "(no host)",
        "shop.com.cn"]


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_thumbnail_sample_keeps_the_smallest_hashes_per_reason_and_never_a_safety_match(tmp_path) -> None:
    sample = ThumbnailSample(per_reason=3, size=64)
    keys = [f"00000{i:010d}" for i in range(20)]
    for i, key in enumerate(keys):
        record = {"key": key, "reason": reasons.IMAGE_TOO_SMALL if i % 2 else reasons.CLIP_SCORE_BELOW_THRESHOLD}
        set_aside(record, _jpeg((i * 10, 0, 0)))
        sample.offer_record(record)
        assert SET_ASIDE_FIELD not in record
    # A safety-list match is never set aside, nor taken if offered.
    unsafe = {"key": "000009999999999", "reason": "safety_hash_match"}
    set_aside(unsafe, _jpeg((0, 0, 0)))
    assert SET_ASIDE_FIELD not in unsafe and not reasons.may_show_image("safety_hash_match")
    sample.offer("000009999999998", "safety_hash_match", _jpeg((0, 0, 0)))
    path = str(tmp_path / "p_thumbs.tar")
    assert sample.write(path) == 6
    found = {key: (reason, jpeg) for key, reason, jpeg in read_thumbnails(path)}
    for reason, parity in ((reasons.IMAGE_TOO_SMALL, 1), (reasons.CLIP_SCORE_BELOW_THRESHOLD, 0)):
        expected = sorted((k for i, k in enumerate(keys) if i % 2 == parity), key=lambda k: zlib.crc32(k.encode()))[:3]
        assert sorted(k for k, (r, _) in found.items() if r == reason) == sorted(expected)
    for _, jpeg in found.values():
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.format == "JPEG" and max(image.size) == 64 and image.size == (64, 43)  # aspect kept
        assert len(jpeg) < 4096
    with tarfile.open(path) as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())  # reruns are byte-identical


def test_wilson_interval() -> None:
    assert wilson(0, 100)[0] == 0.0 and 0.03 < wilson(0, 100)[1] < 0.04
    low, high = wilson(50, 100)
    assert low < 0.5 < high and abs((0.5 - low) - (high - 0.5)) < 1e-6


def test_mismatched_share_estimate_covers_the_planted_share(monkeypatch) -> None:
    """Embeddings where 10 % of the captions belong to other images: the estimate's interval holds 10 %."""
    import altsieve.pipeline.audit.estimates as estimates

    rng = np.random.default_rng(1)
    n, dim = 1500, 32
    image = rng.normal(size=(n, dim))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text = image + rng.normal(scale=0.3, size=(n, dim))  # true captions: close to their image (cosine ~0.5)
    mismatched = rng.random(n) < 0.10
    text[mismatched] = rng.normal(size=(int(mismatched.sum()), dim))  # another image's caption: unrelated
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    keys = np.array([f"00000{i:010d}" for i in range(n)])
    partitions = {f"p{start}": slice(start, start + 500) for start in range(0, n, 500)}
    monkeypatch.setattr(estimates, "read_embeddings", lambda path: (
        keys[partitions[path]], image[partitions[path]].astype(np.float16), text[partitions[path]].astype(np.float16),
        "weights"))
    sample = ClipEmbeddingSample(k=1000)
    for path, part in partitions.items():
        sample.add(path, keys[part].tolist(), ["en"] * len(keys[part]))
    result = sample.estimate({"en": n}, n)
    assert result["computed"] and result["sample"] == 1000
    group = next(r for r in result["by_group"] if r["group"] == "en")
    truth = mismatched[np.isin(keys, sample.key.astype(str))].mean()
    assert group["interval"][0] <= truth <= group["interval"][1]
    assert abs(group["share"] - truth) < 0.04 and group["interval"][1] - group["interval"][0] < 0.1


@pytest.mark.parametrize("sample_size", [10_000, 800])
def test_near_duplicates_left_at_a_looser_distance(sample_size) -> None:
    """Planted pairs at known Hamming distances among random 64-bit hashes: the estimate counts exactly those."""
    rng = np.random.default_rng(2)
    n = 4000
    hashes = rng.integers(0, 2**63, size=n, dtype=np.int64)
    planted = rng.choice(n // 2, size=100, replace=False) * 2  # 100 pairs (i, i + 1), the copy 6 bits away
    for i in planted:
        flip = rng.choice(63, size=6, replace=False)
        hashes[i + 1] = hashes[i] ^ np.int64(sum(1 << int(b) for b in flip))
    keys = pa.array([f"00000{i:010d}" for i in range(n)])
    kept = KeptHashes()
    kept.add(pa.chunked_array([keys]), pa.chunked_array([pa.array(hashes)]))
    result = kept.estimate(run_distance=4, sample_size=sample_size)
    rows = {r["distance"]: r for r in result["by_distance"]}
    assert result["loose_distance"] == 8
    # Random 64-bit hashes are never within 8 bits of each other (P < 1e-8 a pair): only the planted ones are near.
    assert rows[4]["share_near"] == 0.0
    truth_near, truth_dropped = 200 / n, 100 / n
    if sample_size >= n:
        assert result["exact"] and rows[8]["share_near"] == truth_near and rows[8]["share_dropped"] == truth_dropped
    assert rows[8]["share_near_interval"][0] <= truth_near <= rows[8]["share_near_interval"][1]
    assert rows[8]["share_dropped_interval"][0] <= truth_dropped <= rows[8]["share_dropped_interval"][1]
