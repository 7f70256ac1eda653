"""ClipScore: the tiny test CLIP's quality, the stage, the embeddings beside the shards, the CLIP rules.

Nothing here may reach a model hub: an autouse fixture makes every open_clip download raise, so a
test that would fetch weights fails instead of silently using the network.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("open_clip")

from altsieve.core import reasons  # noqa: E402 - after the importorskip
from altsieve.core.config import ConfigError, ImageConfig, load_config  # noqa: E402
from altsieve.pipeline.cli import run_all  # noqa: E402
from altsieve.pipeline.demo import demo_config  # noqa: E402
from altsieve.testcorpus.generator import TestCorpus  # noqa: E402
from altsieve.testcorpus.scenes import caption_for, draw_scene, mismatched_caption, random_scene  # noqa: E402
from altsieve.transforms.clip import model as clip_model  # noqa: E402
from altsieve.transforms.clip import stage as clip_stage  # noqa: E402
from altsieve.transforms.clip import store as clip_store  # noqa: E402
from altsieve.transforms.clip.model import ClipModelError, ClipScorer, ClipSpec  # noqa: E402
from altsieve.transforms.imageops import process_image  # noqa: E402
from tests import test_end_to_end as e2e  # noqa: E402
from tests.local_runner import local_pipeline

# Where the demo recipe's threshold applies: the languages the tiny model was trained on.
THRESHOLDED = ("en", "zh")
HELD_OUT_SEED = 777  # neither the training pool's seed (1), its evaluation seed nor the corpus's


@pytest.fixture(autouse=True)
def no_model_hub(monkeypatch):
    import open_clip.factory
    import open_clip.pretrained

    def refuse(*args, **kwargs):
        raise OSError("tests must not reach a model hub")

    for module in (open_clip.factory, open_clip.pretrained):
        for name in ("download_pretrained", "download_pretrained_from_hf", "download_pretrained_from_url"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


@pytest.fixture(scope="module")
def tiny() -> ClipScorer:
    return ClipScorer.load(ClipSpec())


def pipeline_image(spec) -> bytes:
    """A scene as the ingest pass stores it: drawn at the corpus's 320x240, resized with the default border mode."""
    image = draw_scene(spec, 320, 240)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return process_image(buffer.getvalue(), ImageConfig(image_size=256, resize_mode="border")).data


# ---------------------------------------------------------------------------------------------
# The tiny model


def test_shipped_checkpoint_is_small_and_registered(tiny) -> None:
    import open_clip

    checkpoint = Path(clip_model.builtin_checkpoint())
    assert checkpoint.stat().st_size <= 10 * 1024 * 1024
    assert clip_model.TINY_MODEL in open_clip.list_models()
    assert tiny.embed_dim == 64 and tiny.image_size == 64
    assert len(tiny.identity["weights_sha256"]) == 64


@pytest.mark.parametrize("language", THRESHOLDED)
def test_matching_caption_outscores_a_mismatched_one(tiny, language) -> None:
    """Held-out scenes (a seed training never saw), through the pipeline's own resize: >= 95 %."""
    rng = random.Random(HELD_OUT_SEED)
    specs = [random_scene(rng) for _ in range(150)]
    images = tiny.embed_images([pipeline_image(spec) for spec in specs])
    good = (images * tiny.embed_texts([caption_for(spec, language, rng) for spec in specs])).sum(axis=1)
    bad = (images * tiny.embed_texts([mismatched_caption(spec, language, rng) for spec in specs])).sum(axis=1)
    assert (good > bad).mean() >= 0.95


def test_trimmed_text_tower_gives_the_full_features(tiny) -> None:
    import torch

    tokens = tiny.tokenize(["a red circle on the left", "左边有两个红色的正方形", "x", ""])
    assert clip_model.supports_trimmed_text(tiny.model)
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        trimmed = clip_model.encode_text_trimmed(tiny.model, tokens)
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_zero_shot_tags_follow_their_prompts(tiny) -> None:
    rng = random.Random(5)
    red = [s for s in (random_scene(rng) for _ in range(200)) if s.colour == "red"][:10]
    blue = [s for s in (random_scene(rng) for _ in range(200)) if s.colour == "blue"][:10]
    images = tiny.embed_images([pipeline_image(s) for s in red + blue])
    prompts = tiny.embed_texts(["a red shape", "red shapes", "a blue shape", "blue shapes"])
    p_red = tiny.zero_shot(images, prompts, n_positive=2)
    assert ((p_red >= 0) & (p_red <= 1)).all()
    assert p_red[:10].mean() > 0.8 > 0.2 > p_red[10:].mean()


# ---------------------------------------------------------------------------------------------
# Loading: one clear error, never a hub


