"""ClipScore: open_clip image-text similarity per pair, zero-shot tags, and embeddings saved beside the shards.

Any open_clip model by name, with a pretrained tag (``laion2b_s34b_b79k``: fetched by open_clip, so
it needs network access or a warm cache), a local checkpoint file, a remote one (``gs://...``:
copied to a local temporary file once per worker), ``builtin`` (the tiny TEST model shipped in
``altsieve/models``, trained on drawn shapes only) or ``random`` (random weights: speed benchmarks).

The model is built once per worker process (Beam's ``Shared``), inference is batched, embeddings
are L2-normalised and the cosine of each pair is its ``clip_score``. ``nsfw_score`` and
``watermark_score`` are zero-shot: the softmax probability of the tag's prompts against its
negative prompts, as CLIP's zero-shot classification computes it (tags, as LAION stored them).

The main model's image and text embeddings of every kept pair are written beside its candidate
shard (``_candidates/{partition}_embeddings.npz``: ``key``, ``image`` and ``text`` float16, in key
order, plus ``weights_sha256``) and the model's identity (name, pretrained source, sha256 of the
loaded weights, embedding width) in ``_altsieve/clip_model.json`` and the manifest.
``load_partition_embeddings`` reads them and refuses embeddings of another model.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from altsieve.core import fsutil, reasons
from altsieve.core.config import ConfigError, bucket_of
from altsieve.core.layout import Column
from altsieve.filters.base import RuleSet
from altsieve.transforms.metrics import count_drops
from altsieve.transforms.thumbnails import set_aside

if TYPE_CHECKING:
    from altsieve.core.config import ClipConfig, Config, LanguageConfig

TINY_MODEL = "altsieve-tiny-clip"
BUILTIN = "builtin"
RANDOM = "random"
PRECISIONS = ("fp32", "bf16", "int8")
EMBEDDINGS_SUFFIX = "_embeddings.npz"
IDENTITY_FILE = "clip_model.json"
# What must agree for two sets of embeddings to be comparable. The pretrained source is where the
# weights came from (a path may differ between a laptop and a cluster), so it is recorded, not compared.
IDENTITY_KEYS = ("model", "weights_sha256", "embed_dim")
# Record fields that ride from ClipScore to WriteShards and never reach Parquet or the sample .json.
IMAGE_EMBEDDING_FIELD = "clip_image_embedding"
TEXT_EMBEDDING_FIELD = "clip_text_embedding"

COLUMNS = (
    Column("clip_score", pa.float32(), "image-text cosine of the CLIP model (null: not scored)"),
    Column("nsfw_score", pa.float32(), "zero-shot probability of the NSFW prompts"),
    Column("watermark_score", pa.float32(), "zero-shot probability of the watermark prompts"),
)

_LOCAL_CHECKPOINT_HELP = (
    "To run without network access, download the checkpoint once where there is network (for ViT-B-32 "
    "laion2b_s34b_b79k: `huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K "
    "open_clip_pytorch_model.bin`) and pass its path: --set clip.pretrained=/path/to/open_clip_pytorch_model.bin "
    "(a gs:// or s3:// path works too; OpenAI's weights as a file need the model name ViT-B-32-quickgelu). "
    "clip.pretrained=builtin is the tiny TEST model shipped with altsieve."
)


class ClipModelError(ConfigError):
    """A CLIP model that cannot be loaded or used, with what to do about it (the CLI prints it, no traceback)."""


@dataclass(frozen=True, slots=True)
class ClipSpec:
    """Which model to load: an open_clip model name, its weights and the inference precision."""

    model: str = TINY_MODEL
    pretrained: str = BUILTIN
    precision: str = "fp32"
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------
# Loading


def models_folder() -> Any:
    return resources.files("altsieve.models")


@functools.cache
def register_builtin_configs() -> None:
    """Make the shipped model config (``altsieve/models/altsieve-tiny-clip.json``) known to open_clip."""
    import open_clip

    config = models_folder().joinpath(f"{TINY_MODEL}.json")
    with resources.as_file(config) as path:
        open_clip.add_model_config(path)


def builtin_checkpoint() -> str:
    checkpoint = models_folder().joinpath(f"{TINY_MODEL}.safetensors")
    if not checkpoint.is_file():
        raise ClipModelError(
            f"the shipped test checkpoint {checkpoint} is missing: reinstall altsieve, or recreate it with "
            "`python -m altsieve.models.train_tiny_clip`"
        )
    return str(checkpoint)


@functools.cache
def _local_copy(url: str) -> str:
    """A remote checkpoint copied to a local temporary file once per process (open_clip reads local files)."""
    import os
    import tempfile

    suffix = os.path.splitext(url)[1] or ".pt"
    folder = tempfile.mkdtemp(prefix="altsieve-clip-")
    local = os.path.join(folder, "checkpoint" + suffix)
    fs, path = fsutil.filesystem(url)
    fs.get(path, local)
    return local


def resolve_pretrained(spec: ClipSpec) -> str | None:
    """The ``pretrained`` argument for open_clip: a local file, a known tag, or None (random weights)."""
    import os

    import open_clip

    value = spec.pretrained
    if value == RANDOM:
        return None
    if value == BUILTIN:
        if spec.model != TINY_MODEL:
            raise ClipModelError(
                f"clip.pretrained=builtin exists only for {TINY_MODEL} (a test model); for {spec.model} give a "
                f"pretrained tag ({', '.join(open_clip.list_pretrained_tags_by_model(spec.model)[:4]) or 'none known'}"
                f"...) or a checkpoint path. {_LOCAL_CHECKPOINT_HELP}"
            )
        return builtin_checkpoint()
    if "://" in value and not value.startswith("file://"):
        try:
            return _local_copy(value)
        except Exception as err:  # noqa: BLE001 - any filesystem error becomes the one clear message
            raise ClipModelError(f"cannot read the CLIP checkpoint {value}: {err}. {_LOCAL_CHECKPOINT_HELP}") from err
    path = value.removeprefix("file://")
    if os.path.isfile(path):
        return path
    if value in open_clip.list_pretrained_tags_by_model(spec.model):
        return value
    looks_like_path = os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))
    what = f"no checkpoint file at {value}" if looks_like_path else (
        f"{value!r} is not a file and not a pretrained tag of {spec.model} "
        f"(its tags: {', '.join(open_clip.list_pretrained_tags_by_model(spec.model)) or 'none'})"
    )
    raise ClipModelError(f"cannot load CLIP weights: {what}. {_LOCAL_CHECKPOINT_HELP}")


def _check_model_name(model: str) -> None:
    import difflib

    import open_clip

    register_builtin_configs()
    known = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ClipModelError(f"unknown open_clip model {model!r}.{hint} `open_clip.list_models()` lists them.")


def weights_sha256(model: Any) -> str:
    """sha256 of the loaded weights (names, shapes and fp32 values, in name order): the same for any file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not hasattr(tensor, "dtype") or not tensor.dtype.is_floating_point:
            continue
        values = tensor.detach().to("cpu").float().contiguous().numpy()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _apply_precision(model: Any, precision: str, device: str) -> Any:
    import torch

    if precision == "fp32":
        return model.float().to(device)
    if precision == "bf16":
        return model.to(device=device, dtype=torch.bfloat16)
    if precision == "int8":
        if device != "cpu":
            raise ClipModelError("clip.precision=int8 (dynamic quantization) runs on the CPU only; use bf16 on a GPU")
        # Dynamic int8 on the Linear layers (the MLPs and projections); attention's fused in-projection stays fp32.
        return torch.ao.quantization.quantize_dynamic(model.float(), {torch.nn.Linear}, dtype=torch.qint8)
    raise ClipModelError(f"unknown clip.precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def supports_trimmed_text(model: Any) -> bool:
    """open_clip's ``CLIP`` class (built-in causal text tower pooled at the end-of-text token)."""
    return (
        all(hasattr(model, name) for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"))
        and getattr(model, "text_pool_type", "argmax") == "argmax"
        and getattr(model, "text_projection", None) is not None
        and getattr(model, "attn_mask", None) is not None
    )


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` run on the batch's longest caption only: the same features, less work.

    Why it is the same: the text tower is causal and pools at the end-of-text token (the largest
    token id), so positions after the longest caption's end never reach a pooled feature. Alt-texts
    are short (often 10-20 tokens of 77), so this skips most of the text tower's work.
    """
    import torch

    length = max(1, int((tokens != 0).sum(dim=1).max()))
    tokens = tokens[:, :length]
    try:
        cast_dtype = model.transformer.get_cast_dtype()
    except AttributeError:  # int8: a dynamically quantized Linear has no weight tensor to read the dtype from
        cast_dtype = model.token_embedding.weight.dtype
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection


class ClipScorer:
    """One loaded model: embeds images (encoded bytes or preprocessed pixels) and texts, L2-normalised."""

    def __init__(self, spec: ClipSpec, model: Any, preprocess: Any, tokenizer: Any, identity: dict[str, Any]) -> None:
        import torch

        self.spec, self.model, self.preprocess, self.tokenizer = spec, model, preprocess, tokenizer
        self.identity = identity
        self.embed_dim = int(identity["embed_dim"])
        size = getattr(getattr(model, "visual", None), "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._dtype = torch.bfloat16 if spec.precision == "bf16" else torch.float32
        self._trimmed = supports_trimmed_text(model)
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().float().exp().clamp(max=100.0)) if scale is not None else 100.0

    @classmethod
    def load(cls, spec: ClipSpec) -> ClipScorer:
        """Load (once per process: later calls with the same spec return the same scorer)."""
        return _load_cached(spec)

    # -- images -------------------------------------------------------------------------

    def images_to_tensor(self, images: Sequence[bytes]) -> Any:
        """Decode and preprocess encoded images exactly as the model's own preprocess does."""
        import torch
        from PIL import Image

        tensors = []
        for data in images:
            with Image.open(io.BytesIO(data)) as image:
                tensors.append(self.preprocess(image.convert("RGB")))
        return torch.stack(tensors)

    def pixels_to_tensor(self, pixels: np.ndarray) -> Any:
        """uint8 [N, S, S, 3] already resized to the model's size -> its normalised input."""
        import torch

        mean = self.preprocess.transforms[-1].mean
        std = self.preprocess.transforms[-1].std
        x = torch.as_tensor(pixels).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    def encode_image_tensor(self, batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.spec.device, self._dtype))
            return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self.encode_image_tensor(self.images_to_tensor(images))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.encode_image_tensor(self.pixels_to_tensor(pixels))

    # -- texts --------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(list(texts))

    def encode_text_tokens(self, tokens: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = tokens.to(self.spec.device)
            features = encode_text_trimmed(self.model, tokens) if self._trimmed else self.model.encode_text(tokens)
            return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_text_tokens(self.tokenize(texts))

    # -- zero-shot tags -----------------------------------------------------------------

    def zero_shot(self, image_embeddings: np.ndarray, prompts: np.ndarray, n_positive: int) -> np.ndarray:
        """P(positive prompts) per image: softmax over every prompt of logit_scale x cosine, as CLIP classifies."""
        logits = self.logit_scale * image_embeddings @ prompts.T
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return probabilities[:, :n_positive].sum(axis=1)


_LOAD_LOCK = threading.Lock()
_LOADED: dict[ClipSpec, ClipScorer] = {}


def _load_cached(spec: ClipSpec) -> ClipScorer:
    with _LOAD_LOCK:
        if spec not in _LOADED:
            _LOADED[spec] = _load(spec)
        return _LOADED[spec]


def _load(spec: ClipSpec) -> ClipScorer:
    import open_clip

    _check_model_name(spec.model)
    import torch

    pretrained = resolve_pretrained(spec)
    try:
        # "random" weights are seeded: every worker (and every precision) builds the same random model, so
        # the launcher's weights check holds and a benchmark compares precisions on one model.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=pretrained, device="cpu",
                # Random weights mean random weights: no tower may fetch its own pretrained part from a hub.
                pretrained_text=pretrained is not None, pretrained_image=False,
            )
        tokenizer = open_clip.get_tokenizer(spec.model)
    except ImportError as err:
        raise ClipModelError(
            f"CLIP model {spec.model} needs the {err.name or 'missing'} package, which is not installed "
            f"({err}): install it (e.g. `pip install transformers` for the xlm-roberta text towers)"
        ) from err
    except Exception as err:  # noqa: BLE001 - network, file and format errors all get the same advice
        raise ClipModelError(
            f"cannot load CLIP model {spec.model} with weights {spec.pretrained!r}: {type(err).__name__}: {err}. "
            f"{_LOCAL_CHECKPOINT_HELP}"
        ) from err
    model.eval()
    embed_dim = (open_clip.get_model_config(spec.model) or {}).get("embed_dim")
    if embed_dim is None:  # a config without it: ask the model
        with torch.inference_mode():
            embed_dim = model.encode_text(tokenizer(["a"])).shape[-1]
    identity = {
        "model": spec.model,
        "pretrained": spec.pretrained,
        "weights_sha256": weights_sha256(model),
        "embed_dim": int(embed_dim),
    }
    model = _apply_precision(model, spec.precision, spec.device)
    model.eval()
    return ClipScorer(spec, model, preprocess, tokenizer, identity)


def spec_of(config: ClipConfig) -> ClipSpec:
    return ClipSpec(model=config.model, pretrained=config.pretrained, precision=config.precision, device=config.device)


def model_identity(config: ClipConfig) -> dict[str, Any]:
    """The identity of the main model of a config (loads it: once per process)."""
    identity = dict(ClipScorer.load(spec_of(config)).identity)
    identity["precision"] = config.precision
    return identity


# ---------------------------------------------------------------------------------------------
# Identity and embeddings on disk


def identity_path(output: str) -> str:
    return fsutil.join(output, "_altsieve", IDENTITY_FILE)


def embeddings_path(output: str, partition_id: str) -> str:
    return fsutil.join(output, "_candidates", f"{partition_id}{EMBEDDINGS_SUFFIX}")


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether embeddings of identities ``a`` and ``b`` are comparable; only the keys both give are compared."""
    return all(a[key] == b[key] for key in IDENTITY_KEYS if key in a and key in b)


def _describe(identity: Mapping[str, Any]) -> str:
    sha = str(identity.get("weights_sha256", "?"))[:12]
    model, pretrained, dim = (identity.get(k, "?") for k in ("model", "pretrained", "embed_dim"))
    return f"{model} ({pretrained}, weights {sha}, dim {dim})"


def record_model_identity(output: str, identity: Mapping[str, Any]) -> None:
    """Write ``_altsieve/clip_model.json``, or refuse when the output holds embeddings of another model."""
    path = identity_path(output)
    if fsutil.exists(path):
        saved = fsutil.read_json(path)
        if not same_model(saved, identity):
            raise ClipModelError(
                f"{output} holds CLIP embeddings of {_describe(saved)}; this run's model is {_describe(identity)}. "
                "Mixing them would make the embeddings incomparable: use a new --output folder, or the same model."
            )
    fsutil.write_json(path, dict(identity))


def read_model_identity(output: str) -> dict[str, Any]:
    path = identity_path(output)
    if not fsutil.exists(path):
        raise ClipModelError(f"{output} has no CLIP embeddings ({path} is missing): ingest with clip.enabled=true")
    return dict(fsutil.read_json(path))


def check_model(output: str, expected: Mapping[str, Any] | None) -> dict[str, Any]:
    """The output's model identity; a clear error when ``expected`` names another model."""
    saved = read_model_identity(output)
    if expected is not None and not same_model(saved, expected):
        raise ClipModelError(
            f"the CLIP embeddings in {output} are from {_describe(saved)}, not from {_describe(expected)}: "
            "embeddings of different models are not comparable. Recompute them with one model, or compare with "
            "embeddings made by the same model."
        )
    return saved


def load_partition_embeddings(
    output: str, partition_id: str, expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, image, text)`` of a partition's kept pairs: keys (str) in key order, float16 [N, D] each.

    The rows are the partition's pairs kept by ingest (those with an image in its candidate tar), in
    key order. ``expected`` (a model identity, e.g. ``model_identity(config)`` or ``{"weights_sha256":
    ...}``) makes a different model a ``ClipModelError`` instead of silently mixed embeddings.
    """
    import fsspec

    saved = check_model(output, expected)
    path = embeddings_path(output, partition_id)
    with fsspec.open(path, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as data:
        keys, image, text = data["key"], data["image"], data["text"]
        sha = str(data["weights_sha256"]) if "weights_sha256" in data else None
    if sha is not None and sha != saved["weights_sha256"]:
        raise ClipModelError(f"{path} was written by weights {sha[:12]}, not by {_describe(saved)}")
    return keys, image, text


def partition_embeddings(
    records: Iterable[dict[str, Any]], embed_dim: int, previous: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embeddings of the kept records in key order; those of records merged from an earlier attempt
    (``--retry-failed``) come from the earlier file ``previous``."""
    import fsspec

    kept = sorted((r for r in records if r.get("reason") is None and r.get("image") is not None),
                  key=lambda r: r["key"])
    old: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if previous is not None and any(r.get(IMAGE_EMBEDDING_FIELD) is None for r in kept) and fsutil.exists(previous):
        with fsspec.open(previous, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as data:
            old = {str(k): (i, t) for k, i, t in zip(data["key"], data["image"], data["text"], strict=True)}
    image = np.zeros((len(kept), embed_dim), dtype=np.float16)
    text = np.zeros((len(kept), embed_dim), dtype=np.float16)
    for row, record in enumerate(kept):
        pair = (record.get(IMAGE_EMBEDDING_FIELD), record.get(TEXT_EMBEDDING_FIELD))
        if pair[0] is None:
            if record["key"] not in old:
                raise RuntimeError(f"kept pair {record['key']} has no CLIP embedding (ClipScore did not see it)")
            pair = old[record["key"]]
        image[row], text[row] = pair
    return np.array([r["key"] for r in kept], dtype=str), image, text


def write_partition_embeddings(
    path: str, keys: np.ndarray, image: np.ndarray, text: np.ndarray, sha256: str
) -> None:
    """Atomically: a killed run leaves the old file or the new one (the marker is written after it)."""
    buffer = io.BytesIO()
    np.savez(buffer, key=keys, image=image, text=text, weights_sha256=np.array(sha256))
    fsutil.write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


# ---------------------------------------------------------------------------------------------
# The Beam stage


def language_bucket(record: Mapping[str, Any], language: LanguageConfig) -> str:
    return bucket_of(record.get("language"), record.get("language_score"), language)


class _Models:
    """What a worker process holds once (via ``Shared``): the scorers and the tag prompts' embeddings."""

    def __init__(self, config: ClipConfig) -> None:
        self.main = ClipScorer.load(spec_of(config))
        self.by_bucket: dict[str, ClipScorer] = {}
        for bucket, override in config.per_language.items():
            if override.model is None or override.pretrained is None:
                continue  # the main model scores this bucket; only its threshold differs
            if (override.model, override.pretrained) != (config.model, config.pretrained):
                spec = ClipSpec(override.model, override.pretrained, config.precision, config.device)
                self.by_bucket[bucket] = ClipScorer.load(spec)
        tags = config.tags
        self.nsfw_prompts = self.watermark_prompts = np.zeros((0, self.main.embed_dim), dtype=np.float32)
        if tags.enabled:  # the prompts are embedded once per worker, not per batch
            self.nsfw_prompts = self.main.embed_texts([*tags.nsfw_prompts, *tags.nsfw_negative_prompts])
            self.watermark_prompts = self.main.embed_texts([*tags.watermark_prompts, *tags.watermark_negative_prompts])


def score_records(models: _Models, config: ClipConfig, language: LanguageConfig,
                  batch: list[dict[str, Any]], rules: RuleSet) -> None:
    """Score a batch in place: clip_score, tags, embeddings, and the reason of any pair a CLIP rule drops."""
    images = [r["image"] for r in batch]
    captions = [r.get("caption") or "" for r in batch]
    image = models.main.embed_images(images)
    text = models.main.embed_texts(captions)
    scores = (image * text).sum(axis=1)
    if models.by_bucket:
        buckets = [language_bucket(r, language) for r in batch]
        for bucket, scorer in models.by_bucket.items():
            rows = [i for i, b in enumerate(buckets) if b == bucket]
            if rows:  # this bucket's own model decides its score; the main model's embeddings are still saved
                own_image = scorer.embed_images([images[i] for i in rows])
                own_text = scorer.embed_texts([captions[i] for i in rows])
                scores[rows] = (own_image * own_text).sum(axis=1)
    tags = config.tags
    nsfw = watermark = None
    if tags.enabled:
        nsfw = models.main.zero_shot(image, models.nsfw_prompts, len(tags.nsfw_prompts))
        watermark = models.main.zero_shot(image, models.watermark_prompts, len(tags.watermark_prompts))
    for i, record in enumerate(batch):
        record["clip_score"] = float(np.float32(scores[i]))
        if nsfw is not None and watermark is not None:
            record["nsfw_score"] = float(np.float32(nsfw[i]))
            record["watermark_score"] = float(np.float32(watermark[i]))
        reason = rules.first_reason(record)
        if reason is not None:
            record["reason"] = reason
            # A dropped pair's image stays out of the shard, as for every other rule; the audit may show a thumbnail.
            set_aside(record, record.pop("image", None))
        elif config.save_embeddings:
            record[IMAGE_EMBEDDING_FIELD] = image[i].astype(np.float16)
            record[TEXT_EMBEDDING_FIELD] = text[i].astype(np.float16)


def _shared_key(config: ClipConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


class _ScoreBatches(beam.DoFn):
    """Buffers kept pairs into batches; a batch is scored when full or when its partition is complete.

    Flushing at the partition's end keeps WriteShards writing each partition as soon as it is
    fetched (a killed run loses only the partitions in flight); ``finish_bundle`` flushes the rest.
    """

    def __init__(self, config: Config, expected_sha256: str | None, shared: Shared) -> None:
        self._full_config, self._expected, self._shared = config, expected_sha256, shared
        self._config, self._language = config.clip, config.language
        self._scored = Metrics.counter("altsieve", "clip_pairs_scored")
        self._batches = Metrics.counter("altsieve", "clip_batches")

    def setup(self) -> None:
        if self._config.num_threads:
            import torch

            torch.set_num_threads(self._config.num_threads)
        self._models = self._shared.acquire(lambda: _Models(self._config), tag=_shared_key(self._config))
        self._rules = RuleSet.for_stages(self._full_config, reasons.CLIP)
        sha = self._models.main.identity["weights_sha256"]
        if self._expected is not None and sha != self._expected:
            raise ClipModelError(
                f"this worker loaded other weights for {self._config.model} from {self._config.pretrained!r} "
                f"(sha256 {sha[:12]}) than the launcher did ({self._expected[:12]}): make the checkpoint the same "
                "everywhere (a shared path such as gs://...)"
            )

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}

    def process(self, record: dict[str, Any]):
        partition_id = record.get("partition_id")
        if record.get("reason") is None and record.get("image") is not None:
            self._buffer.append(record)
        else:
            yield record
        done = False
        if partition_id is not None:
            self._seen[partition_id] = self._seen.get(partition_id, 0) + 1
            done = self._seen[partition_id] == record.get("partition_size")
            if done:
                del self._seen[partition_id]
        if done or len(self._buffer) >= self._config.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for record in self._flush():
            yield GlobalWindows.windowed_value(record)
        count_drops(self._rules)

    def _flush(self) -> list[dict[str, Any]]:
        batch, self._buffer = self._buffer, []
        for start in range(0, len(batch), self._config.batch_size):
            chunk = batch[start : start + self._config.batch_size]
            score_records(self._models, self._config, self._language, chunk, self._rules)
            self._scored.inc(len(chunk))
            self._batches.inc()
        return batch


class ClipScore(beam.PTransform):
    """``PCollection[record]`` -> the same records, each kept pair with ``clip_score``, tags and embeddings."""

    def __init__(self, config: Config, expected_sha256: str | None = None) -> None:
        super().__init__()
        self._config, self._expected = config, expected_sha256

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if not self._config.clip.enabled:
            return records
        return records | "ScoreBatches" >> beam.ParDo(_ScoreBatches(self._config, self._expected, Shared()))
