"""Decode + resize + encode throughput, single process: img2dataset's Resizer against the alternatives.

Generates N photo-like 640x480 JPEGs (--src to change) in memory (smooth colour fields plus sensor-like noise,
~100-150 KB at q90, close to the 131 KB mean of the measured web sample), then times each path over all of them:

  (a) img2dataset's own Resizer (cv2 decode, cv2 INTER_AREA via albumentations, cv2 encode)
  (b) Pillow decode + Pillow LANCZOS resize + Pillow encode
  (c) Pillow decode + cv2 INTER_AREA + cv2 encode
  (d) altsieve.transforms.imageops.process_image (JPEG draft, float32 INTER_AREA, cv2 encode, plus sha256, phash and
      EXIF, which the others do not compute)

Usage: python bench/bench_resize.py [--n 500] [--size 256] [--mode border] [--quality 95] [--rounds 3] [--src 640x480]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from altsieve.core.config import ImageConfig  # noqa: E402
from altsieve.transforms.imageops import process_image  # noqa: E402

_GRID: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def make_photo(rng: np.random.Generator, width: int = 640, height: int = 480) -> np.ndarray:
    """Photo-like RGB: a smooth random colour field (cubic upscale of a coarse grid), texture and sensor-like noise."""
    coarse = rng.uniform(0, 255, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    if (width, height) not in _GRID:
        _GRID[(width, height)] = tuple(np.mgrid[0:height, 0:width].astype(np.float32))  # type: ignore[assignment]
    yy, xx = _GRID[(width, height)]
    # Some mid-frequency texture so that the JPEG is not all flat gradient.
    fx, fy, phase = rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12), rng.uniform(0, 6.28)
    texture = 18.0 * np.sin(xx * fx + yy * fy + phase)
    noise = rng.standard_normal(size=(height, width, 3), dtype=np.float32) * 13.0
    return np.clip(field + texture[:, :, None] + noise, 0, 255).astype(np.uint8)


def make_jpegs(n: int, seed: int = 0, width: int = 640, height: int = 480) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(make_photo(rng, width, height)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _pad_rgb(img: Image.Image, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _target(w: int, h: int, size: int, mode: str) -> tuple[int, int]:
    scale = size / (min(w, h) if mode in ("keep_ratio", "center_crop") else max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def path_pillow(size: int, mode: str, quality: int) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im = im.resize(_target(im.width, im.height, size, mode), Image.Resampling.LANCZOS)
        if mode == "border":
            im = _pad_rgb(im, size)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    return run


def path_pillow_cv2(size: int, mode: str, quality: int) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        h, w = arr.shape[:2]
        arr = cv2.resize(arr, _target(w, h, size, mode), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
        if mode == "border":
            h, w = bgr.shape[:2]
            top, left = (size - h) // 2, (size - w) // 2
            bgr = cv2.copyMakeBorder(
                bgr, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT, value=(255, 255, 255)
            )
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()

    return run


def path_img2dataset(size: int, mode: str, quality: int) -> Callable[[bytes], bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from img2dataset.resizer import Resizer

    resizer = Resizer(
        image_size=size,
        resize_mode=mode,
        resize_only_if_bigger=False,
        upscale_interpolation="lanczos",
        downscale_interpolation="area",
        encode_quality=quality,
        encode_format="jpg",
    )

    def run(data: bytes) -> bytes:
        img_str, _w, _h, _ow, _oh, err = resizer(io.BytesIO(data))
        if err is not None:
            raise RuntimeError(err)
        return img_str

    return run


def path_altsieve(size: int, mode: str, quality: int) -> Callable[[bytes], bytes]:
    options = ImageConfig(image_size=size, resize_mode=mode, encode_format="jpg", encode_quality=quality)
    return lambda data: process_image(data, options).data


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--mode", default="border", choices=["border", "keep_ratio", "keep_ratio_largest", "center_crop"]
    )
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over all images; the median is shown")
    parser.add_argument("--src", default="640x480", help="source JPEG size, WIDTHxHEIGHT")
    args = parser.parse_args(argv)

    # img2dataset sets this inside every call; set it for all paths so that they run on equal terms.
    cv2.setNumThreads(1)

    src_w, src_h = (int(v) for v in args.src.lower().split("x"))
    t0 = time.perf_counter()
    jpegs = make_jpegs(args.n, width=src_w, height=src_h)
    sizes = [len(d) for d in jpegs]
    print(
        f"{args.n} JPEGs {src_w}x{src_h} q90: mean {statistics.mean(sizes) / 1e3:.0f} KB "
        f"(min {min(sizes) / 1e3:.0f}, max {max(sizes) / 1e3:.0f}); generated in {time.perf_counter() - t0:.1f} s"
    )
    print(f"target: {args.size} px {args.mode}, JPEG q{args.quality}, one process, cv2 threads 1\n")

    paths: dict[str, Callable[[bytes], bytes]] = {
        "(a) img2dataset Resizer": path_img2dataset(args.size, args.mode, args.quality),
        "(b) Pillow + LANCZOS + Pillow encode": path_pillow(args.size, args.mode, args.quality),
        "(c) Pillow + cv2 INTER_AREA + cv2 encode": path_pillow_cv2(args.size, args.mode, args.quality),
        "(d) altsieve process_image (draft)": path_altsieve(args.size, args.mode, args.quality),
    }
    for fn in paths.values():  # warm-up: imports, first-call allocations
        for data in jpegs[:5]:
            fn(data)

    timings: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():  # interleaved so that machine noise hits every path alike
            start = time.perf_counter()
            for data in jpegs:
                fn(data)
            timings[name].append(time.perf_counter() - start)

    base = args.n / statistics.median(timings["(a) img2dataset Resizer"])
    print(f"{'path':44s} {'images/s':>9s} {'ratio to (a)':>13s}")
    for name, runs in timings.items():
        rate = args.n / statistics.median(runs)
        print(f"{name:44s} {rate:9.0f} {rate / base:12.2f}x")

    # Same pictures out? Mean absolute difference of the decoded outputs against (a), over a sample.
    sample = jpegs[: min(50, args.n)]
    ref = [_decode(paths["(a) img2dataset Resizer"](d)) for d in sample]
    print("\nmean absolute pixel difference to (a)'s output (0-255 scale):")
    for name, fn in list(paths.items())[1:]:
        diffs = [float(np.abs(_decode(fn(d)) - r).mean()) for d, r in zip(sample, ref, strict=True)]
        print(f"  {name:42s} {statistics.mean(diffs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
