"""Peak memory of decoding one image, on large and adversarial images the script makes itself.

    .venv/bin/python bench/bench_image_memory.py            # default ImageConfig (256 px, border)
    .venv/bin/python bench/bench_image_memory.py --resize-mode no

Each image is decoded by ``process_image`` in a fresh process (a Beam worker decodes one image at a
time per thread); the peak resident memory above the process's own before the call (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``) is printed with the time and the outcome, beside the
image's decoded raster size and the bound the configured pixel limit sets (``max_image_pixels`` x 4
bytes, an RGBA image at the limit).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

MEASURE = r"""
import json, sys, time
from altsieve.core.config import ImageConfig
from altsieve.transforms.imageops import ImageDecodeError, process_image

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
options = ImageConfig(resize_mode=sys.argv[2])
process_image(open(sys.argv[3], "rb").read(), options)  # warm: first-call imports and caches are not the image's
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
started = time.perf_counter()
try:
    out = process_image(data, options)
    outcome = f"{out.original_width}x{out.original_height} -> {out.width}x{out.height}"
except ImageDecodeError as err:
    outcome = err.reason
print(json.dumps({"peak": status("VmHWM:") - before, "seconds": time.perf_counter() - started, "outcome": outcome}))
"""


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, row: Callable[[int], bytes],
              palette: bytes | None = None, rows: int | None = None) -> bytes:
    """A PNG written row by row (never the whole raster in memory); ``rows`` < height: IDAT cut short."""
    packer = zlib.compressobj(6)
    idat = bytearray()
    for y in range(height if rows is None else rows):
        idat += packer.compress(b"\x00" + row(y))
    idat += packer.flush()
    parts = [b"\x89PNG\r\n\x1a\n",
             _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))]
    if palette is not None:
        parts.append(_chunk(b"PLTE", palette))
    parts += [_chunk(b"IDAT", bytes(idat)), _chunk(b"IEND", b"")]
    return b"".join(parts)


def ico_wrapping(png: bytes) -> bytes:
    """An .ico whose one entry declares 256x256 (0 in the directory) and holds ``png``, whatever its real size."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def tiff_bytes(array: np.ndarray, **save: object) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "TIFF", compression="tiff_adobe_deflate", **save)
    return buffer.getvalue()


def images() -> Iterator[tuple[str, Callable[[], bytes], int, int]]:
    """(name, maker, pixels decoded if accepted, bytes per pixel as Pillow holds them)."""
    rng = np.random.default_rng(0)
    noise_row = rng.integers(0, 256, 9000 * 4, dtype=np.uint8).tobytes()

    def tiff_int32() -> bytes:  # the probe: 9400x9400 int32, a few hundred KB deflated
        grid = (np.arange(9400, dtype=np.int32)[:, None] // 50 * 1000 + np.arange(9400, dtype=np.int32) // 50)
        return tiff_bytes(grid)

    def tiff_float() -> bytes:
        grid = (np.arange(8000, dtype=np.float32)[:, None] / 8000 + np.arange(8000, dtype=np.float32) / 16000)
        return tiff_bytes(grid)

    def jpeg() -> bytes:
        import cv2

        base = rng.integers(0, 256, (9000 // 8, 9000 // 8, 3), dtype=np.uint8)
        big = cv2.resize(base, (9000, 9000), interpolation=cv2.INTER_LINEAR)
        return cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()

    def webp() -> bytes:
        import cv2

        big = cv2.resize(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8), (8000, 8000))
        return cv2.imencode(".webp", big, [cv2.IMWRITE_WEBP_QUALITY, 50])[1].tobytes()

    def multipage_tiff() -> bytes:  # a small first page, a huge second one
        from PIL import Image

        buffer = io.BytesIO()
        small, huge = Image.new("L", (300, 200), 128), Image.new("L", (12000, 12000), 7)
        small.save(buffer, "TIFF", save_all=True, append_images=[huge], compression="tiff_adobe_deflate")
        return buffer.getvalue()

    yield "TIFF int32 9400x9400", tiff_int32, 9400 * 9400, 4
    yield "TIFF float32 8000x8000", tiff_float, 8000 * 8000, 4
    yield "ICO wrapping a 13000x13000 PNG", lambda: ico_wrapping(
        png_bytes(13000, 13000, 8, 0, lambda y: bytes(13000))), 13000 * 13000, 4
    yield "PNG RGBA 9000x9000 (noise rows)", lambda: png_bytes(
        9000, 9000, 8, 6, lambda y: noise_row[y % 97:][:36000].ljust(36000, b"\x01")), 9000 * 9000, 4
    yield "PNG 16-bit grey 9000x9000", lambda: png_bytes(
        9000, 9000, 16, 0, lambda y: noise_row[:18000]), 9000 * 9000, 2
    yield "PNG palette 9000x9000", lambda: png_bytes(
        9000, 9000, 8, 3, lambda y: noise_row[y % 89:][:9000], palette=bytes(range(256)) * 3), 9000 * 9000, 1
    yield "PNG declaring 100000x100000 (bomb)", lambda: png_bytes(
        100000, 100000, 8, 2, lambda y: bytes(300000), rows=2), 0, 3
    yield "PNG 9000x9000 with its data cut short", lambda: png_bytes(
        9000, 9000, 8, 2, lambda y: noise_row[:27000], rows=3000), 9000 * 9000, 4
    yield "JPEG 9000x9000", jpeg, 9000 * 9000, 4
    yield "WebP 8000x8000", webp, 8000 * 8000, 4
    yield "TIFF 300x200 page, then a 12000x12000 page", multipage_tiff, 300 * 200, 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resize-mode", default="border")
    args = parser.parse_args()
    from altsieve.core.config import ImageConfig

    budget = ImageConfig().max_image_pixels * 4
    work = Path(tempfile.mkdtemp(prefix="altsieve-imgmem-"))
    warm = work / "warm.png"
    warm.write_bytes(png_bytes(64, 48, 8, 2, lambda y: bytes(range(192))))
    print(f"resize_mode {args.resize_mode}; bound max_image_pixels x 4 = {budget / 2**20:.0f} MiB")
    print(f"{'image':<44} {'file':>9} {'raster':>9} {'peak':>9} {'peak/raster':>11} {'peak/bound':>10} "
          f"{'seconds':>8}  outcome")
    for name, make, pixels, depth in images():
        path = work / "image"
        data = make()
        path.write_bytes(data)
        done = subprocess.run([sys.executable, "-c", MEASURE, str(path), args.resize_mode, str(warm)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name:<44} failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        result = json.loads(done.stdout)
        raster = pixels * depth
        ratio = f"{result['peak'] / raster:.2f}" if raster else "-"
        print(f"{name:<44} {len(data) / 2**20:>7.2f}Mi {raster / 2**20:>7.0f}Mi {result['peak'] / 2**20:>7.0f}Mi "
              f"{ratio:>11} {result['peak'] / budget:>10.2f} {result['seconds']:>8.2f}  {result['outcome']}")


if __name__ == "__main__":
    main()
