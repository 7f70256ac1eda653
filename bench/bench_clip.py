"""ClipScore throughput: the stage against a raw batched open_clip forward, then the faster CPU paths.

The pairs are the test corpus's scenes as the ingest pass stores them (320x240 drawn, resized to 256 with
the default border mode, JPEG q95) with short English alt-texts. Paths, each over the same pairs:

  raw         model.encode_image on already preprocessed tensors + model.encode_text on already tokenised
              captions (77 tokens), batched: no decode, no preprocess, no tokenizer, no normalisation
  stage       ClipScore's batch code (transforms.clip.stage.score_records): JPEG decode, the model's preprocess,
              tokenizer, both towers (text trimmed to the batch's longest caption), L2 norm, cosine, the two
              zero-shot tags, thresholds, float16 embeddings on each record
  stage-full  the same with the text tower on all 77 positions (what `raw` runs): the stage's own overhead
  bf16 / int8 the stage with clip.precision=bf16 (weights and activations bfloat16) or int8 (dynamic
              quantization of the Linear layers: torch.ao.quantization.quantize_dynamic)
  onnx        the stage with both towers exported to ONNX (torch.onnx.export, dynamo exporter, dynamic batch and
              caption length) and run by ONNX Runtime's CPU provider (needs `pip install onnxruntime onnxscript`)
  beam        the whole ClipScore transform (RunInference + ClipModelHandler) in a DirectRunner pipeline, model load
              and pipeline start included
  beam-dofn   the same pipeline with the hand-written stage ClipScore had before RunInference (a DoFn buffering
              pairs into batches, flushed when full or when a partition is complete, models held by Beam's
              Shared), kept here to measure what RunInference costs; both beam paths run --beam-rounds times,
              interleaved, and report the median

Each faster path reports max |score - fp32 score| over the pairs; the spec allows 0.01. ViT-B-32 with random
weights is the speed model (`--model ViT-B-32 --pretrained random`); scores of random weights sit near 0, so
the differences are also measured on the shipped tiny model, whose scores are trained.

Usage: python bench/bench_clip.py [--model ViT-B-32] [--pretrained random] [--n 128] [--batch 32] [--rounds 3]
       [--threads 2] [--device cpu|cuda] [--paths raw,stage,stage-full,bf16,int8,onnx,beam,beam-dofn]
       [--beam-rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np


def make_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Records as ClipScore receives them: pipeline-resized JPEG bytes and English alt-texts."""
    from altsieve.core.config import ImageConfig
    from altsieve.testcorpus.scenes import caption_for, draw_scene, random_scene
    from altsieve.transforms.imageops import process_image

    rng = random.Random(seed)
    options = ImageConfig(image_size=256, resize_mode="border")
    records = []
    for i in range(n):
        spec = random_scene(rng)
        buffer = io.BytesIO()
        draw_scene(spec, 320, 240, texture=True).save(buffer, "JPEG", quality=90)
        records.append({"key": f"{i:010d}", "partition_id": "p", "partition_size": n, "reason": None,
                        "caption": caption_for(spec, "en", rng), "language": "en", "language_score": 1.0,
                        "image": process_image(buffer.getvalue(), options).data})
    return records


def clip_config(model: str, pretrained: str, precision: str, batch: int, device: str) -> Any:
    from altsieve.core.config import load_config

    return load_config(None, [{"clip": {"enabled": True, "model": model, "pretrained": pretrained,
                                        "precision": precision, "batch_size": batch, "device": device}}])


