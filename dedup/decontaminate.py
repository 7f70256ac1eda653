"""Test-set decontamination: drop training pairs whose image is too close to an evaluation image.

Evaluation sets are named by path: a folder of image files (searched recursively), a Parquet file
(an image column: raw bytes or a Hugging Face ``{bytes, path}`` struct; or a ``phash`` int64 column
computed by altsieve), or a webdataset tar. Each evaluation image is hashed with the run's own
image options (``transforms.imageops.process_image``), so its pHash is computed exactly as the
training pairs' were. A training pair is dropped (``duplicate_eval_set``) when

* its pHash is within ``phash_max_distance`` bits of an evaluation image's, or
* its CLIP image embedding has cosine >= ``clip_min_cosine`` with an evaluation embedding (ALIGN
  used 0.975 on its own embeddings). The training embeddings are the ClipScore stage's
  ``_embeddings.npz`` files; the evaluation images are embedded by the same model
  (``transforms.clip.model.ClipScorer``, from the same resized image the ingest would store, and the
  output's ``clip_model.json`` must name that model), and precomputed evaluation embeddings can be
  added (.npy [N, D], or .npz with ``image`` and optionally ``key``).

``duplicate_of`` is ``eval:{set}/{item}`` of the closest evaluation item (pHash first, then
embedding; ties by item id), and ``_altsieve/decontamination.json`` lists every evaluation item
that was hit and how many training pairs it removed.

Scale: the evaluation side is small (thousands to a few hundred thousand items: 8 bytes a hash,
D x 4 bytes an embedding) and reaches every worker as a side input; the training pairs are matched
in batches where they are (faiss binary range search for pHash, inner-product search for
embeddings), so nothing of the training side is shuffled except the partition grouping of keys
for the embedding path and the drops themselves.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow.parquet as pq

from altsieve.core import reasons
from altsieve.core.config import ImageConfig
from altsieve.dedup.embeddings import image_embeddings_for, unit_rows
from altsieve.filters.corpus import CorpusRule
from altsieve.transforms.imageops import ImageDecodeError, int64_to_phash, process_image

log = logging.getLogger("altsieve")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_ID_COLUMNS = ("key", "id", "image_id", "filename", "file_name", "path")
_IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img", "image_bytes", "bytes")
EVAL_PREFIX = "eval:"


def set_name(path: str) -> str:
    """The evaluation set's name in ``duplicate_of``: the file or folder name without extension."""
    name = os.path.basename(path.rstrip("/"))
    for suffix in (".parquet", ".tar", ".npz", ".npy"):
        name = name.removesuffix(suffix)
    return name or path


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return bytes(value) if value else None