def test_a_missing_checkpoint_is_one_clear_error() -> None:
    with pytest.raises(ClipModelError, match="no checkpoint file at /nonexistent/model.pt") as err:
        ClipScorer.load(ClipSpec("ViT-B-32", "/nonexistent/model.pt"))
    assert "clip.pretrained=/path/to/" in str(err.value)


def test_a_tag_without_network_is_one_clear_error() -> None:
    # The autouse fixture stands in for a machine without network: the download raises.
    with pytest.raises(ClipModelError) as err:
        ClipScorer.load(ClipSpec("ViT-B-32", "laion2b_s34b_b79k"))
    message = str(err.value)
    assert "laion2b_s34b_b79k" in message and "clip.pretrained=/path/to/" in message
    assert "without network access" in message


def test_wrong_names_are_named() -> None:
    with pytest.raises(ClipModelError, match="Did you mean ViT-B-32"):
        ClipScorer.load(ClipSpec("ViT-B-23", "random"))
    with pytest.raises(ClipModelError, match="builtin exists only for altsieve-tiny-clip"):
        ClipScorer.load(ClipSpec("ViT-B-32", "builtin"))
    with pytest.raises(ClipModelError, match="not a pretrained tag of ViT-B-32"):
        ClipScorer.load(ClipSpec("ViT-B-32", "laion9z"))
    with pytest.raises(ConfigError, match="give both model and pretrained"):
        load_config("demo", [{"clip": {"per_language": {"de": {"model": "ViT-B-32"}}}}])


def test_the_cli_reports_a_bad_checkpoint_before_any_work(tmp_path, capsys) -> None:
    from altsieve.pipeline.cli import main

    source = tmp_path / "pairs.csv"
    source.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a red circle\n")
    code = main(["run", str(source), "-o", str(tmp_path / "out"), "--recipe", "demo",
                 "--set", "clip.pretrained=/nonexistent/ckpt.pt"])
    assert code == 2
    message = capsys.readouterr().err
    assert "/nonexistent/ckpt.pt" in message and "clip.pretrained=" in message
    assert not (tmp_path / "out").exists()  # nothing written: the corrected rerun starts clean


# ---------------------------------------------------------------------------------------------
# The stage


# The in-process runner pickles a pipeline's functions: a module-level list is shared, a closure's is not.
_COLLECTED: list[dict] = []


def _collect(record: dict) -> None:
    _COLLECTED.append(record)


def _records(specs_and_captions, partition: str) -> list[dict]:
    return [
        {"key": f"{partition}{i:05d}", "partition_id": partition, "partition_size": len(specs_and_captions),
         "caption": caption, "language": language, "language_score": 1.0, "image": pipeline_image(spec),
         "reason": None}
        for i, (spec, caption, language) in enumerate(specs_and_captions)
    ]


def test_stage_scores_in_batches_with_a_bucket_model_of_its_own(tiny) -> None:
    import apache_beam as beam

    rng = random.Random(11)
    pairs = [(s, caption_for(s, lang, rng), lang) for s, lang in
             ((random_scene(rng), lang) for lang in ["en", "zh", "en", "en", "zh"] * 2)]
    records = _records(pairs[:6], "p1") + _records(pairs[6:], "p2")
    records[2]["reason"] = reasons.DOWNLOAD_NOT_FOUND  # passes through unscored
    records[2].pop("image")
    config = load_config("demo", [{"clip": {"batch_size": 3, "per_language": {
        "en": {"min_score": 0.5}, "zh": {"model": clip_model.TINY_MODEL, "pretrained": "random", "min_score": None}}}}])
    _COLLECTED.clear()
    with local_pipeline() as pipeline:
        scored = pipeline | beam.Create(records) | clip_stage.ClipScore(config)
        scored | beam.Map(_collect)
    out = list(_COLLECTED)
    assert sorted(r["key"] for r in out) == sorted(r["key"] for r in records)
    by_key = {r["key"]: r for r in out}
    random_model = ClipScorer.load(ClipSpec(clip_model.TINY_MODEL, "random"))
    for record in records:
        got = by_key[record["key"]]
        if record.get("image") is None:
            assert got.get("clip_score") is None and got["reason"] == reasons.DOWNLOAD_NOT_FOUND
            continue
        scorer = random_model if record["language"] == "zh" else tiny
        image = scorer.embed_images([record["image"]])
        text = scorer.embed_texts([record["caption"]])
        assert got["clip_score"] == pytest.approx(float((image * text).sum()), abs=1e-4)
        # The saved embeddings are always the main model's: one embedding space for the whole corpus.
        assert np.allclose(got[clip_store.IMAGE_EMBEDDING_FIELD], tiny.embed_images([record["image"]])[0], atol=2e-3)
        assert 0.0 <= got["nsfw_score"] <= 1.0 and 0.0 <= got["watermark_score"] <= 1.0
        assert got["reason"] is None  # true captions: above 0.5 in English, no threshold in the zh bucket


