"""ImageContent: what the ingest learns from the picture itself, after Decode and before any model on it.

Per kept pair, on the resized upright pixels Decode leaves on the record (``decode.PIXELS_FIELD``,
never stored), each part switched on by its section:

* ``dedup.crop.enabled``: the signature and ORB features of the crop-robust duplicate rule
  (transforms/crop_features.py), written to ``_candidates/{partition}_crop.npz``;
* ``content.text``: ``text_area_ratio``, the share of the image a text detector covers: the DB
  detector PP-OCRv6 (small) that ships inside the rapidocr wheel (Apache-2.0), run by OpenCV's
  DNN module; a pixel is text when its probability is above ``threshold`` (PaddleOCR's 0.3).
  T-MARS (Maini et al. 2023) drops pairs whose images are mostly text: ``max_ratio`` does;
* ``content.faces``: ``face_count`` and ``face_boxes`` (x, y, w, h in the stored image's pixels) from
  OpenCV's frontal-face Haar cascade (shipped in opencv's data folder), and with ``blur`` each
  face blurred in the stored image (DataComp's released pools have blurred faces).

Then the image-content rules (filters/content.py). Images go through the detector in batches
(``batch_size``), cut short at the end of a partition (transforms/batching.py); ``device: cuda``
uses OpenCV's CUDA backend where OpenCV was built with it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import apache_beam as beam
import cv2
import numpy as np
import pyarrow as pa

from altsieve.core import reasons
from altsieve.core.config import Config, ConfigError, FacesConfig, TextAreaConfig
from altsieve.core.layout import Column
from altsieve.filters.base import RuleSet
from altsieve.transforms import crop_features
from altsieve.transforms.batching import PartitionBatches
from altsieve.transforms.decode import PIXELS_FIELD, needs_pixels
from altsieve.transforms.imageops import encode
from altsieve.transforms.metrics import count_drops
from altsieve.transforms.thumbnails import set_aside

FACE_BOX = pa.struct([("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32())])
COLUMNS = (
    Column("text_area_ratio", pa.float32(), "share of the image covered by text (content.text; null: not measured)"),
    Column("face_count", pa.int32(), "frontal faces found (content.faces; null: not looked for)"),
    Column("face_boxes", pa.list_(FACE_BOX), "each face's box in the stored image's pixels"),
)

RAPIDOCR_DETECTOR = "PP-OCRv6_det_small.onnx"
# DB's post-processing (PaddleOCR's defaults): a box's mean probability threshold and its unclip ratio.
_BOX_THRESHOLD = 0.5
_UNCLIP_RATIO = 1.6
_MIN_TEXT_SIDE = 3  # px of the detector's input: smaller regions are noise (PaddleOCR drops boxes under 3 px)
# A region whose shorter side is over this share of the image's is no text line (the project's choice: on the test
# corpus DB lights up whole drawn discs, 30-45 % of the side; its text lines are 8-15 %).
_MAX_LINE_HEIGHT = 0.25
# Horizontal lines only (width >= 1.5 x height): a column of drawn stars lights up like vertical text (test corpus:
# 5 of 90 clean scenes above 0.14 without it). Vertical text (some CJK layouts) is not counted: the project's choice.
_MIN_LINE_ASPECT = 1.5
DEFAULT_CASCADE = "haarcascade_frontalface_alt.xml"


# ---------------------------------------------------------------------------------------------
# Text


def default_text_model() -> str:
    """The DB text detector inside the rapidocr wheel, found without importing rapidocr (its imports are heavy)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("content.text needs a text-detection model: pip install rapidocr==3.10.0 (its wheel "
                          f"ships {RAPIDOCR_DETECTOR}), or set content.text.model_path to a DB model (ONNX)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", RAPIDOCR_DETECTOR)
    if not os.path.isfile(path):
        raise ConfigError(f"the installed rapidocr has no {RAPIDOCR_DETECTOR} ({path}): install rapidocr==3.10.0, "
                          "or set content.text.model_path")
    return path


def _use_device(net: cv2.dnn.Net, device: str, what: str) -> None:
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ConfigError(f"{what}.device must be cpu or cuda, got {device!r}")
    if not hasattr(cv2, "cuda") or cv2.cuda.getCudaEnabledDeviceCount() == 0:
        raise ConfigError(f"{what}.device {device}: this OpenCV has no CUDA (the opencv-python-headless wheel is "
                          "CPU-only); build OpenCV with CUDA, or use cpu")
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)


