"""ClipHeads: small models on the CLIP image embedding that ClipScore already computed (no second forward pass).

LAION's aesthetic predictor (LAION-Aesthetics V2: an MLP on ViT-L/14 embeddings) and its CLIP-based
NSFW detector are heads of this kind; DataComp removed images with NSFW > 0.1. The weights are the
user's (``heads.aesthetic.weights``, ``heads.nsfw.weights``), loaded from a local file:

* a TorchScript file (``torch.jit.save``): any architecture;
* a torch state dict (``.pth``, ``.pt``) or a ``.npz`` of its Linear layers' weights and biases, in
  key order (LAION's ``sac+logos+ava1-l14-linearMSE.pth`` loads as it is): applied one after another,
  with ``activation`` between them and ``output`` after the last.

The input is the record's float16 image embedding (``clip_image_embedding``, left by ClipScore
when ``clip.save_embeddings``), L2-normalised with ``normalize``. Scores go to ``aesthetic_score``
and ``nsfw_detector_score``; the rules are in filters/heads.py. Embeddings are scored in batches of
``heads.batch_size`` on ``heads.device`` (torch: ``cuda`` where a GPU is at hand).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from altsieve.core import reasons
from altsieve.core.config import Config, ConfigError, HeadConfig
from altsieve.core.layout import Column
from altsieve.filters.base import RuleSet
from altsieve.transforms.batching import PartitionBatches
from altsieve.transforms.clip.store import IMAGE_EMBEDDING_FIELD  # ClipScore leaves it on each kept record
from altsieve.transforms.metrics import count_drops
from altsieve.transforms.thumbnails import set_aside

COLUMNS = (
    Column("aesthetic_score", pa.float32(), "the aesthetic head's score of the CLIP image embedding (heads.aesthetic)"),
    Column("nsfw_detector_score", pa.float32(), "the NSFW head's score of the CLIP image embedding (heads.nsfw)"),
)
SCORE_FIELDS = {"aesthetic": "aesthetic_score", "nsfw": "nsfw_detector_score"}


class Head:
    """One head, loaded from its file, on ``device``: ``scores(embeddings [N, D]) -> float32 [N]``."""

    def __init__(self, config: HeadConfig, device: str, name: str) -> None:
        import torch

        self.config, self.device, self.name = config, torch.device(device), name
        path = str(config.weights)
        self.module: Any = None
        self.layers: list[tuple[Any, Any]] = []
        try:
            if path.endswith(".npz"):
                with np.load(path, allow_pickle=False) as data:
                    self.layers = _linear_layers({k: torch.from_numpy(data[k]) for k in data.files}, path)
            else:
                with warnings.catch_warnings():
                    # torch.load hands a TorchScript archive to torch.jit.load itself, with a warning each; and
                    # torch 2.14 calls TorchScript deprecated, though it still loads.
                    warnings.simplefilter("ignore", UserWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    try:
                        loaded = torch.load(path, map_location="cpu", weights_only=True)
                    except Exception:  # noqa: BLE001 - torch raises several kinds for a file it cannot unpickle
                        loaded = torch.jit.load(path, map_location="cpu")
                if isinstance(loaded, dict):
                    self.layers = _linear_layers(loaded, path)
                else:
                    self.module = loaded.to(self.device).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ConfigError(f"heads.{name}.weights {path}: cannot load it ({err})") from None
        self.layers = [(w.float().to(self.device), b.float().to(self.device)) for w, b in self.layers]

    @property
    def input_dim(self) -> int | None:
        return int(self.layers[0][0].shape[1]) if self.layers else None

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32), device=self.device)
        if self.config.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        if self.input_dim is not None and x.shape[1] != self.input_dim:
            raise ConfigError(f"heads.{self.name}: the weights take {self.input_dim}-d embeddings, the run's CLIP "
                              f"model gives {x.shape[1]}-d: use a head made for that model")
        with torch.no_grad():
            if self.module is not None:
                y = self.module(x)
            else:
                y = x
                for index, (weight, bias) in enumerate(self.layers):
                    y = y @ weight.T + bias
                    if index < len(self.layers) - 1 and self.config.activation == "relu":
                        y = torch.relu(y)
                if self.config.output == "sigmoid":
                    y = torch.sigmoid(y)
        return y.reshape(len(x), -1)[:, 0].float().cpu().numpy()


def _linear_layers(state: dict[str, Any], path: str) -> list[tuple[Any, Any]]:
    """The (weight [out, in], bias [out]) pairs of a state dict, in key order (LAION's MLP: layers.0, .2, .4 ...)."""
    weights = [key for key in state if key.endswith("weight") and state[key].ndim == 2]
    if not weights:
        raise ValueError(f"no Linear layer weights (2-D '...weight' arrays) in {path}")
    layers = []
    for key in weights:
        bias_key = key[: -len("weight")] + "bias"
        weight = state[key]
        bias = state[bias_key] if bias_key in state else weight.new_zeros(weight.shape[0])
        layers.append((weight, bias))
    for (first, _), (second, _) in zip(layers, layers[1:], strict=False):
        if first.shape[0] != second.shape[1]:
            raise ValueError(f"layer shapes do not chain ({tuple(first.shape)} then {tuple(second.shape)})")
    return layers


@functools.lru_cache(maxsize=8)
def _head(settings: str, device: str, name: str) -> Head:
    return Head(HeadConfig.model_validate_json(settings), device, name)  # once per worker process


def heads_of(config: Config) -> dict[str, Head]:
    heads = config.heads
    return {name: _head(getattr(heads, name).model_dump_json(), heads.device, name)
            for name in SCORE_FIELDS if getattr(heads, name).enabled}


class _ScoreHeads(PartitionBatches):
    def __init__(self, config: Config) -> None:
        self._config = config
        self.batch_size = config.heads.batch_size

    def setup(self) -> None:
        self._heads = heads_of(self._config)
        self._rules = RuleSet.for_stages(self._config, reasons.HEADS)

    def wants(self, record: dict[str, Any]) -> bool:
        return record.get("reason") is None and record.get(IMAGE_EMBEDDING_FIELD) is not None

    def run_batch(self, batch: list[dict[str, Any]]) -> None:
        embeddings = np.stack([record[IMAGE_EMBEDDING_FIELD] for record in batch])
        for name, head in self._heads.items():
            for record, score in zip(batch, head.scores(embeddings).tolist(), strict=True):
                record[SCORE_FIELDS[name]] = float(np.float32(score))
        for record in batch:
            reason = self._rules.first_reason(record)
            if reason is not None:
                record["reason"] = reason
                set_aside(record, record.pop("image", None))

    def finish_bundle(self):
        yield from super().finish_bundle()
        count_drops(self._rules)


class ClipHeads(beam.PTransform):
    """``PCollection[record]`` -> the same records, scored by the heads that are switched on, and their verdicts."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self._config = config

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        heads = self._config.heads
        if not (heads.aesthetic.enabled or heads.nsfw.enabled):
            return records
        return records | "Score" >> beam.ParDo(_ScoreHeads(self._config))