def test_partition_embeddings_keep_an_earlier_attempts_rows(tmp_path) -> None:
    """--retry-failed merges old rows (no embedding on the record) with new ones: the old file supplies them."""
    old = tmp_path / "p_embeddings.npz"
    clip_store.write_partition_embeddings(str(old), np.array(["a", "c"]), np.ones((2, 4), np.float16),
                                    np.full((2, 4), 2, np.float16), "sha")
    records = [
        {"key": "c", "reason": None, "image": b"x"},
        {"key": "b", "reason": None, "image": b"y", clip_store.IMAGE_EMBEDDING_FIELD: np.zeros(4, np.float16),
         clip_store.TEXT_EMBEDDING_FIELD: np.zeros(4, np.float16)},
        {"key": "a", "reason": reasons.CLIP_SCORE_BELOW_THRESHOLD},
    ]
    keys, image, text = clip_store.partition_embeddings(records, 4, previous=str(old))
    assert keys.tolist() == ["b", "c"]
    assert image[:, 0].tolist() == [0, 1] and text[:, 0].tolist() == [0, 2]
    with pytest.raises(RuntimeError, match="has no CLIP embedding"):
        clip_store.partition_embeddings([{"key": "z", "reason": None, "image": b"z"}], 4)


# ---------------------------------------------------------------------------------------------
# End to end: the demo recipe on the 100-pair corpus


def expected_with_clip(corpus: TestCorpus) -> dict[int, str | None]:
    """The default recipe's expectations, with the CLIP drops of the demo recipe laid in before dedup.

    Captions that describe another image (mismatched_caption) or none (shared_caption: "Free stock photo
    download") fall below the threshold where it applies: the languages the tiny model knows. CLIP drops
    happen at ingest, so the select pass's dedup never sees those pairs: they leave the corpus first.
    """
    from altsieve.transforms.language import LanguageTagger

    tagger = LanguageTagger()
    generic = set()
    if e2e.EXPECTED_BY_LABEL["shared_caption"] is None:
        generic = {p.pair_id for p in corpus.pairs_with_label("shared_caption")
                   if tagger.tag(p.caption).label in THRESHOLDED}
    table = {**e2e.EXPECTED_BY_LABEL, "mismatched_caption": reasons.CLIP_SCORE_BELOW_THRESHOLD}
    rest = dataclasses.replace(corpus, pairs=[p for p in corpus.pairs if p.pair_id not in generic])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(e2e, "EXPECTED_BY_LABEL", table)
        expected = e2e.expected_reasons(rest)
    expected.update(dict.fromkeys(generic, reasons.CLIP_SCORE_BELOW_THRESHOLD))
    return expected


@pytest.fixture(scope="module")
def clip_run(demo_run):
    return demo_run  # conftest.py: the demo recipe's run, shared with tests/test_outputs.py


def test_demo_recipe_drops_what_clip_should(corpus, clip_run) -> None:
    output, stats = clip_run
    expected = expected_with_clip(corpus)
    rows = e2e.all_rows(output)
    wrong = {
        pair.pair_id: (pair.label, rows[e2e.key_of(pair.pair_id)]["reason"], expected[pair.pair_id])
        for pair in corpus.pairs
        if rows[e2e.key_of(pair.pair_id)]["reason"] != expected[pair.pair_id]
    }
    assert wrong == {}
    assert stats["reasons"] == dict(Counter(r for r in expected.values() if r is not None))
    assert any(s["stage"] == "CLIP rules" for s in stats["funnel"]["stages"])
    # Every mismatched pair dropped (recall 1.0 here), no clean pair lost.
    mismatched = [rows[e2e.key_of(p.pair_id)]["reason"] for p in corpus.pairs_with_label("mismatched_caption")]
    assert mismatched and all(r == reasons.CLIP_SCORE_BELOW_THRESHOLD for r in mismatched)
    assert not [p for p in corpus.pairs_with_label("clean")
                if rows[e2e.key_of(p.pair_id)]["reason"] == reasons.CLIP_SCORE_BELOW_THRESHOLD]