def iter_eval_items(path: str) -> Iterator[tuple[str, bytes | int]]:
    """``(item id, image bytes or unsigned pHash)`` for each item of one evaluation set."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isdir(root):
        for name in sorted(fs.find(root)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                with fs.open(name, "rb") as handle:
                    yield os.path.relpath(name, root), handle.read()
    elif root.endswith(".parquet"):
        with fs.open(root, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            id_column = next((c for c in _ID_COLUMNS if c in names), None)
            image_column = next((c for c in _IMAGE_COLUMNS if c in names), None)
            if image_column is None and "phash" not in names:
                raise ValueError(f"{path}: no image column (one of {', '.join(_IMAGE_COLUMNS)}) and no phash column")
            wanted = [c for c in (id_column, image_column if image_column else "phash") if c]
            row = 0
            for batch in parquet.iter_batches(columns=wanted, batch_size=256):
                for record in batch.to_pylist():
                    item = str(record[id_column]) if id_column else str(row)
                    row += 1
                    if image_column:
                        data = _image_bytes(record[image_column])
                        if data:
                            yield item, data
                    elif record["phash"] is not None:
                        yield item, int64_to_phash(int(record["phash"]))
    elif root.endswith(".tar"):
        with fs.open(root, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base.lower().endswith(IMAGE_EXTENSIONS):
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        # webdataset: the key is the member path up to the first dot of its name.
                        key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                        yield key, extracted.read()
    else:
        raise ValueError(f"{path}: an evaluation set is a folder of images, a .parquet file or a webdataset .tar")


def eval_images(path: str, options: ImageConfig) -> Iterator[tuple[str, int, bytes | None]]:
    """``(eval id, unsigned pHash, image as the pipeline stores it or None)`` of each item of an evaluation set.

    The image is processed exactly as the ingest processes a training image (resize, re-encode), so its pHash
    and its CLIP embedding are computed from what the training pairs' were computed from.
    """
    name, failed = set_name(path), 0
    for item, value in iter_eval_items(path):
        if isinstance(value, int):  # a precomputed phash column: no image to embed
            yield f"{EVAL_PREFIX}{name}/{item}", value, None
            continue
        try:
            processed = process_image(value, options)
        except ImageDecodeError:
            failed += 1
            continue
        yield f"{EVAL_PREFIX}{name}/{item}", processed.phash, processed.data
    if failed:
        log.warning("decontamination: %d images of %s could not be decoded and are not matched", failed, path)


def load_eval_embeddings(path: str) -> tuple[list[str], np.ndarray]:
    """Precomputed evaluation embeddings: (eval ids, unit float32 [N, D]) from an .npy or .npz file."""
    with fsspec.open(path, "rb") as handle:
        loaded = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        vectors, keys = loaded, None
    else:
        array_name = "image" if "image" in loaded else "embeddings" if "embeddings" in loaded else None
        if array_name is None:
            raise ValueError(f"{path}: an .npz of evaluation embeddings needs an `image` (or `embeddings`) array")
        vectors = loaded[array_name]
        keys = loaded.get("key")
    name = set_name(path)
    items = [str(k) for k in keys.tolist()] if keys is not None else [str(i) for i in range(len(vectors))]
    return [f"{EVAL_PREFIX}{name}/{item}" for item in items], unit_rows(vectors)


class _EmbedEvalImages(beam.DoFn):
    """Batches of (eval id, image) -> (eval ids, unit embeddings) by the run's CLIP model (transforms.clip.model)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def process(self, batch: list[tuple[str, bytes]]):
        from altsieve.transforms.clip.model import ClipScorer

        scorer = ClipScorer.load(self.spec)  # once per worker process
        yield [eval_id for eval_id, _ in batch], unit_rows(scorer.embed_images([image for _, image in batch]))


class _ConcatEvalEmbeddings(beam.CombineFn):
    """(ids, vectors) pieces -> all of them, sorted by id (so a tie names the same item on every run)."""

    def create_accumulator(self) -> list[tuple[list[str], np.ndarray]]:
        return []

    def add_input(self, accumulator: list, piece: tuple[list[str], np.ndarray]) -> list:
        if piece[0]:
            accumulator.append(piece)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return [piece for accumulator in accumulators for piece in accumulator]

    def extract_output(self, accumulator: list) -> tuple[list[str], np.ndarray]:
        if not accumulator:
            return [], np.zeros((0, 0), dtype=np.float32)
        ids = [i for piece in accumulator for i in piece[0]]
        vectors = np.concatenate([piece[1] for piece in accumulator])
        order = sorted(range(len(ids)), key=ids.__getitem__)
        return [ids[i] for i in order], vectors[order]