class TextDetector:
    """Text-area share of images from a DB text detector (a per-pixel text-probability map)."""

    def __init__(self, config: TextAreaConfig) -> None:
        path = config.model_path or default_text_model()
        try:
            self.net = cv2.dnn.readNetFromONNX(path)
        except cv2.error as err:
            raise ConfigError(f"content.text.model_path {path} is not an ONNX model OpenCV can run: {err}") from None
        _use_device(self.net, config.device, "content.text")
        self.batched = config.device != "cpu"
        self.size, self.threshold = config.input_size, config.threshold

    def _blob(self, pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """BGR, scaled to ``size`` on the longer side, padded to multiples of 32 (the network's stride)."""
        rgb = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels
        height, width = rgb.shape[:2]
        scale = self.size / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        return cv2.cvtColor(resized, cv2.COLOR_RGB2BGR), (h, w)

    def ratios(self, images: list[np.ndarray]) -> list[float]:
        """For each RGB (or grey) uint8 image, the share of it covered by the detected text boxes.

        On a GPU the batch is one padded blob; on the CPU each image goes alone at its own size (a padded batch
        costs 2-4x more there: measured 57 ms alone against 150-270 ms an image in a batch of 30-90, 256 px).
        """
        if not images:
            return []
        blobs = [self._blob(image) for image in images]
        if not self.batched:
            return [self._ratio(self._forward([blob])[0], blob[1]) for blob in blobs]
        return [self._ratio(probability, blob[1]) for probability, blob in zip(self._forward(blobs), blobs,
                                                                                strict=True)]

    def _forward(self, blobs: list[tuple[np.ndarray, tuple[int, int]]]) -> np.ndarray:
        side_h = -(-max(h for _, (h, _) in blobs) // 32) * 32
        side_w = -(-max(w for _, (_, w) in blobs) // 32) * 32
        batch = np.zeros((len(blobs), 3, side_h, side_w), np.float32)
        for row, (bgr, (h, w)) in enumerate(blobs):
            batch[row, :, :h, :w] = ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)  # PaddleOCR
        self.net.setInput(batch)
        return self.net.forward()[:, 0]

    def _ratio(self, probability: np.ndarray, size: tuple[int, int]) -> float:
        """DB's post-processing, as area: regions above ``threshold`` whose mean probability reaches the box
        threshold (PaddleOCR: 0.5), each box grown by DB's unclip distance (area x 1.6 / perimeter), as a share."""
        h, w = size
        probability = probability[:h, :w]
        count, labels, stats, _ = cv2.connectedComponentsWithStats((probability > self.threshold).astype(np.uint8),
                                                                   connectivity=4)
        if count <= 1:
            return 0.0
        sums = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)
        mask = np.zeros((h, w), np.uint8)
        for label in range(1, count):
            x, y, bw, bh, area = (int(v) for v in stats[label])
            if min(bw, bh) < _MIN_TEXT_SIDE or sums[label] / area < _BOX_THRESHOLD:
                continue
            if min(bw, bh) > _MAX_LINE_HEIGHT * min(h, w) or bw < _MIN_LINE_ASPECT * bh:
                continue  # a large dark blob, or a column of glyph-like shapes: DB maps light both up
            grow = round(bw * bh * _UNCLIP_RATIO / (2 * (bw + bh)))
            mask[max(0, y - grow) : y + bh + grow, max(0, x - grow) : x + bw + grow] = 1
        return float(mask.mean())


# ---------------------------------------------------------------------------------------------
# Faces


class FaceDetector:
    """Frontal faces by OpenCV's Haar cascade: boxes (x, y, w, h) in the pixels given."""

    def __init__(self, config: FacesConfig) -> None:
        path = config.cascade_path or str(Path(cv2.data.haarcascades) / DEFAULT_CASCADE)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ConfigError(f"content.faces.cascade_path {path} is not an OpenCV cascade")
        self.min_size, self.min_neighbors = config.min_size, config.min_neighbors

    def boxes(self, pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
        grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        found = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        return sorted((int(x), int(y), int(w), int(h)) for x, y, w, h in (found if len(found) else []))


def content_offset(mode: str, content: tuple[int, int], stored: tuple[int, int]) -> tuple[int, int]:
    """Where the content's (0, 0) lies in the stored image (``imageops``: border pads, center_crop cuts, centred)."""
    (ch, cw), (sh, sw) = content, stored
    if mode == "border":
        return (sw - cw) // 2, (sh - ch) // 2
    if mode == "center_crop":
        return -((cw - sw) // 2), -((ch - sh) // 2)
    return 0, 0


def blur_boxes(image: bytes, boxes: list[dict[str, int]], options: Any) -> bytes:
    """The stored image with each box blurred past recognition (a Gaussian of a quarter of the box), re-encoded."""
    bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return image
    height, width = bgr.shape[:2]
    for box in boxes:
        x0, y0 = max(0, box["x"]), max(0, box["y"])
        x1, y1 = min(width, box["x"] + box["w"]), min(height, box["y"] + box["h"])
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        kernel = max(3, (min(x1 - x0, y1 - y0) // 4) | 1)
        bgr[y0:y1, x0:x1] = cv2.GaussianBlur(bgr[y0:y1, x0:x1], (kernel, kernel), 0)
    return encode(bgr, options)


# ---------------------------------------------------------------------------------------------
# The Beam stage


@functools.lru_cache(maxsize=4)
def _text_detector(settings: str) -> TextDetector:
    # Once per worker process (keyed by the settings as JSON): the network loads in ~0.2 s.
    return TextDetector(TextAreaConfig.model_validate_json(settings))


class _Content(PartitionBatches):
    def __init__(self, config: Config) -> None:
        self._config = config
        self.batch_size = config.content.text.batch_size

    def setup(self) -> None:
        config = self._config
        self._crop = config.dedup.crop.enabled
        self._text = _text_detector(config.content.text.model_dump_json()) if config.content.text.enabled else None
        self._faces = FaceDetector(config.content.faces) if config.content.faces.enabled else None
        self._blur = config.content.faces.blur
        self._options = config.image
        self._mode = config.image.resize_mode
        self._rules = RuleSet.for_stages(config, reasons.CONTENT)
        cv2.setNumThreads(1)  # one worker thread per Beam worker: Beam parallelises across records

    def wants(self, record: dict[str, Any]) -> bool:
        if record.get("reason") is not None or record.get(PIXELS_FIELD) is None:
            record.pop(PIXELS_FIELD, None)
            return False
        return True

    def run_batch(self, batch: list[dict[str, Any]]) -> None:
        pixels = [np.ascontiguousarray(record.pop(PIXELS_FIELD)) for record in batch]
        ratios = self._text.ratios(pixels) if self._text is not None else None
        for row, (record, image) in enumerate(zip(batch, pixels, strict=True)):
            if ratios is not None:
                record["text_area_ratio"] = ratios[row]
            if self._faces is not None:
                self._find_faces(record, image)
            reason = self._rules.first_reason(record)
            if reason is not None:
                record["reason"] = reason
                set_aside(record, record.pop("image", None))  # out of the shard; the audit may thumbnail it
                continue
            if self._crop:
                record[crop_features.CROP_FEATURES_FIELD] = crop_features.extract(image)

    def _find_faces(self, record: dict[str, Any], image: np.ndarray) -> None:
        dx, dy = content_offset(self._mode, image.shape[:2], (int(record["height"]), int(record["width"])))
        boxes = [{"x": x + dx, "y": y + dy, "w": w, "h": h} for x, y, w, h in self._faces.boxes(image)]
        record["face_count"] = len(boxes)
        record["face_boxes"] = boxes
        if self._blur and boxes and record.get("image") is not None:
            record["image"] = blur_boxes(record["image"], boxes, self._options)

    def finish_bundle(self):
        yield from super().finish_bundle()
        count_drops(self._rules)


class ImageContent(beam.PTransform):
    """``PCollection[record]`` -> the same records, with the measures above and the image-content verdicts."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self._config = config

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        if not needs_pixels(self._config):  # the one switch: Decode keeps the pixels exactly then
            return records
        return records | "Measure" >> beam.ParDo(_Content(self._config))
