"""Decode, normalise, resize and re-encode one fetched image; plain Python, no Beam.

The pipeline calls :func:`process_image` once per downloaded file. It is written for speed, because image work is the
CPU-bound part of the pipeline (img2dataset spends most of its time here), and the measured choices are:

* **Decode with Pillow.** It knows every web format, EXIF and XMP orientation, palettes and transparency, and it
  reads the header (size, mode, EXIF) without touching pixels, which makes the decompression-bomb check free.
* **JPEG draft mode.** ``Image.draft`` makes libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain when the
  target is at least that much smaller (RGB and grey JPEGs take simplejpeg's TurboJPEG at the same scale: the same
  pixels with less overhead, see _scaled_jpeg). Entropy decoding still dominates a JPEG, so the decode gets only ~15 %
  faster, but the resize that follows reads 4x fewer pixels and gets ~2.3x faster (640x480 -> 256 border).
  For other formats, Pillow's integer ``reduce`` plays the same role for images at least twice the target.
  Neither is used below 256x256 source pixels, where they save nothing and cost fidelity (see _PRESCALE_MIN_PIXELS).
* **Resize with cv2** (``INTER_AREA`` down, ``INTER_LANCZOS4`` up: img2dataset's defaults, so the output looks the
  same), ``INTER_AREA`` run on float32, which gives the same pixels 25 % faster than on uint8. Pillow's BOX filter
  costs about as much as uint8 ``INTER_AREA``; Pillow's LANCZOS costs 3x more.
* **Encode with cv2.imencode**: ~25 % faster than Pillow's save for a 256 px JPEG, with the same libjpeg-turbo
  defaults (4:2:0) that img2dataset writes.
* **Perceptual hash** from the already resized image: grey, area-averaged to 32x32, the 8x8 low-frequency block of
  its DCT against the median: imagehash.phash's algorithm, with the averaging and the DCT folded into two cached
  8xN matrices, at ~0.05-0.08 ms instead of imagehash's ~1.3 ms. Against imagehash.phash: on 50 synthetic photos
  and shapes within 2 bits (mean 0.5); on 144 real PNG/JPEG/GIF files mean 1.5, 90th percentile 4, worst 14 (a
  diagram that is mostly flat white, where DCT coefficients crowd the median).

Every failure surfaces as :class:`ImageDecodeError` with a code from :mod:`altsieve.core.reasons`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, TiffImagePlugin, UnidentifiedImageError

from altsieve.core import reasons
from altsieve.core.config import ImageConfig

__all__ = [
    "ImageDecodeError",
    "ProcessedImage",
    "encode",
    "hamming64",
    "int64_to_phash",
    "phash64",
    "phash_to_int64",
    "process_image",
]

# cv2's flag for each of ImageConfig's interpolation names (img2dataset's --upscale_interpolation names).
_INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
    "lanczos4": cv2.INTER_LANCZOS4,
}

# PNG is lossless, so a jpg-style quality (the default 95) means nothing for it; values 0-9 are taken as the zlib
# level exactly as img2dataset does, anything else gets this level (fast, and within a few % of level 9's size).
_PNG_DEFAULT_COMPRESSION = 3

# EPS makes Pillow run Ghostscript on load: never for untrusted bytes from the web.
_BLOCKED_FORMATS: frozenset[str] = frozenset({"EPS"})

_U64_MASK = (1 << 64) - 1

# Below this many source pixels neither JPEG draft nor Pillow's reduce is used: a full decode and resize take
# < 0.2 ms there, and on tiny images the two-step resize (scaled decode or integer reduce, then a near 1:1
# INTER_AREA) visibly departs from a one-step one (mean pixel error ~3 against img2dataset for 129x97 -> 64x48,
# against ~1 for 640x480 -> 256).
_PRESCALE_MIN_PIXELS = 256 * 256


@dataclass
class ProcessedImage:
    """One successfully processed image."""

    data: bytes  # encoded output in ImageConfig.encode_format
    width: int  # output size
    height: int
    original_width: int  # after EXIF orientation, before resize
    original_height: int
    original_format: str  # Pillow's format name: JPEG, PNG, GIF, WEBP, ...
    exif: str | None  # compact JSON object of tag name -> value (img2dataset's exif column), None when absent
    phash: int  # 64-bit perceptual hash, unsigned, in [0, 2**64); phash_to_int64 for Parquet int64 columns
    sha256: str  # hex digest of the input bytes
    content: np.ndarray | None = None  # with keep_content: uint8 RGB (or grey) [h, w(, 3)], no border or crop


class ImageDecodeError(Exception):
    """An image that cannot be turned into output; ``reason`` is one of the ``reasons.DECODE_*`` codes."""

    def __init__(self, reason: str, message: str) -> None:
        # Both go to Exception.__init__ so that the exception pickles (Beam moves errors between processes).
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# ---------------------------------------------------------------------------------------------------------------------
# Perceptual hash


def _dct_rows(n: int = 32, keep: int = 8) -> np.ndarray:
    # Rows 0..keep-1 of the unnormalised DCT-II matrix (scipy.fftpack.dct's type 2). Its scale factor 2 does not
    # matter: the hash only compares coefficients with their median.
    k = np.arange(keep, dtype=np.float64)[:, None]
    x = np.arange(n, dtype=np.float64)[None, :]
    return np.cos(np.pi * k * (2.0 * x + 1.0) / (2.0 * n))


_DCT8x32 = _dct_rows()


@functools.lru_cache(maxsize=2048)
def _area_dct(n: int) -> np.ndarray:
    """8 x n float32: INTER_AREA's averaging of n samples into 32, then the first 8 DCT rows, as one matrix.

    ``_area_dct(h) @ grey @ _area_dct(w).T`` is the 8x8 low-frequency block of the DCT of the 32x32 area-resized
    grey image, without the resize: cv2's INTER_AREA is slow for ratios that are not whole numbers (0.16 ms for a
    341x256 grey image; this is ~0.03 ms), and output sizes repeat, so the matrices are cached.
    """
    scale = n / 32.0
    edges = np.arange(33, dtype=np.float64) * scale
    src = np.arange(n, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], src[None, :] + 1.0) - np.maximum(edges[:-1, None], src[None, :])
    area = np.clip(overlap, 0.0, None) / scale  # 32 x n; each row sums to 1, as INTER_AREA's weights
    return np.ascontiguousarray((_DCT8x32 @ area).astype(np.float32))


def _phash_gray(gray: np.ndarray) -> int:
    h, w = gray.shape
    k = min(max(h, w) // 256, min(h, w) // 32)
    if k >= 2:
        # Big images ("no" resize mode): a whole-number INTER_AREA step first, which cv2 does fast (3 ms for 12 MP,
        # against 7 ms just to turn those pixels into floats).
        gray = cv2.resize(gray[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
        h, w = gray.shape
    low = _area_dct(h) @ gray.astype(np.float32) @ _area_dct(w).T  # 8x8 low-frequency block of the 2-D DCT
    # The median of the 64 as np.median takes it (the mean of the middle two), without np.median: that imports
    # numpy.ma at its first call, 0.12 s in every worker, and costs 14 us a call against 6 here.
    flat = low.reshape(-1)
    bits = flat > np.mean(np.sort(flat)[31:33])
    # Row-major, first coefficient as the most significant bit: int(str(imagehash.phash(im)), 16) gives the same.
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash64(image: np.ndarray | Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash.phash's algorithm) as an unsigned int in [0, 2**64).

    ``image`` is a PIL image or a numpy array: HxW grey, or HxWx3 / HxWx4 in RGB(A) order (alpha is ignored, as
    imagehash does). Grey is ITU-R 601 luma as Pillow's convert("L"); 32x32 by area averaging where imagehash uses
    Pillow's LANCZOS (measured agreement: see the module docstring).
    """
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        image = np.asarray(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.shape[2] == 3:
            arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
        elif arr.shape[2] == 1:
            arr = arr[:, :, 0]
        else:
            raise ValueError(f"phash64 needs 1, 3 or 4 channels, got shape {arr.shape}")
    elif arr.ndim != 2:
        raise ValueError(f"phash64 needs a 2-D or 3-D array, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"phash64 needs a non-empty image, got shape {arr.shape}")
    return _phash_gray(np.ascontiguousarray(arr))


def hamming64(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed int64 or unsigned forms both accepted)."""
    return ((a ^ b) & _U64_MASK).bit_count()


def phash_to_int64(value: int) -> int:
    """Unsigned 64-bit hash -> the signed int64 with the same bits (Parquet and Arrow have no uint64 everywhere)."""
    value &= _U64_MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def int64_to_phash(value: int) -> int:
    """Inverse of :func:`phash_to_int64`."""
    return value & _U64_MASK


# ---------------------------------------------------------------------------------------------------------------------
# EXIF

_EXIF_SKIP_TAGS = frozenset(
    {
        0x8769,  # ExifOffset: pointer to the Exif IFD, expanded below
        0x8825,  # GPSInfo pointer, expanded below
        0xA005,  # InteroperabilityOffset pointer, expanded below
        0x927C,  # MakerNote: vendor binary blob
        0x02BC,  # XMLPacket (XMP): large, and not EXIF
        0x8773,  # InterColorProfile (ICC): binary
        0x83BB,  # IPTC/NAA: binary
        0xEA1C,  # Padding (Microsoft): zero bytes
    }
)
_EXIF_MAX_VALUE_CHARS = 512  # keeps a runaway ImageDescription or UserComment from bloating the Parquet column


def _printable(text: str) -> bool:
    return text.replace("\n", " ").replace("\r", " ").replace("\t", " ").isprintable()


def _exif_value(value: Any) -> str | None:
    """exifread-like text for a value (img2dataset's exif column holds ``str(exifread value)``); None = skip it."""
    if isinstance(value, TiffImagePlugin.IFDRational):
        num, den = value.numerator, value.denominator
        text = str(num) if den == 1 else f"{num}/{den}"
    elif isinstance(value, bytes):
        if value.startswith((b"ASCII\0\0\0", b"UNICODE\0", b"\0\0\0\0\0\0\0\0")):  # UserComment's charset prefix
            value = value[8:]
        value = value.rstrip(b"\0 ")
        if not value:
            return None
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None  # a binary blob
        if not _printable(text):
            return None
    elif isinstance(value, tuple):
        parts = [_exif_value(v) for v in value[:64]]
        if any(p is None for p in parts):
            return None
        text = "[" + ", ".join(parts) + "]"  # type: ignore[arg-type]
    elif isinstance(value, str):
        text = value.replace("\0", "").strip()
        if not text or not _printable(text):  # also keeps lone surrogates out of the UTF-8 Parquet column
            return None
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        return None
    return text[:_EXIF_MAX_VALUE_CHARS]


def _exif_json(exif: Image.Exif) -> str | None:
    # Keys use exifread's "<IFD> <Tag>" names ("Image Make", "EXIF DateTimeOriginal", "GPS GPSLatitude"), which is
    # what img2dataset's exif column holds, so readers of that column keep working.
    out: dict[str, str] = {}

    def add(prefix: str, tags: dict[int, Any], names: dict[int, str]) -> None:
        for tag, value in tags.items():
            if tag in _EXIF_SKIP_TAGS:
                continue
            text = _exif_value(value)
            if text is not None:
                out[f"{prefix} {names.get(tag, f'Tag 0x{tag:04X}')}"] = text

    add("Image", dict(exif), ExifTags.TAGS)
    for ifd, prefix, names in (
        (ExifTags.IFD.Exif, "EXIF", ExifTags.TAGS),
        (ExifTags.IFD.GPSInfo, "GPS", ExifTags.GPSTAGS),
        (ExifTags.IFD.Interop, "Interoperability", ExifTags.TAGS),
    ):
        if ifd in exif:
            try:
                add(prefix, exif.get_ifd(ifd), names)
            except Exception:  # noqa: BLE001 - a broken sub-IFD loses its tags, not the image
                continue
    if not out:
        return None
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------------------------
# Error classification

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str | None:
    """Image format from the magic bytes, for the errors where Pillow could not tell."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        return "AVIF/HEIF"
    return None


def _cut_short(data: bytes, fmt: str | None) -> bool:
    """Whether a file that Pillow could not decode visibly ends before its format says it should.

    Not used for JPEG: a JPEG cut inside its headers makes Pillow raise "Truncated File Read" itself, and one cut
    after them "image file is truncated", so a JPEG that Pillow cannot identify has a garbled header, not a short one.
    """
    if fmt == "WEBP":
        # The RIFF header declares the whole file's length; Pillow's WebP decoder only says "could not create
        # decoder object" for a cut file.
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if fmt == "PNG":
        return b"IEND" not in data[-32:]
    if fmt == "GIF":
        return not data[-16:].rstrip(b"\0\r\n ").endswith(b";")
    return False


def _classify(exc: BaseException, data: bytes) -> str:
    """Reason code for an exception raised while decoding ``data``.

    Deterministic rules, in order:
    1. Pillow's decompression-bomb error (or its warning, where a warnings filter turns it into an error): BOMB.
    2. Pillow could not identify the file: UNIDENTIFIED when the magic bytes are no image format either (HTML,
       text, random bytes); otherwise TRUNCATED when a PNG, GIF or WebP lacks its end (IEND, trailer, RIFF
       length), else ERROR (e.g. a JPEG signature followed by garbage).
    3. A message with "truncated" in it (Pillow's "image file is truncated", which every JPEG/PNG/GIF cut after
       its header gives: checked by cutting files at 120 points each, and "Truncated File Read" for a JPEG cut
       inside its header), an EOFError, or a WebP shorter than its RIFF length: TRUNCATED.
    4. Anything else, including libjpeg's "broken data stream" (the decoder met invalid data, e.g. a JPEG header
       followed by garbage): ERROR.
    """
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return reasons.DECODE_BOMB
    fmt = _sniff(data)
    if isinstance(exc, UnidentifiedImageError):
        if fmt is None:
            return reasons.DECODE_UNIDENTIFIED
        return reasons.DECODE_TRUNCATED if _cut_short(data, fmt) else reasons.DECODE_ERROR
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return reasons.DECODE_TRUNCATED
    if fmt == "WEBP" and _cut_short(data, fmt):
        return reasons.DECODE_TRUNCATED
    return reasons.DECODE_ERROR


# ---------------------------------------------------------------------------------------------------------------------
# Decoding helpers


# Conversions and reductions of a large image run on row blocks of about this many pixels, so that their working
# copies stay a few MB beside the decoded raster: converting a 9400x9400 int32 TIFF whole made 1.77 GB of copies
# from a 337 MB raster (bench/bench_image_memory.py; 0.46 GB with blocks).
_BLOCK_PIXELS = 1 << 20


def _row_blocks(width: int, height: int, multiple: int = 1) -> Iterator[tuple[int, int]]:
    rows = max(multiple, _BLOCK_PIXELS // max(width, 1) // multiple * multiple)
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _to_uint8(im: Image.Image, convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``convert`` applied to the image's pixels block by block, into one uint8 array."""
    width, height = im.size
    out = np.empty((height, width), np.uint8)
    for top, bottom in _row_blocks(width, height):
        out[top:bottom] = convert(np.asarray(im.crop((0, top, width, bottom))))
    return out


def _flatten(im: Image.Image, background: tuple[int, int, int],
             extrema: tuple[float, float] | None = None) -> Image.Image | np.ndarray:
    """Loaded Pillow image -> Pillow "RGB" or "L" image, or a uint8 array for the modes Pillow cannot scale right.

    Grey sources stay grey (they are resized at 1/3 the cost and expanded to RGB at the end). ``extrema``: the
    (min, max) of a mode "I" image before it was reduced, which decide how its values are scaled.
    """
    mode = im.mode
    if mode in ("RGB", "L"):
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode == "1":
        return im.convert("L")
    elif mode.startswith("I;16"):
        # 16-bit grey (PNG, TIFF): Pillow's convert("L") clips at 255 instead of scaling; scale 0..65535 to 0..255.
        return _to_uint8(im, lambda block: ((block.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    elif mode == "I":
        low, high = extrema or im.getextrema()
        if low < 0 or high > 255:
            # 32-bit container holding 16-bit data is the common case (older Pillow, TIFF); else stretch the range.
            lo, hi = (0, 65535) if low >= 0 and high <= 65535 else (int(low), int(high))
            return _to_uint8(im, lambda block: ((block.astype(np.int64) - lo) * 255 // max(hi - lo, 1))
                             .clip(0, 255).astype(np.uint8))
        return _to_uint8(im, lambda block: block.clip(0, 255).astype(np.uint8))
    elif mode == "F":
        width, height = im.size
        peaks = (np.nanmax(b) for top, bottom in _row_blocks(width, height)
                 if not np.isnan(b := np.asarray(im.crop((0, top, width, bottom)))).all())
        scale = 255.0 if max(peaks, default=np.inf) <= 1.0 else 1.0
        return _to_uint8(im, lambda block: np.nan_to_num(block * scale).clip(0, 255).round().astype(np.uint8))

    if mode == "RGBA":
        # Composite on the background before any resize: resizing straight RGBA would bleed the (often black)
        # colour of transparent pixels into the edges.
        base = Image.new("RGB", im.size, background)
        width, height = im.size
        for top, bottom in _row_blocks(width, height):
            block = im.crop((0, top, width, bottom))
            base.paste(block, (0, top), mask=block.getchannel("A"))
        return base
    if mode == "RGB":
        return im
    # CMYK (Pillow already undoes Adobe's inverted CMYK JPEGs), YCbCr, RGBX, HSV...
    return im.convert("RGB")


def _webp_pixels(data: bytes, header: Image.Image) -> Image.Image:
    """A still WebP's pixels decoded by OpenCV's libwebp into one buffer, as a Pillow image over it (no copy).

    Why not Pillow: it decodes WebP through libwebp's animation decoder, which holds the frame several times
    over: an 8000x8000 WebP peaked at 980 MiB in 2.2 s, against 433 MiB in 1.3 s here (bench/bench_image_memory.py).
    A file OpenCV cannot decode goes to Pillow, whose error says what is wrong with it.
    """
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4) or (arr.shape[1], arr.shape[0]) != header.size:
        header.load()
        return header
    if arr.shape[2] == 4 and header.mode == "RGBA":
        cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA, dst=arr)
        mode = "RGBA"
    else:
        arr = np.ascontiguousarray(arr[:, :, :3]) if arr.shape[2] == 4 else arr
        cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=arr)
        mode = "RGB"
    return Image.frombuffer(mode, header.size, arr, "raw", mode, 0, 1)


def _scaled_jpeg(data: bytes, header: Image.Image, target: tuple[int, int]) -> np.ndarray | None:
    """An RGB or grey JPEG decoded by libjpeg-turbo (simplejpeg) at the scale Pillow's draft would pick.

    The same pixels as Pillow's drafted decode (the same library, scale, accurate DCT and fancy upsampling: checked
    by tests/test_imageops.py), for 0.3 ms less per web photo (3.4 against 3.1 ms for the whole of process_image,
    min of 8 over 600 of bench/bench_web.py's photos): no chunked load, and the array is not copied out of Pillow.
    TurboJPEG's other M/8 scales would save 0.2 ms more but moved the output further from a full decode's (mean
    pixel error 1.5 against 0.97). None, and Pillow decodes the file and names what is wrong with it, for CMYK and
    YCCK files and for any file TurboJPEG warns about (truncated, corrupt).
    """
    if header.mode not in ("RGB", "L"):
        return None
    stored_w, stored_h = header.size
    reduce_by = next(s for s in (8, 4, 2, 1) if min(stored_w // target[0], stored_h // target[1]) >= s)  # as draft
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if header.mode == "L" else "RGB",
                                     min_width=-(-stored_w // reduce_by), min_height=-(-stored_h // reduce_by))
    except ValueError:
        return None
    width, height = _whole_pixels(stored_w / reduce_by, stored_h / reduce_by, target)  # as after Pillow's draft
    if arr.shape[0] < height or arr.shape[1] < width:
        return None  # not the scale asked for: leave it to Pillow
    if min(width // target[0], height // target[1]) >= 2:
        return None  # still twice the target at 1/8: Pillow's path reduces it further first (_pixels)
    arr = arr[:height, :width]
    return np.ascontiguousarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def _reducible(block: Image.Image) -> Image.Image:
    """A block in a mode Pillow's reduce averages correctly: colour for palettes, premultiplied alpha."""
    mode = block.mode
    if mode in ("L", "RGB", "I", "F", "La", "RGBa"):
        return block
    if mode == "P":
        block = block.convert("RGBA" if "transparency" in block.info else "RGB")
        mode = block.mode
    if mode in ("RGBA", "PA"):
        # Averaging premultiplied colour, then compositing, equals compositing, then averaging (flat background).
        return block.convert("RGBA").convert("RGBa")
    if mode == "LA":
        return block.convert("La")
    if mode == "1":
        return block.convert("L")
    if mode.startswith("I;16"):
        return block.convert("I")
    return block if mode == "RGB" else block.convert("RGB")


def _reduce_in_blocks(im: Image.Image, factor: int, width: int, height: int) -> Image.Image:
    """``im.reduce(factor, box=(0, 0, width, height))`` made block by block, converting each block first.

    The same pixels as reducing the whole (blocks start at multiples of ``factor``), without a full-size converted
    copy: the decoded raster plus a few MB is the peak.
    """
    parts = [_reducible(im.crop((0, top, width, bottom))).reduce(factor)
             for top, bottom in _row_blocks(width, height, factor)]
    out = Image.new(parts[0].mode, (parts[0].size[0], sum(part.size[1] for part in parts)))
    top = 0
    for part in parts:
        out.paste(part, (0, top))
        top += part.size[1]
    return out.convert("I;16") if im.mode.startswith("I;16") else out


# ICO and ICNS files hold images whose real size only their own headers tell (an ICO directory says at most
# 256x256), and Pillow decodes the embedded PNG inside Image.open, before anyone sees its size (a 13000x13000 one:
# 645 MB of raster): the sizes are read from the raw bytes first.
def _embedded_sizes(data: bytes) -> Iterator[tuple[int, int]]:
    if data[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and len(data) >= 6:  # ICO, CUR
        count = struct.unpack("<H", data[4:6])[0]  # entries: width, height, colours, reserved, ..., size, offset
        for index in range(min(count, (len(data) - 6) // 16)):
            size, offset = struct.unpack("<II", data[6 + 16 * index + 8: 6 + 16 * index + 16])
            head = data[offset: offset + 24]
            if head[:8] == _PNG_MAGIC and len(head) >= 24:
                yield struct.unpack(">II", head[16:24])
            elif len(head) >= 12:  # a DIB: width, then twice the height (image and mask)
                width, height = struct.unpack("<ii", head[4:12])
                yield abs(width), abs(height) // 2
    elif data[:4] == b"icns":
        start = data.find(_PNG_MAGIC)
        while start >= 0:
            if data[start + 12: start + 16] == b"IHDR":
                yield struct.unpack(">II", data[start + 16: start + 24])
            start = data.find(_PNG_MAGIC, start + 8)
        start = data.find(b"ihdr")  # a JPEG 2000 image header box (22 bytes long): height, then width
        while 4 <= start <= len(data) - 12:
            if data[start - 4: start] == b"\x00\x00\x00\x16":
                height, width = struct.unpack(">II", data[start + 4: start + 12])
                yield width, height
            start = data.find(b"ihdr", start + 4)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation as ImageOps.exif_transpose applies it, on the (already resized, so cheap) array."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        arr = arr[:, ::-1]
    elif orientation == 3:  # ROTATE_180
        arr = arr[::-1, ::-1]
    elif orientation == 4:  # FLIP_TOP_BOTTOM
        arr = arr[::-1]
    elif orientation == 5:  # TRANSPOSE
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:  # ROTATE_270 (Pillow turns counter-clockwise): 90 degrees clockwise
        arr = np.rot90(arr, -1)
    elif orientation == 7:  # TRANSVERSE
        arr = arr[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:  # ROTATE_90: 90 degrees counter-clockwise
        arr = np.rot90(arr, 1)
    else:
        return arr
    return np.ascontiguousarray(arr)  # cv2 refuses negative strides


def _plan_resize(width: int, height: int, options: ImageConfig) -> tuple[tuple[int, int] | None, bool]:
    """(resized width, height) before crop/pad, or None for no resize; and whether it is a downscale.

    Mirrors img2dataset's Resizer (albumentations SmallestMaxSize / LongestMaxSize): the scale comes from the
    smaller side for keep_ratio and center_crop, from the larger side for border and keep_ratio_largest; sides are
    rounded with Python's round(); with resize_only_if_bigger an image not above image_size is left alone,
    including its crop or border.
    """
    size = options.image_size
    if options.resize_mode == "no":
        return None, False
    ref = min(width, height) if options.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    downscale = ref > size
    if options.resize_only_if_bigger and not downscale:
        return None, False
    scale = size / ref
    return (max(1, round(width * scale)), max(1, round(height * scale))), downscale


def _whole_pixels(width: float, height: float, target: tuple[int, int]) -> tuple[int, int]:
    """The pixels of a scaled decode (``width`` x ``height`` in source pixels over the scale) that are kept.

    A side that is no multiple of the scale ends in a partial pixel (1025 / 4 = 256.25 -> 257), and resizing it
    as a whole one shifts the far edge by up to a scaled pixel (mean pixel error 2.2 instead of 0.95 against full
    decode for 1025x769 -> 256x192). It is kept only when at least half a pixel: the shift stays below half a
    scaled pixel, and at most a few edge pixels are lost; never fewer pixels than the target.
    """
    return max(int(width + 0.5), target[0]), max(int(height + 0.5), target[1])


def _pixels(im: Image.Image, jpeg: bool, prescale_to: tuple[int, int] | None, options: ImageConfig) -> np.ndarray:
    """Pillow's pixels flattened to RGB or grey; with ``prescale_to``, a JPEG drafted and others reduced towards it."""
    content: tuple[int, int] | None = None  # whole pixels of a scaled decode, see below
    if jpeg and prescale_to is not None:
        # Pillow picks the largest 1/2, 1/4, 1/8 scale whose output is still >= the target on both sides.
        drafted = im.draft(None, prescale_to)
        if drafted is not None:
            box = drafted[1]
            content = _whole_pixels(box[2], box[3], prescale_to)
    im.load()
    if content is not None and content != im.size:
        im = im.crop((0, 0, *content))
    extrema = im.getextrema() if im.mode == "I" else None  # of the whole image, before any reduction
    if prescale_to is not None:
        width, height = im.size
        k = min(width // prescale_to[0], height // prescale_to[1])
        if k >= 2:
            # Not a JPEG (or beyond draft's 1/8): Pillow's integer box reduce is ~3x cheaper than cv2 INTER_AREA
            # over the full image, and the resize below averages the rest. A partial last block is kept only when
            # at least half full, for the reason given at _whole_pixels. Reduced before any conversion, block by
            # block, so that a large image costs its decoded raster and little more.
            bw, bh = min((width + k // 2) // k * k, width), min((height + k // 2) // k * k, height)
            im = _reduce_in_blocks(im, k, bw, bh)
    flat = _flatten(im, options.background, extrema)
    return np.asarray(flat) if isinstance(flat, Image.Image) else flat


def encode(bgr: np.ndarray, options: ImageConfig) -> bytes:
    """A BGR uint8 image encoded as ``options`` say (format, quality): what the stored image of a record is."""
    if options.encode_format == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, options.encode_quality]
    elif options.encode_format == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, max(1, options.encode_quality)]
    else:
        level = options.encode_quality if 0 <= options.encode_quality <= 9 else _PNG_DEFAULT_COMPRESSION
        params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    ok, buf = cv2.imencode("." + options.encode_format, bgr, params)
    if not ok:
        raise ValueError(f"cv2.imencode failed for {options.encode_format}")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def process_image(data: bytes, options: ImageConfig | None = None, keep_content: bool = False) -> ProcessedImage:
    """Decode ``data``, apply EXIF orientation, flatten to RGB, resize as img2dataset would, and re-encode.

    ``keep_content``: also keep the resized upright pixels (before any border or crop) in ``ProcessedImage.content``,
    for the stages after Decode that look at the picture (crop-robust dedup features, text and face detection).
    Raises :class:`ImageDecodeError` and nothing else.
    """
    if options is None:
        options = _DEFAULT_OPTIONS
    data = bytes(data)  # no copy for bytes; bytearray and memoryview callers get the same behaviour
    try:
        return _process(data, options, keep_content)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise anything: OSError, ValueError, SyntaxError, struct.error
        reason = _classify(exc, data)
        message = "cannot identify image file" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ImageDecodeError(reason, f"{type(exc).__name__}: {message}"[:500]) from exc


_DEFAULT_OPTIONS = ImageConfig()


def _process(data: bytes, options: ImageConfig, keep_content: bool = False) -> ProcessedImage:
    sha256 = hashlib.sha256(data).hexdigest()
    for width, height in _embedded_sizes(data):  # icons: before Image.open, which decodes them
        if width * height > options.max_image_pixels:
            raise ImageDecodeError(reasons.DECODE_BOMB, f"an icon holds a {width}x{height} image = "
                                   f"{width * height} pixels > {options.max_image_pixels}")
    im = Image.open(io.BytesIO(data))  # header only; Pillow's own bomb check (2x its limit) may raise here
    fmt = im.format or "unknown"
    if fmt in _BLOCKED_FORMATS:
        raise ImageDecodeError(reasons.DECODE_ERROR, f"format {fmt} is not accepted")
    stored_w, stored_h = im.size
    if stored_w < 1 or stored_h < 1:
        raise ImageDecodeError(reasons.DECODE_ERROR, f"empty image {stored_w}x{stored_h}")
    if stored_w * stored_h > options.max_image_pixels:
        raise ImageDecodeError(
            reasons.DECODE_BOMB, f"{stored_w}x{stored_h} = {stored_w * stored_h} pixels > {options.max_image_pixels}"
        )

    # Only a JPEG benefits from knowing the target before the pixels are decoded (draft); load the others now so that
    # a decode error is raised here and not swallowed by the EXIF guard below (PNG's getexif loads the pixels).
    draftable = fmt in ("JPEG", "MPO")
    header = im  # what Image.open read (EXIF included); the pixels may come from another decoder
    if fmt == "WEBP" and not getattr(im, "is_animated", False):
        im = _webp_pixels(data, im)
    elif not draftable:
        im.load()  # an animated image stays on its first frame, where Image.open put it
        if im.size != (stored_w, stored_h):  # a format whose pixels come with another size than its header's
            width, height = im.size
            if width * height > options.max_image_pixels:
                raise ImageDecodeError(reasons.DECODE_BOMB, f"{width}x{height} = {width * height} pixels > "
                                       f"{options.max_image_pixels}")
            stored_w, stored_h = width, height

    # Orientation before the draft: it decides which way the target box lies.
    exif: Image.Exif | None
    try:
        exif = header.getexif()
        orientation = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block loses the metadata, not the image
        exif, orientation = None, 1
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        orientation = 1
    swapped = orientation >= 5
    width, height = (stored_h, stored_w) if swapped else (stored_w, stored_h)

    target, downscale = _plan_resize(width, height, options)
    stored_target = None if target is None else ((target[1], target[0]) if swapped else target)

    prescale_to = stored_target if downscale and stored_w * stored_h >= _PRESCALE_MIN_PIXELS else None
    scaled = _scaled_jpeg(data, im, prescale_to) if prescale_to is not None and fmt == "JPEG" else None
    arr = scaled if scaled is not None else _pixels(im, draftable, prescale_to, options)
    if stored_target is not None and (arr.shape[1], arr.shape[0]) != stored_target:
        interp = _INTERPOLATIONS[options.downscale_interpolation if downscale else options.upscale_interpolation]
        if interp == cv2.INTER_AREA:
            # cv2's float32 INTER_AREA gives bit-identical output to its uint8 one and is 25 % faster (1.18 vs
            # 1.56 ms for 640x480 -> 341x256), the conversions included.
            arr = cv2.convertScaleAbs(cv2.resize(arr.astype(np.float32), stored_target, interpolation=interp))
        else:
            arr = cv2.resize(arr, stored_target, interpolation=interp)
    arr = _orient(arr, orientation)

    phash = phash64(arr)  # the whole scene, before crop or border

    bgr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR if arr.ndim == 2 else cv2.COLOR_RGB2BGR)
    size = options.image_size
    if target is not None:
        h, w = bgr.shape[:2]
        if options.resize_mode == "center_crop":
            y0, x0 = (h - size) // 2, (w - size) // 2
            bgr = bgr[y0 : y0 + size, x0 : x0 + size]
        elif options.resize_mode == "border" and (h < size or w < size):
            top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
            bottom, right = max(size - h, 0) - top, max(size - w, 0) - left
            r, g, b = (int(c) for c in options.background)
            bgr = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(b, g, r))
    bgr = np.ascontiguousarray(bgr)

    exif_json = None
    if options.extract_exif and exif:
        try:
            exif_json = _exif_json(exif)
        except Exception:  # noqa: BLE001 - metadata is optional; a malformed EXIF block must not lose the image
            exif_json = None

    return ProcessedImage(
        data=encode(bgr, options),
        width=int(bgr.shape[1]),
        height=int(bgr.shape[0]),
        original_width=width,
        original_height=height,
        original_format=fmt,
        exif=exif_json,
        phash=phash,
        sha256=sha256,
        content=arr if keep_content else None,
    )