class _MatchPHashes(beam.DoFn):
    """Batches of training rows -> (partition_id, key, eval id, "phash") for those near an evaluation image."""

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self._cache: tuple[int, Any, list[str]] | None = None

    def _index(self, evals: list[tuple[str, int]]):
        # The side input is the same object for the whole run: build the faiss index once per worker.
        if self._cache is None or self._cache[0] != len(evals):
            import faiss

            ordered = sorted(evals)
            codes = np.array([h for _, h in ordered], dtype=np.uint64).view(np.uint8).reshape(-1, 8)
            index = faiss.IndexBinaryFlat(64)
            index.add(codes)
            self._cache = (len(evals), index, [i for i, _ in ordered])
        return self._cache[1], self._cache[2]

    def process(self, batch: list[dict[str, Any]], evals: list[tuple[str, int]]):
        rows = [row for row in batch if row.get("phash") is not None]
        if not rows or not evals:
            return
        index, ids = self._index(evals)
        queries = np.array([row["phash"] for row in rows], dtype=np.int64).view(np.uint8).reshape(-1, 8)
        limits, distances, found = index.range_search(queries, self.max_distance + 1)  # distance < radius
        for position, row in enumerate(rows):
            start, end = limits[position], limits[position + 1]
            if start == end:
                continue
            # Closest first, then the smallest id (ids are sorted, so the index order breaks ties).
            best = min(zip(distances[start:end].tolist(), found[start:end].tolist(), strict=True))
            yield row["partition_id"], row["key"], ids[best[1]], "phash"


class _MatchEmbeddings(beam.DoFn):
    """(partition_id, keys) -> (partition_id, key, eval id, "clip") for embeddings too close to an evaluation one."""

    def __init__(self, output: str | None, min_cosine: float, spec: Any = None) -> None:
        self.output, self.min_cosine, self.spec = output, min_cosine, spec
        self._cache: tuple[int, Any] | None = None

    def _index(self, vectors: np.ndarray):
        if self._cache is None or self._cache[0] != len(vectors):
            import faiss

            if self.spec is not None and self.output is not None:
                # Evaluation images embedded by this run's model: the training embeddings must be that model's.
                from altsieve.transforms.clip.model import ClipScorer
                from altsieve.transforms.clip.store import check_model

                check_model(self.output, ClipScorer.load(self.spec).identity)
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            self._cache = (len(vectors), index)
        return self._cache[1]

    def process(self, element: tuple[str, Iterable[str]], evals: tuple[list[str], np.ndarray]):
        partition_id, keys = element
        ids, eval_vectors = evals
        if not ids:
            return
        index = self._index(eval_vectors)
        found, vectors = image_embeddings_for(self.output, partition_id, sorted(keys))
        if not found:
            return
        similarity, nearest = index.search(vectors, 1)
        for key, sim, item in zip(found, similarity[:, 0].tolist(), nearest[:, 0].tolist(), strict=True):
            if sim >= self.min_cosine:
                yield partition_id, key, ids[item], "clip"


def _first_match(element: tuple[str, Iterable[tuple[str, str, str, str]]]) -> tuple[str, str, str, str]:
    # pHash before CLIP ("clip" < "phash" alphabetically, so order explicitly), then the eval id.
    return min(element[1], key=lambda match: (match[3] != "phash", match[2]))


def decontamination_report(matches: list[tuple[str, str, str, str]], eval_sets: list[str],
                           eval_embeddings: list[str], n_eval_hashes: int) -> dict[str, Any]:
    """Which evaluation items were hit and how often (by the training pairs each removed)."""
    hits: dict[str, int] = {}
    by_method = {"phash": 0, "clip": 0}
    for _, _, eval_id, method in matches:
        hits[eval_id] = hits.get(eval_id, 0) + 1
        by_method[method] += 1
    return {
        "eval_sets": eval_sets,
        "eval_embeddings": eval_embeddings,
        "eval_images_hashed": n_eval_hashes,
        "training_pairs_dropped": len(matches),
        "by_method": by_method,
        "eval_items_hit": len(hits),
        "hits": [{"eval_item": item, "training_pairs": count}
                 for item, count in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))],
    }


