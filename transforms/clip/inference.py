"""ClipScore's ``ModelHandler`` for Beam's RunInference (see transforms/clip/stage.py).

A module of its own because ``apache_beam.ml.inference`` imports torch (2.4 s of start-up in every
process): stage.py, which every pass imports for its columns, imports this only when CLIP is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from altsieve.core import reasons
from altsieve.filters.base import RuleSet
from altsieve.transforms.clip.model import ClipModelError
from altsieve.transforms.clip.stage import ClipModels, score_records, to_score
from altsieve.transforms.metrics import count_drops

if TYPE_CHECKING:
    from altsieve.core.config import Config

__all__ = ["ClipModelHandler", "RunInference"]


class ClipModelHandler(ModelHandler[dict, dict, ClipModels]):
    """RunInference's view of ClipScore: load the models (and check their weights), score a batch of records."""

    def __init__(self, config: Config, expected_sha256: str | None = None) -> None:
        super().__init__()
        self._config, self._expected = config, expected_sha256
        self._rules: RuleSet | None = None  # built on the worker; one per DoFn instance, so its counts are its own
        self._scored = Metrics.counter("altsieve", "clip_pairs_scored")
        self._batches = Metrics.counter("altsieve", "clip_batches")

    def load_model(self) -> ClipModels:
        clip = self._config.clip
        if clip.num_threads:
            import torch

            torch.set_num_threads(clip.num_threads)
        models = ClipModels(clip)
        sha = models.main.identity["weights_sha256"]
        if self._expected is not None and sha != self._expected:
            raise ClipModelError(
                f"this worker loaded other weights for {clip.model} from {clip.pretrained!r} "
                f"(sha256 {sha[:12]}) than the launcher did ({self._expected[:12]}): make the checkpoint the same "
                "everywhere (a shared path such as gs://...)"
            )
        return models

    def run_inference(self, batch: Sequence[dict[str, Any]], model: ClipModels,
                      inference_args: dict[str, Any] | None = None) -> Iterable[dict[str, Any]]:
        """The batch's records, the scored ones with their scores, tags, embeddings or drop reason."""
        if self._rules is None:
            self._rules = RuleSet.for_stages(self._config, reasons.CLIP)
        pairs = [record for record in batch if to_score(record)]
        if pairs:
            score_records(model, self._config.clip, self._config.language, pairs, self._rules)
            self._scored.inc(len(pairs))
            self._batches.inc()
            count_drops(self._rules)
        return batch

    def get_num_bytes(self, batch: Sequence[dict[str, Any]]) -> int:
        """The image bytes a batch holds after scoring (the default pickles the whole batch to measure it)."""
        return sum(len(record.get("image") or b"") for record in batch)
