"""Which CLIP model, loaded once per process: ``ClipSpec``, the weights' identity, and ``ClipScorer``.

Any open_clip model by name, with a pretrained tag (``laion2b_s34b_b79k``: fetched by open_clip, so
it needs network access or a warm cache), a local checkpoint file, a remote one (``gs://...``:
copied to a local temporary file once per worker), ``builtin`` (the tiny TEST model shipped in
``altsieve/models``, trained on drawn shapes only) or ``random`` (random weights: speed benchmarks).

Embeddings are L2-normalised, so the cosine of a pair is the dot product of its two embeddings.
Zero-shot tags are the softmax probability of a tag's prompts against its negative prompts, as
CLIP's zero-shot classification computes it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from altsieve.core import fsutil
from altsieve.core.config import ConfigError

if TYPE_CHECKING:
    from altsieve.core.config import ClipConfig

TINY_MODEL = "altsieve-tiny-clip"
BUILTIN = "builtin"
RANDOM = "random"
PRECISIONS = ("fp32", "bf16", "int8")

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