def _fresh(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


def time_stage(models: Any, config: Any, records: list[dict[str, Any]], batch: int) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds for score_records over all pairs in batches, and the scores."""
    from altsieve.core import reasons
    from altsieve.filters.base import RuleSet
    from altsieve.transforms.clip.stage import score_records

    rules = RuleSet.for_stages(config, reasons.CLIP)
    work = _fresh(records)
    sync = _sync_for(config.clip.device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(work), batch):
        score_records(models, config.clip, config.language, work[start : start + batch], rules)
    sync()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return seconds, cpu_seconds, np.array([r["clip_score"] for r in work], dtype=np.float32)


def _sync_for(device: str) -> Any:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def time_raw(scorer: Any, records: list[dict[str, Any]], batch: int) -> tuple[float, float, None]:
    """A plain batched open_clip forward of both towers on ready inputs (the spec's baseline)."""
    import torch

    images = scorer.images_to_tensor([r["image"] for r in records])
    tokens = scorer.tokenize([r["caption"] for r in records])
    device, dtype = scorer.spec.device, scorer._dtype
    images, tokens = images.to(device, dtype), tokens.to(device)
    sync = _sync_for(device)
    sync()
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for start in range(0, len(records), batch):
            scorer.model.encode_image(images[start : start + batch])
            scorer.model.encode_text(tokens[start : start + batch])
    sync()
    return time.perf_counter() - started, time.process_time() - cpu_started, None


class _OnnxTowers:
    """Both towers of a loaded scorer exported to ONNX and run by ONNX Runtime (CPU)."""

    def __init__(self, scorer: Any, folder: str, threads: int) -> None:
        import onnxruntime as ort
        import torch

        model = scorer.model.float()

        class Image(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, image: torch.Tensor) -> torch.Tensor:
                return self.model.encode_image(image)

        class Text(torch.nn.Module):
            """The trimmed text tower: the sequence length is a dynamic axis (see clip.model.encode_text_trimmed)."""

            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                m, length = self.model, tokens.shape[1]
                x = m.token_embedding(tokens) + m.positional_embedding[:length]
                x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:length, :length]))
                x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
                return x @ m.text_projection

        size = scorer.image_size
        image_path, text_path = os.path.join(folder, "image.onnx"), os.path.join(folder, "text.onnx")
        # nn.MultiheadAttention's inference fast path is one fused op ONNX has no symbol for: trace the plain one.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        batch = torch.export.Dim("batch")
        length = torch.export.Dim("length", max=int(model.positional_embedding.shape[0]))
        sample = scorer.tokenize(["a red circle on the left of a picture", "two blue squares on the left"])[:, :12]
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(Image().eval(), (torch.randn(2, 3, size, size),), image_path, input_names=["image"],
                              dynamic_shapes={"image": {0: batch}}, dynamo=True, verbose=False)
            torch.onnx.export(Text().eval(), (sample,), text_path, input_names=["tokens"],
                              dynamic_shapes={"tokens": {0: batch, 1: length}}, dynamo=True, verbose=False)
        torch.backends.mha.set_fastpath_enabled(fastpath)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.image = ort.InferenceSession(image_path, options, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(text_path, options, providers=["CPUExecutionProvider"])


def onnx_models(models: Any, threads: int) -> Any:
    """A copy of the stage's models whose main scorer runs both towers in ONNX Runtime."""
    import copy

    towers = _OnnxTowers(models.main, tempfile.mkdtemp(prefix="altsieve-onnx-"), threads)
    scorer = copy.copy(models.main)

    def encode_image_tensor(batch: Any) -> np.ndarray:
        features = towers.image.run(None, {"image": batch.numpy()})[0]
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    def encode_text_tokens(tokens: Any) -> np.ndarray:
        length = max(1, int((tokens != 0).sum(dim=1).max()))
        features = towers.text.run(None, {"tokens": tokens[:, :length].numpy()})[0]
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    scorer.encode_image_tensor = encode_image_tensor
    scorer.encode_text_tokens = encode_text_tokens
    onnx = copy.copy(models)
    onnx.main = scorer
    return onnx


def hand_written_stage(config: Any) -> Any:
    """ClipScore as it was before RunInference: one DoFn that batches pairs itself and holds the models in Shared.

    A batch is scored when full or when the last record of its partition arrives; records without an image
    (or with a reason) pass through at once. Only this benchmark runs it.
    """
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.transforms.window import GlobalWindows
    from apache_beam.utils.shared import Shared

    from altsieve.core import reasons
    from altsieve.filters.base import RuleSet
    from altsieve.transforms.clip.stage import ClipModels, score_records, to_score
    from altsieve.transforms.metrics import count_drops

    class ScoreBatches(beam.DoFn):
        def __init__(self, shared: Shared) -> None:
            self._shared = shared
            self._scored = Metrics.counter("altsieve", "clip_pairs_scored")
            self._batches = Metrics.counter("altsieve", "clip_batches")

        def setup(self) -> None:
            self._models = self._shared.acquire(lambda: ClipModels(config.clip), tag="clip")
            self._rules = RuleSet.for_stages(config, reasons.CLIP)

        def start_bundle(self) -> None:
            self._buffer: list[dict[str, Any]] = []
            self._seen: dict[str, int] = {}

        def process(self, record: dict[str, Any]):
            if to_score(record):
                self._buffer.append(record)
            else:
                yield record
            partition_id = record["partition_id"]
            self._seen[partition_id] = self._seen.get(partition_id, 0) + 1
            done = self._seen[partition_id] == record["partition_size"]
            if done or len(self._buffer) >= config.clip.batch_size:
                yield from self._flush()

        def finish_bundle(self):
            for record in self._flush():
                yield GlobalWindows.windowed_value(record)
            count_drops(self._rules)

        def _flush(self) -> list[dict[str, Any]]:
            batch, self._buffer = self._buffer, []
            for start in range(0, len(batch), config.clip.batch_size):
                chunk = batch[start : start + config.clip.batch_size]
                score_records(self._models, config.clip, config.language, chunk, self._rules)
                self._scored.inc(len(chunk))
                self._batches.inc()
            return batch

    return beam.ParDo(ScoreBatches(Shared()))


def time_beam(config: Any, records: list[dict[str, Any]], hand_written: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of the ClipScore transform in a DirectRunner pipeline (in this process), model load
    included (a fresh process's cost)."""
    import apache_beam as beam

    from altsieve.transforms.clip import model as clip_model
    from altsieve.transforms.clip import stage as clip_stage

    clip_model._LOADED.clear()  # a worker starts without the model
    stage = hand_written_stage(config) if hand_written else clip_stage.ClipScore(config)
    started, cpu_started = time.perf_counter(), time.process_time()
    with beam.Pipeline(argv=["--direct_num_workers=1"]) as pipeline:
        _ = pipeline | beam.Create(_fresh(records)) | stage | beam.combiners.Count.Globally()
    return time.perf_counter() - started, time.process_time() - cpu_started


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every path once per round, rounds interleaved (the machines are shared: load drifts), medians reported."""
    import torch

    from altsieve.transforms.clip import model as clip_model
    from altsieve.transforms.clip import stage as clip_stage

    torch.set_num_threads(args.threads)
    paths = args.paths.split(",")
    records = make_pairs(args.n)
    results: dict[str, Any] = {
        "model": args.model, "pretrained": args.pretrained, "pairs": args.n, "batch": args.batch,
        "threads": args.threads, "device": args.device, "torch": torch.__version__, "rounds": args.rounds,
        "cpu": _cpu_name(), "load_average_before": round(os.getloadavg()[0], 2), "paths": {},
    }
    fp32_config = clip_config(args.model, args.pretrained, "fp32", args.batch, args.device)
    fp32 = clip_stage.ClipModels(fp32_config.clip)
    _, _, reference = time_stage(fp32, fp32_config, records, args.batch)
    trimmed = clip_model.supports_trimmed_text(fp32.main.model)

    def stage_full() -> tuple[float, float, np.ndarray]:
        fp32.main._trimmed = False
        try:
            return time_stage(fp32, fp32_config, records, args.batch)
        finally:
            fp32.main._trimmed = trimmed

    runners: dict[str, Any] = {}
    if "raw" in paths:
        runners["raw"] = functools.partial(time_raw, fp32.main, records, args.batch)
    if "stage" in paths:
        runners["stage"] = lambda: time_stage(fp32, fp32_config, records, args.batch)
    if "stage-full" in paths:
        runners["stage-full"] = stage_full
    for precision in ("bf16", "int8"):
        if precision in paths:
            config = clip_config(args.model, args.pretrained, precision, args.batch, args.device)
            models = clip_stage.ClipModels(config.clip)
            runners[precision] = functools.partial(time_stage, models, config, records, args.batch)
    if "onnx" in paths:
        try:
            runners["onnx"] = functools.partial(time_stage, onnx_models(fp32, args.threads), fp32_config, records,
                                                args.batch)
        except ImportError as err:
            print(f"onnx skipped: {err} (pip install onnxruntime onnxscript)")
    for run in runners.values():  # warm-up: first-call allocations, oneDNN kernel choice
        run()
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    diffs: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, run in runners.items():
            seconds, cpu_seconds, scores = run()
            cpu[name].append(cpu_seconds)
            wall[name].append(seconds)
            if scores is not None:
                diffs[name] = max(diffs.get(name, 0.0), float(np.abs(scores - reference).max()))
    for name in runners:
        entry: dict[str, Any] = {
            "seconds": [round(x, 3) for x in wall[name]],
            "pairs_per_s": round(args.n / statistics.median(wall[name]), 2),
            "pairs_per_cpu_s": round(args.n / statistics.median(cpu[name]), 2),
        }
        if name in diffs:
            entry["max_abs_score_diff_vs_fp32"] = round(diffs[name], 5)
        results["paths"][name] = entry
    beam_paths = [name for name in ("beam", "beam-dofn") if name in paths]
    beam_wall: dict[str, list[float]] = {name: [] for name in beam_paths}
    beam_cpu: dict[str, list[float]] = {name: [] for name in beam_paths}
    for round_index in range(args.beam_rounds if beam_paths else 0):
        for name in beam_paths if round_index % 2 == 0 else beam_paths[::-1]:  # alternate who runs first
            seconds, cpu_seconds = time_beam(fp32_config, records, hand_written=name == "beam-dofn")
            beam_wall[name].append(seconds)
            beam_cpu[name].append(cpu_seconds)
    for name in beam_paths:
        results["paths"][name] = {"seconds": [round(x, 3) for x in beam_wall[name]],
                                  "cpu_seconds": [round(x, 3) for x in beam_cpu[name]],
                                  "pairs_per_s": round(args.n / statistics.median(beam_wall[name]), 2),
                                  "pairs_per_cpu_s": round(args.n / statistics.median(beam_cpu[name]), 2)}
    if len(beam_paths) == 2:  # CPU seconds: on a shared machine wall time mostly measures the neighbours
        results["beam_over_beam_dofn_cpu"] = round(
            statistics.median(beam_cpu["beam"]) / statistics.median(beam_cpu["beam-dofn"]), 3)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    raw = results["paths"].get("raw", {}).get("pairs_per_s")
    for name, entry in results["paths"].items():
        if raw:
            entry["over_raw"] = round(entry["pairs_per_s"] / raw, 3)
        accuracy = entry.get("max_abs_score_diff_vs_fp32")
        print(f"{name:<11} {entry['pairs_per_s']:>9.2f} pairs/s  {entry.get('pairs_per_cpu_s', float('nan')):>9.2f} "
              f"pairs/cpu-s  x{entry.get('over_raw', float('nan')):.3f} of raw  "
              + (f"max |score diff| {accuracy:.5f}" if accuracy is not None else ""), flush=True)
    if "beam_over_beam_dofn_cpu" in results:
        print(f"beam (RunInference) / beam-dofn (hand-written), CPU seconds: x{results['beam_over_beam_dofn_cpu']:.3f}")
    return results


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--n", type=int, default=128, help="pairs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paths", default="raw,stage,stage-full,bf16,int8,onnx,beam,beam-dofn")
    parser.add_argument("--beam-rounds", dest="beam_rounds", type=int, default=3)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    results = measure(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
