"""What the crop-robust duplicate rule (``dedup/crop.py``) needs of each image, computed once at ingest.

A crop (5-20 % off one or two sides), a re-encode, a resize, a brightness change or a small overlay
leaves most of a picture's content in place but moves its frame, which is what breaks a whole-image
pHash (half of the 5 % crops are beyond 4 bits). Two things are kept per image, in
``_candidates/{partition}_crop.npz``:

* a **signature** for candidates: a Fourier-Mellin-style descriptor (Swaminathan et al. 2006,
  "Robust and secure image hashing"): the magnitude of the 2-D Fourier transform does not move
  when the content does, and resampling it on log-polar axes turns a change of scale into a
  shift along log-radius, which a second Fourier magnitude along that axis removes. With the
  1/f profile taken out, its cosine ranks the original first for every planted copy kind on the
  test corpus (``bench/bench_dedup.py --measure-crop``); 144 float16 values, ~0.7 ms an image.
  It only proposes: the select pass takes each image's nearest neighbours by it.
* **local features** to verify a candidate: up to ``MAX_KEYPOINTS`` ORB keypoints (OpenCV) and a
  64-px colour thumbnail. ``verify`` matches the descriptors, fits a similarity transform with
  RANSAC (OpenCV ``estimateAffinePartial2D``), and accepts only when the transform is one a crop or
  resize makes (no rotation, scale within 2x), the images overlap over half of the smaller one,
  and, aligned by it, the thumbnails agree pixel by pixel (grey levels up to gain and offset, and
  chroma): drawn scenes share shapes, so ORB alone matches a red star to another red star;
  the pixel check then tells them apart (measured: distinct pairs agree on at most 0.79 of the
  pixels, true copies on 0.90 or more, overlays included).

Everything here is computed on the resized upright image before any border (the stored
image's border would differ between a crop and its original).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

SIGNATURE_DIM = 144  # 24 angles x 6 log-radius frequencies
MAX_KEYPOINTS = 96
THUMBNAIL_SIDE = 64
_FFT_SIDE = 128  # the image, halved (<= 128 px), is zero-padded to this square
_ANGLES, _RADII, _FREQS = 24, 32, 6
_POINT_SCALE = 16  # keypoint coordinates stored as uint16 in 1/16 px: images up to 4,096 px

# Verification thresholds (measured on the test corpus, plain and textured, bench/bench_dedup.py --measure-crop):
# true copies: >= 10 inliers, overlap >= 0.57, grey agreement >= 0.90, chroma agreement >= 0.91; distinct scenes that
# pass the geometry: grey agreement <= 0.79.
MIN_INLIERS = 6
MIN_OVERLAP = 0.5
MIN_GREY_AGREEMENT = 0.85
MIN_CHROMA_AGREEMENT = 0.85
MAX_ANGLE_DEGREES = 8.0
SCALE_RANGE = (0.5, 2.0)
_RATIO = 0.85  # Lowe's ratio test on the two nearest descriptors
_RANSAC_PX = 4.0
_GREY_TOLERANCE = 0.15  # of the inter-decile range of the grey levels
_CHROMA_TOLERANCE = 20  # levels of B-G and R-G


@dataclass(frozen=True)
class CropFeatures:
    """One image's signature and local features (``points`` in the pixels of the resized image)."""

    signature: np.ndarray  # float16 [SIGNATURE_DIM], unit length (all zero for a flat image)
    points: np.ndarray  # float32 [K, 2]
    descriptors: np.ndarray  # uint8 [K, 32]
    thumbnail: bytes  # JPEG of the image scaled to THUMBNAIL_SIDE on its longer side
    size: tuple[int, int]  # (height, width) of the image the points refer to


@functools.lru_cache(maxsize=64)
def _hann(height: int, width: int) -> np.ndarray:
    return np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)


def signature(grey: np.ndarray) -> np.ndarray:
    """The Fourier-Mellin-style descriptor of a grey uint8 image (see the module docstring), float32 unit vector."""
    height, width = grey.shape
    scale = min(1.0, _FFT_SIDE / max(height, width), 0.5 if max(height, width) > _FFT_SIDE else 1.0)
    small = cv2.resize(grey, (max(2, round(width * scale)), max(2, round(height * scale))),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    h, w = small.shape
    padded = np.zeros((_FFT_SIDE, _FFT_SIDE), np.float32)
    padded[:h, :w] = small * _hann(h, w)  # the window keeps the cut edges from dominating the spectrum
    spectrum = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(padded)))).astype(np.float32)
    centre = (_FFT_SIDE / 2, _FFT_SIDE / 2)
    polar = cv2.warpPolar(spectrum, (_RADII, _ANGLES * 2), centre, _FFT_SIDE / 2,
                          cv2.WARP_POLAR_LOG + cv2.INTER_LINEAR)[:_ANGLES, 3:]  # half the plane: |F| is symmetric
    polar -= polar.mean(axis=0, keepdims=True)  # the 1/f profile every picture shares
    mellin = np.abs(np.fft.fft(polar - polar.mean(axis=1, keepdims=True), axis=1))[:, 1 : _FREQS + 1]
    vector = mellin.ravel()
    vector = vector - vector.mean()
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 1e-6 else np.zeros_like(vector)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _orb() -> cv2.ORB:
    # A low FAST threshold finds corners on smooth pictures too; the 15 px patch keeps points near the edges.
    return cv2.ORB_create(nfeatures=MAX_KEYPOINTS, fastThreshold=5, edgeThreshold=15, patchSize=15)