class DecontaminationFilter(CorpusRule):
    """Rows with ``phash`` -> ``duplicate_eval_set`` drops for pairs near an evaluation image.

    ``embed_spec`` (a ``transforms.clip.model.ClipSpec``: the run's CLIP model) embeds the evaluation images too, for
    the embedding check; ``eval_embeddings`` are precomputed files.
    """

    columns = ("key", "partition_id", "phash")

    def __init__(self, output: str | None, eval_sets: list[str], eval_embeddings: list[str] | None = None,
                 phash_max_distance: int | None = 4, clip_min_cosine: float = 0.975,
                 image_options: ImageConfig | None = None, embed_spec: Any = None) -> None:
        super().__init__()
        for path in [*eval_sets, *(eval_embeddings or [])]:
            fs, root = fsspec.core.url_to_fs(path)
            if not fs.exists(root):
                raise FileNotFoundError(f"evaluation set {path} does not exist (dedup.decontamination)")
        self.output = output
        self.eval_sets = list(eval_sets)
        self.eval_embeddings = list(eval_embeddings or [])
        self.phash_max_distance = phash_max_distance
        self.clip_min_cosine = clip_min_cosine
        self.image_options = image_options or ImageConfig()
        self.embed_spec = embed_spec if self.eval_sets else None

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        pipeline = rows.pipeline
        matches = []
        eval_count: Any = 0
        by_phash = self.eval_sets and self.phash_max_distance is not None
        if by_phash or self.embed_spec is not None:
            eval_items = (
                pipeline
                | "EvalSets" >> beam.Create(self.eval_sets)
                | "ReadEvalImages" >> beam.FlatMap(eval_images, options=self.image_options)
            )
        if by_phash:
            hashes = (
                eval_items
                | "EvalPHash" >> beam.Map(lambda item: (item[0], item[1]))
                | "EvalHashes" >> beam.combiners.ToList()
            )
            eval_count = beam.pvalue.AsSingleton(hashes | "CountEval" >> beam.Map(len))
            matches.append(
                rows
                | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
                | "MatchPHash" >> beam.ParDo(_MatchPHashes(self.phash_max_distance),
                                             evals=beam.pvalue.AsSingleton(hashes))
            )
        pieces = []
        if self.embed_spec is not None:
            pieces.append(
                eval_items
                | "WithImage" >> beam.Filter(lambda item: item[2] is not None)
                | "EvalImage" >> beam.Map(lambda item: (item[0], item[2]))
                | "SpreadEvalImages" >> beam.Reshuffle()
                | "BatchEvalImages" >> beam.BatchElements(min_batch_size=8, max_batch_size=64)
                | "EmbedEvalImages" >> beam.ParDo(_EmbedEvalImages(self.embed_spec))
            )
        if self.eval_embeddings:
            pieces.append(
                pipeline
                | "EvalEmbeddingFiles" >> beam.Create(self.eval_embeddings)
                | "LoadEvalEmbeddings" >> beam.Map(load_eval_embeddings)
            )
        if pieces:
            eval_vectors = pieces | "AllEvalEmbeddings" >> beam.Flatten() | "EvalEmbeddings" >> beam.CombineGlobally(
                _ConcatEvalEmbeddings()
            )
            identity_check = self.embed_spec is not None
            matches.append(
                rows
                | "KeyByPartition" >> beam.Map(lambda row: (row["partition_id"], row["key"]))
                | "GroupByPartition" >> beam.GroupByKey()
                | "MatchEmbeddings" >> beam.ParDo(
                    _MatchEmbeddings(self.output, self.clip_min_cosine, self.embed_spec if identity_check else None),
                    evals=beam.pvalue.AsSingleton(eval_vectors),
                )
            )
        chosen = (
            matches
            | "AllMatches" >> beam.Flatten()
            | "ByKey" >> beam.Map(lambda match: (match[1], match))
            | "GroupByKey" >> beam.GroupByKey()
            | "FirstMatch" >> beam.Map(_first_match)
        )
        if self.output is not None:
            from altsieve.core import fsutil, layout

            path = layout.meta(self.output, "decontamination.json")
            eval_sets, eval_embeddings = self.eval_sets, self.eval_embeddings

            def write(found: list, n_eval: int) -> None:
                fsutil.write_json(path, decontamination_report(found, eval_sets, eval_embeddings, n_eval))

            _ = chosen | "AllChosen" >> beam.combiners.ToList() | "Report" >> beam.Map(write, n_eval=eval_count)
        return chosen | "AsDrops" >> beam.Map(lambda m: (m[0], (m[1], reasons.DUPLICATE_EVAL_SET, m[2])))