def test_scores_tags_and_embeddings_beside_each_candidate_shard(clip_run) -> None:
    output, _ = clip_run
    identity = json.loads(Path(output, "_altsieve", "clip_model.json").read_text())
    manifest = json.loads(Path(output, "manifest.json").read_text())
    assert manifest["clip"]["model"] == identity
    assert identity["model"] == clip_model.TINY_MODEL and identity["embed_dim"] == 64
    for parquet in sorted(Path(output, "_candidates").glob("*.parquet")):
        partition = parquet.stem
        rows = pq.read_table(parquet).to_pylist()
        kept = sorted(r["key"] for r in rows if r["reason"] is None)
        keys, image, text = clip_store.load_partition_embeddings(output, partition, identity)
        assert keys.tolist() == kept
        with tarfile.open(parquet.with_suffix(".tar")) as tar:
            assert sorted(m.name[:-4] for m in tar.getmembers() if m.name.endswith(".jpg")) == kept
        assert image.dtype == text.dtype == np.float16 and image.shape == text.shape == (len(kept), 64)
        if kept:
            assert np.allclose(np.linalg.norm(image.astype(np.float32), axis=1), 1.0, atol=5e-3)
        scores = {r["key"]: r["clip_score"] for r in rows}
        for key, i, t in zip(keys, image.astype(np.float32), text.astype(np.float32), strict=True):
            assert float(i @ t) == pytest.approx(scores[str(key)], abs=1e-2)
        for row in rows:
            scored = row["reason"] is None or row["reason"].startswith("clip_")
            assert (row["clip_score"] is not None) == scored
            if scored:
                assert 0.0 <= row["nsfw_score"] <= 1.0 and 0.0 <= row["watermark_score"] <= 1.0


def _same_rows_and_embeddings(output: str, reference: str) -> None:
    """Every row as in the reference run (scores to float32 rounding: batches may be cut elsewhere), and the
    embeddings beside each shard."""
    rows, expected = e2e._without_server(e2e.all_rows(output)), e2e._without_server(e2e.all_rows(reference))
    assert rows.keys() == expected.keys()
    for key, row in rows.items():
        for column in ("clip_score", "nsfw_score", "watermark_score"):
            assert (row.pop(column) is None) == (expected[key][column] is None)
            expected[key].pop(column)
        assert row == expected[key]
    identity = json.loads(Path(reference, "_altsieve", "clip_model.json").read_text())
    for parquet in sorted(Path(reference, "_candidates").glob("*.parquet")):
        keys, image, _ = clip_store.load_partition_embeddings(output, parquet.stem, identity)
        reference_keys, reference_image, _ = clip_store.load_partition_embeddings(reference, parquet.stem, identity)
        assert keys.tolist() == reference_keys.tolist()
        assert np.allclose(image.astype(np.float32), reference_image.astype(np.float32), atol=2e-3)


def test_the_stage_in_two_worker_processes_gives_the_same_output(corpus, clip_run, tmp_path) -> None:
    """Each worker process loads the model (the launcher's weights check passes) and no partition leaves its bundle."""
    reference, _ = clip_run
    output = str(tmp_path / "mp")
    with e2e.serving(corpus, tmp_path) as (_, input_path):
        stats = run_all(demo_config("demo"), [input_path], output,
                        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    _same_rows_and_embeddings(output, reference)
    assert stats["metrics"]["clip_pairs_scored"] == sum(
        1 for row in e2e.all_rows(reference).values() if row["clip_score"] is not None)


def test_embeddings_of_another_model_are_refused(clip_run, tmp_path) -> None:
    output, _ = clip_run
    partition = sorted(Path(output, "_candidates").glob("*.parquet"))[0].stem
    other = {"model": "ViT-B-32", "weights_sha256": "0" * 64, "embed_dim": 512, "pretrained": "openai"}
    with pytest.raises(ClipModelError, match="not comparable"):
        clip_store.load_partition_embeddings(output, partition, other)
    copy = tmp_path / "out"
    shutil.copytree(Path(output, "_altsieve"), copy / "_altsieve")
    with pytest.raises(ClipModelError, match="use a new --output folder"):
        clip_store.record_model_identity(str(copy), other)


def test_top_fraction_keeps_the_corpus_quantile(clip_run, tmp_path) -> None:
    """The select pass alone, on a copy of the run: with no other rule, exactly the top 40 % by score stay."""
    from altsieve.pipeline.select import run_select

    output, _ = clip_run
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    config = load_config("demo", [{"clip": {"top_fraction": 0.4}, "dedup": {
        "exact_sha256": False, "perceptual": False, "exact_url_caption": False}}])
    run_select(config, str(copy), [])
    scores = [r["clip_score"] for p in Path(copy, "_candidates").glob("*.parquet")
              for r in pq.read_table(p).to_pylist() if r["reason"] is None]
    decisions = [d for p in Path(copy, "_decisions").glob("*.parquet") for d in pq.read_table(p).to_pylist()]
    cut = sorted(scores, reverse=True)[int(np.ceil(0.4 * len(scores))) - 1]
    dropped = Counter(d["reason"] for d in decisions)
    assert dropped[reasons.CLIP_SCORE_BELOW_QUANTILE] == sum(1 for s in scores if s < cut)
    assert dropped[None] == sum(1 for s in scores if s >= cut)
    recorded = json.loads(Path(copy, "_altsieve", "clip_quantile.json").read_text())
    assert recorded["min_kept_score"] == pytest.approx(cut) and recorded["scored_pairs"] == len(scores)