def extract(pixels: np.ndarray) -> CropFeatures:
    """The features of an RGB (or grey) uint8 image: the resized upright image, before any border."""
    if pixels.ndim == 2:
        grey, bgr = pixels, cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    else:
        bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    keypoints, descriptors = _orb().detectAndCompute(grey, None)
    if descriptors is None:
        keypoints, descriptors = (), np.zeros((0, 32), np.uint8)
    order = np.argsort([-k.response for k in keypoints], kind="stable")  # strongest first: the votes use the top
    points = np.float32([keypoints[i].pt for i in order.tolist()]).reshape(-1, 2)
    descriptors = descriptors[order]
    height, width = grey.shape
    factor = THUMBNAIL_SIDE / max(height, width)
    thumb = cv2.resize(bgr, (max(1, round(width * factor)), max(1, round(height * factor))),
                       interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return CropFeatures(signature(grey).astype(np.float16), points, descriptors,
                        encoded.tobytes() if ok else b"", (height, width))


# ---------------------------------------------------------------------------------------------
# Verification


@functools.lru_cache(maxsize=1)
def _matcher() -> cv2.BFMatcher:
    return cv2.BFMatcher(cv2.NORM_HAMMING)


def _decode_thumbnail(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def grey_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of aligned grey levels where ``b`` is ``a`` up to gain and offset (a brightness or contrast change).

    The gain and offset are fitted by least squares, then again on the 80 % of pixels that fit best, so an
    overlay (a logo, a box of text) does not skew them; a pixel agrees within 15 % of ``a``'s inter-decile range
    (at least 4 levels).
    """
    keep = np.ones(len(a), dtype=bool)
    gain, offset = 1.0, 0.0
    for _ in range(2):
        design = np.stack([a[keep], np.ones(int(keep.sum()), np.float32)], axis=1)
        (gain, offset), *_ = np.linalg.lstsq(design, b[keep], rcond=None)
        residual = np.abs(b - (gain * a + offset))
        keep = residual <= np.percentile(residual, 80)
    low, high = np.percentile(a, (10, 90))
    tolerance = max(4.0, _GREY_TOLERANCE * float(high - low) * max(abs(float(gain)), 0.1))
    return float(np.mean(np.abs(b - (gain * a + offset)) < tolerance))


def verify(a: CropFeatures, b: CropFeatures) -> bool:
    """Whether ``b`` shows the same picture as ``a`` up to a crop, resize, re-encode, brightness or small overlay."""
    if len(a.descriptors) < MIN_INLIERS or len(b.descriptors) < MIN_INLIERS:
        return False
    matches = _matcher().knnMatch(b.descriptors, a.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < _RATIO * m[1].distance]
    if len(good) < MIN_INLIERS:
        return False
    source = b.points[[m.queryIdx for m in good]]
    target = a.points[[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                     ransacReprojThreshold=_RANSAC_PX)
    if transform is None or inliers is None or int(inliers.sum()) < MIN_INLIERS:
        return False
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    angle = float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0])))
    if not SCALE_RANGE[0] < scale < SCALE_RANGE[1] or abs(angle) > MAX_ANGLE_DEGREES:
        return False
    thumb_a, thumb_b = _decode_thumbnail(a.thumbnail), _decode_thumbnail(b.thumbnail)
    if thumb_a is None or thumb_b is None:
        return False
    return _pixels_agree(thumb_a, thumb_b, transform, a.size, b.size)


def _pixels_agree(thumb_a: np.ndarray, thumb_b: np.ndarray, transform: np.ndarray,
                  size_a: tuple[int, int], size_b: tuple[int, int]) -> bool:
    """B's thumbnail warped into A's by the fitted transform: overlap, grey and chroma agreement."""
    to_a = thumb_a.shape[1] / size_a[1]
    to_b = thumb_b.shape[1] / size_b[1]
    warp = transform.astype(np.float64).copy()
    warp[:, :2] *= to_a / to_b  # thumbnail B -> image B -> image A -> thumbnail A
    warp[:, 2] *= to_a
    shape = (thumb_a.shape[1], thumb_a.shape[0])
    warped = cv2.warpAffine(thumb_b.astype(np.float32), warp, shape, flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(thumb_b.shape[:2], np.uint8), warp, shape, flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)  # interpolated edge pixels out
    smaller = min(thumb_a.shape[0] * thumb_a.shape[1], thumb_b.shape[0] * thumb_b.shape[1] * (to_a / to_b) ** 2)
    if inside.sum() < max(16.0, MIN_OVERLAP * smaller):
        return False
    pixels_a = thumb_a.astype(np.float32)[inside]
    pixels_b = warped[inside]
    grey = grey_agreement(pixels_a.mean(axis=1), pixels_b.mean(axis=1))
    chroma_a = np.stack([pixels_a[:, 0] - pixels_a[:, 1], pixels_a[:, 2] - pixels_a[:, 1]], axis=1)
    chroma_b = np.stack([pixels_b[:, 0] - pixels_b[:, 1], pixels_b[:, 2] - pixels_b[:, 1]], axis=1)
    chroma = float(np.mean(np.abs(chroma_a - chroma_b).max(axis=1) < _CHROMA_TOLERANCE))
    return grey >= MIN_GREY_AGREEMENT and chroma >= MIN_CHROMA_AGREEMENT


# ---------------------------------------------------------------------------------------------
# The per-partition file: _candidates/{partition}_crop.npz


CROP_SUFFIX = "_crop.npz"
# The record field that carries an image's features from the ingest stage to WriteShards (never a column).
CROP_FEATURES_FIELD = "crop_features"


def pack(keys: list[str], features: list[CropFeatures]) -> dict[str, np.ndarray]:
    """Arrays for ``np.savez``: fixed slots for the keypoints, one byte blob for the thumbnails."""
    n = len(features)
    points = np.zeros((n, MAX_KEYPOINTS, 2), np.uint16)
    descriptors = np.zeros((n, MAX_KEYPOINTS, 32), np.uint8)
    counts = np.zeros(n, np.uint16)
    offsets = np.zeros(n + 1, np.int64)
    for row, item in enumerate(features):
        k = min(len(item.descriptors), MAX_KEYPOINTS)
        counts[row] = k
        points[row, :k] = np.clip(np.round(item.points[:k] * _POINT_SCALE), 0, 65535).astype(np.uint16)
        descriptors[row, :k] = item.descriptors[:k]
        offsets[row + 1] = offsets[row] + len(item.thumbnail)
    thumbnails = np.frombuffer(b"".join(item.thumbnail for item in features), np.uint8)
    signatures = (np.stack([item.signature for item in features]) if n
                  else np.zeros((0, SIGNATURE_DIM))).astype(np.float16)
    sizes = np.array([item.size for item in features], np.int32).reshape(n, 2)
    return {"key": np.array(keys, dtype=str), "signature": signatures, "points": points,
            "descriptors": descriptors, "count": counts, "thumbnails": thumbnails, "offsets": offsets,
            "size": sizes}


def unpack(arrays: dict[str, np.ndarray], row: int) -> CropFeatures:
    k = int(arrays["count"][row])
    start, end = int(arrays["offsets"][row]), int(arrays["offsets"][row + 1])
    height, width = (int(v) for v in arrays["size"][row])
    return CropFeatures(arrays["signature"][row], arrays["points"][row, :k].astype(np.float32) / _POINT_SCALE,
                        arrays["descriptors"][row, :k], arrays["thumbnails"][start:end].tobytes(), (height, width))


def crop_path(output: str, partition_id: str) -> str:
    from altsieve.core import layout

    return layout.candidate_prefix(output, partition_id) + CROP_SUFFIX


def load_arrays(path: str) -> dict[str, np.ndarray]:
    import io

    import fsspec

    with fsspec.open(path, "rb") as handle, np.load(io.BytesIO(handle.read()), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_partition(path: str, records: list[dict], previous: str | None = None) -> None:
    """The features of a partition's kept pairs, atomically (before the marker, like the rest of the partition).

    Pairs merged from an earlier attempt (``--retry-failed``) keep the features of the earlier file ``previous``.
    """
    import io

    from altsieve.core import fsutil

    kept = sorted((r for r in records if r.get("reason") is None and r.get("image") is not None),
                  key=lambda r: r["key"])
    old: dict[str, CropFeatures] = {}
    if previous is not None and any(r.get(CROP_FEATURES_FIELD) is None for r in kept) and fsutil.exists(previous):
        arrays = load_arrays(previous)
        old = {str(key): unpack(arrays, row) for row, key in enumerate(arrays["key"].tolist())}
    keys, features = [], []
    for record in kept:
        item = record.get(CROP_FEATURES_FIELD) or old.get(record["key"])
        if item is not None:  # a pair without features (ingested before the rule was on) is left to other rules
            keys.append(record["key"])
            features.append(item)
    buffer = io.BytesIO()
    np.savez(buffer, **pack(keys, features))
    fsutil.write_atomic(path, lambda handle: handle.write(buffer.getvalue()))
