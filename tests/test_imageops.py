"""Tests for altsieve.transforms.imageops: sizes as img2dataset, modes, orientation, errors, bombs, phash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import time
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from altsieve.core import reasons
from altsieve.core.config import ImageConfig
from altsieve.transforms import imageops
from altsieve.transforms.imageops import (
    ImageDecodeError,
    ProcessedImage,
    hamming64,
    int64_to_phash,
    phash64,
    phash_to_int64,
    process_image,
)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations, which would go online

MODES = ["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like RGB: smooth random colour field plus texture and noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(5, 6, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = 15.0 * np.sin(xx * rng.uniform(0.03, 0.1) + yy * rng.uniform(0.03, 0.1))
    noise = rng.normal(0.0, 6.0, size=(height, width, 3))
    return np.clip(field + texture[:, :, None] + noise, 0, 255).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str, **kwargs: object) -> bytes:
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.mode == "RGB", im.mode
    return np.asarray(im)


def reason_of(data: bytes, options: ImageConfig | None = None) -> str:
    with pytest.raises(ImageDecodeError) as info:
        process_image(data, options or ImageConfig())
    return info.value.reason


def png_with_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height with a tiny IDAT, built by hand: no pixel buffer is ever allocated."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def jpeg_640() -> bytes:
    return encode(photo(640, 480, seed=1), "JPEG", quality=90)


# ---------------------------------------------------------------------------------------------------------------------
# Sizes and pixels against img2dataset


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # albumentations inside img2dataset's Resizer
@pytest.mark.parametrize("only_if_bigger", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_sizes_and_pixels_match_img2dataset(mode: str, only_if_bigger: bool) -> None:
    resizer_mod = pytest.importorskip("img2dataset.resizer")
    size = 64
    resizer = resizer_mod.Resizer(image_size=size, resize_mode=mode, resize_only_if_bigger=only_if_bigger)
    options = ImageConfig(image_size=size, resize_mode=mode, resize_only_if_bigger=only_if_bigger)
    sizes = [(200, 150), (150, 200), (64, 64), (50, 30), (30, 50), (129, 97), (300, 40), (97, 129), (17, 1)]
    for w, h in sizes + [(640, 480), (1025, 769), (481, 1100)]:  # the last three take the JPEG draft path
        data = encode(photo(w, h, seed=w * h), "JPEG", quality=92)
        theirs, tw, th, tow, toh, err = resizer(io.BytesIO(data))
        assert err is None
        ours = process_image(data, options)
        assert (ours.width, ours.height) == (tw, th), (mode, only_if_bigger, w, h)
        assert (ours.original_width, ours.original_height) == (tow, toh) == (w, h)
        # Same picture: draft + INTER_AREA against full decode + INTER_AREA, both re-encoded as JPEG q95.
        ref = np.asarray(Image.open(io.BytesIO(theirs)).convert("RGB")).astype(np.int16)
        mad = float(np.abs(decode(ours.data).astype(np.int16) - ref).mean())
        assert mad < 3.0, (mode, only_if_bigger, w, h, mad)


def test_resize_mode_semantics(jpeg_640: bytes) -> None:
    s = 256
    border = process_image(jpeg_640, ImageConfig(resize_mode="border"))
    assert (border.width, border.height) == (s, s)
    out = decode(border.data)
    assert out[:28].min() >= 250 and out[-28:].min() >= 250  # 640x480 -> 256x192 centred: 32 px white bands
    kr = process_image(jpeg_640, ImageConfig(resize_mode="keep_ratio"))
    assert min(kr.width, kr.height) == s and (kr.width, kr.height) == (341, 256)
    krl = process_image(jpeg_640, ImageConfig(resize_mode="keep_ratio_largest"))
    assert (krl.width, krl.height) == (256, 192)
    cc = process_image(jpeg_640, ImageConfig(resize_mode="center_crop"))
    assert (cc.width, cc.height) == (s, s)
    no = process_image(jpeg_640, ImageConfig(resize_mode="no"))
    assert (no.width, no.height) == (640, 480)
    red_border = process_image(jpeg_640, ImageConfig(resize_mode="border", background=(255, 0, 0)))
    corner = decode(red_border.data)[:8, :8].reshape(-1, 3).mean(axis=0)
    assert corner[0] > 240 and corner[1] < 15 and corner[2] < 15


def test_draft_close_to_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's drafted decode (the path of JPEGs that simplejpeg leaves to Pillow) never goes below the target."""
    calls: list[tuple[object, object]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        calls.append((mode, size))
        result = original(self, mode, size)
        assert size is not None and self.size[0] >= size[0] and self.size[1] >= size[1]  # never below the target
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    monkeypatch.setattr(imageops, "_scaled_jpeg", lambda *_: None)
    for (w, h), mode, target in DRAFT_CASES:
        arr = photo(w, h, seed=w)
        data = encode(arr, "JPEG", quality=90)
        ours = decode(process_image(data, ImageConfig(resize_mode=mode, encode_format="png")).data)
        full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        ref = cv2.resize(full, target, interpolation=cv2.INTER_AREA)
        if mode == "border":
            top, left = (256 - target[1]) // 2, (256 - target[0]) // 2
            ours = ours[top: top + target[1], left: left + target[0]]
        assert ours.shape[:2] == ref.shape[:2]
        mad = float(np.abs(ours.astype(np.int16) - ref.astype(np.int16)).mean())
        assert mad < 3.0, (w, h, mode, mad)
        assert calls[-1][1] == target
    assert len(calls) == len(DRAFT_CASES)


DRAFT_CASES = [
    ((640, 480), "border", (256, 192)),  # draft 1/2
    ((1024, 768), "keep_ratio_largest", (256, 192)),  # draft 1/4 lands exactly on the target
    ((2100, 1500), "keep_ratio", (358, 256)),  # draft 1/4 then INTER_AREA
    ((1025, 769), "border", (256, 192)),  # 1/4 with a last pixel a quarter full: dropped
    ((1027, 771), "border", (256, 192)),  # 1/4 with a last pixel three quarters full: kept
    ((300, 260), "border", (256, 222)),  # no scale fits: a full decode
]


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_decoded_by_simplejpeg_is_what_pillows_draft_gives(monkeypatch: pytest.MonkeyPatch, progressive: bool,
                                                                 grey: bool, orientation: int) -> None:
    """JPEGs take simplejpeg's decoder (TurboJPEG, faster than Pillow's load): the very same output bytes."""
    taken: list[np.ndarray | None] = []
    scaled = imageops._scaled_jpeg

    def spy(*args: object) -> np.ndarray | None:
        taken.append(scaled(*args))  # type: ignore[arg-type]
        return taken[-1]

    monkeypatch.setattr(imageops, "_scaled_jpeg", spy)
    for (w, h), mode, _ in DRAFT_CASES:
        im = Image.fromarray(photo(w, h, seed=w + h))
        im = im.convert("L") if grey else im
        exif = im.getexif()
        exif[0x0112] = orientation
        data = encode(im, "JPEG", quality=90, progressive=progressive, exif=exif.tobytes())
        options = ImageConfig(resize_mode=mode, encode_format="png")
        ours = process_image(data, options)
        with monkeypatch.context() as pillow_only:
            pillow_only.setattr(imageops, "_scaled_jpeg", lambda *_: None)
            pillows = process_image(data, options)
        assert ours.data == pillows.data, (w, h, mode)
        assert (ours.width, ours.height, ours.phash, ours.exif) == (pillows.width, pillows.height, pillows.phash,
                                                                    pillows.exif)
    assert len(taken) == len(DRAFT_CASES) and all(arr is not None for arr in taken)  # none fell back to Pillow


def test_jpegs_simplejpeg_does_not_take_go_to_pillow(jpeg_640: bytes) -> None:
    header = Image.open(io.BytesIO(jpeg_640))
    assert imageops._scaled_jpeg(jpeg_640, header, (256, 192)) is not None
    cut = jpeg_640[: int(len(jpeg_640) * 0.6)]
    assert imageops._scaled_jpeg(cut, Image.open(io.BytesIO(cut)), (256, 192)) is None  # Pillow names it truncated
    huge = encode(photo(4400, 3300), "JPEG", quality=80)  # twice the target even at 1/8: Pillow reduces it further
    assert imageops._scaled_jpeg(huge, Image.open(io.BytesIO(huge)), (256, 192)) is None
    cmyk = encode(Image.fromarray(photo(640, 480)).convert("CMYK"), "JPEG")
    assert imageops._scaled_jpeg(cmyk, Image.open(io.BytesIO(cmyk)), (256, 192)) is None
    result = process_image(cmyk, ImageConfig(encode_format="png"))
    assert (result.width, result.height) == (256, 256)  # Pillow's decode, colours converted from CMYK


def test_upscale_and_resize_only_if_bigger() -> None:
    data = encode(photo(100, 50), "PNG")
    up = process_image(data, ImageConfig(image_size=200, resize_mode="keep_ratio_largest"))
    assert (up.width, up.height) == (200, 100)
    kept = process_image(data, ImageConfig(image_size=200, resize_mode="border", resize_only_if_bigger=True))
    assert (kept.width, kept.height) == (100, 50)  # as img2dataset: no resize, and no border either


# ---------------------------------------------------------------------------------------------------------------------
# Orientation, modes, formats


def _with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_exif_transpose(orientation: int) -> None:
    data = _with_orientation(photo(48, 32, seed=orientation), orientation)
    ours = process_image(data, ImageConfig(resize_mode="no", encode_format="png"))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decode(ours.data), expected)
    assert (ours.original_width, ours.original_height) == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("alpha", [False, True])
def test_still_webp_decoded_by_opencv_is_what_pillow_decodes(orientation: int, alpha: bool) -> None:
    """Still WebPs take OpenCV's decoder (a third of Pillow's memory): the same pixels, EXIF orientation, alpha."""
    arr = photo(60, 40, seed=orientation)
    im = Image.fromarray(np.dstack([arr, np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (40, 1))]) if alpha else arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    data = encode(im, "WEBP", lossless=True, exif=exif.tobytes())
    ours = process_image(data, ImageConfig(resize_mode="no", encode_format="png"))
    reference = Image.open(io.BytesIO(data))
    reference.load()  # Pillow's own decode, then the same composite on white and transpose
    flat = Image.new("RGB", reference.size, (255, 255, 255))
    flat.paste(reference, mask=reference.getchannel("A") if alpha else None)
    flat.info["exif"] = reference.info.get("exif", b"")
    expected = np.asarray(ImageOps.exif_transpose(flat))
    assert np.array_equal(decode(ours.data), expected)
    assert json.loads(ours.exif or "{}").get("Image Orientation") == str(orientation)
    header = Image.open(io.BytesIO(data))
    assert imageops._webp_pixels(data, header) is not header  # OpenCV decoded it, not the Pillow fallback


def test_exif_orientation_6_swaps_dims() -> None:
    data = _with_orientation(photo(640, 320), 6)
    result = process_image(data, ImageConfig(resize_mode="keep_ratio_largest"))
    assert (result.original_width, result.original_height) == (320, 640)
    assert (result.width, result.height) == (128, 256)
    assert json.loads(result.exif or "{}").get("Image Orientation") == "6"


@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
def test_orientation_with_draft_matches_transposed_full_decode(orientation: int) -> None:
    data = _with_orientation(photo(640, 480, seed=20 + orientation), orientation)
    result = process_image(data, ImageConfig(resize_mode="keep_ratio_largest", encode_format="png"))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    ref = cv2.resize(upright, (result.width, result.height), interpolation=cv2.INTER_AREA)
    assert (result.width, result.height) == ((192, 256) if orientation >= 5 else (256, 192))
    assert float(np.abs(decode(result.data).astype(np.int16) - ref.astype(np.int16)).mean()) < 3.0


def test_exif_json() -> None:
    im = Image.fromarray(photo(64, 48))
    exif = im.getexif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "EOS 5D"  # Model
    exif[0x011A] = 72.0  # XResolution
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal
    exif_ifd[0x927C] = bytes(range(256))  # MakerNote: binary, must be skipped
    result = process_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert result.exif is not None and ": " not in result.exif  # compact separators
    tags = json.loads(result.exif)
    assert tags["Image Make"] == "Canon" and tags["Image Model"] == "EOS 5D"
    assert tags["EXIF DateTimeOriginal"] == "2024:01:02 03:04:05"
    assert not any("MakerNote" in key for key in tags)
    assert process_image(encode(photo(64, 48), "JPEG")).exif is None
    assert process_image(encode(im, "JPEG", exif=exif.tobytes()), ImageConfig(extract_exif=False)).exif is None


def _rgba_half_transparent() -> Image.Image:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :, 2] = 200  # blue everywhere, including under the transparent half (must not show)
    rgba[:, 20:, 3] = 255
    return Image.fromarray(rgba, "RGBA")


def _palette_transparent() -> Image.Image:
    im = Image.new("P", (40, 40), 1)
    im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    im.paste(0, (0, 0, 20, 40))  # index 0 (black) on the left half, declared transparent below
    im.info["transparency"] = 0
    return im


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((220, 0, 0), (0, 0, 220))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _animated_webp() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((220, 0, 0), (0, 0, 220))]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)


def _i16() -> bytes:
    arr = np.zeros((40, 40), np.uint16)
    arr[:, 10:20] = 32896  # 128 * 257
    arr[:, 20:] = 65535
    return encode(Image.fromarray(arr), "PNG")


# name -> (bytes, expected colour of the left-middle pixel, of the right-middle pixel); None = do not check
CASES: dict[str, tuple[bytes, tuple[int, int, int] | None, tuple[int, int, int] | None]] = {
    "cmyk_jpeg": (encode(Image.new("RGB", (40, 40), (220, 0, 0)).convert("CMYK"), "JPEG"), (220, 0, 0), (220, 0, 0)),
    "palette_png": (
        encode(Image.new("RGB", (40, 40), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        (0, 200, 0),
        (0, 200, 0),
    ),
    "palette_transparent_png": (encode(_palette_transparent(), "PNG"), (255, 255, 255), (200, 0, 0)),
    "rgba_png": (encode(_rgba_half_transparent(), "PNG"), (255, 255, 255), (0, 0, 200)),
    "la_png": (encode(_rgba_half_transparent().convert("LA"), "PNG"), (255, 255, 255), None),
    "i16_png": (_i16(), (0, 0, 0), (255, 255, 255)),
    "1bit_png": (encode(Image.new("1", (40, 40), 1), "PNG"), (255, 255, 255), (255, 255, 255)),
    "l_jpeg": (encode(Image.new("L", (40, 40), 90), "JPEG"), (90, 90, 90), (90, 90, 90)),
    "animated_gif": (_animated_gif(), (220, 0, 0), (220, 0, 0)),
    "webp_lossless": (encode(Image.new("RGB", (40, 40), (10, 20, 200)), "WEBP", lossless=True), (10, 20, 200), None),
    "webp_rgba": (encode(_rgba_half_transparent(), "WEBP", lossless=True), (255, 255, 255), (0, 0, 200)),
    "animated_webp": (_animated_webp(), (220, 0, 0), (220, 0, 0)),
    "bmp": (encode(Image.new("RGB", (40, 40), (1, 2, 3)), "BMP"), (1, 2, 3), (1, 2, 3)),
    "tiff": (encode(Image.new("RGB", (40, 40), (4, 5, 6)), "TIFF"), (4, 5, 6), (4, 5, 6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_modes_and_formats_come_out_rgb(name: str) -> None:
    data, left, right = CASES[name]
    exact = process_image(data, ImageConfig(resize_mode="no", encode_format="png"))
    out = decode(exact.data)
    assert out.shape == (40, 40, 3)
    for expected, pixel in ((left, out[20, 5]), (right, out[20, 35])):
        if expected is not None:
            assert np.abs(pixel.astype(int) - np.array(expected)).max() <= 3, (name, pixel, expected)
    resized = process_image(data, ImageConfig(image_size=64, resize_mode="border"))
    assert (resized.width, resized.height) == (64, 64)
    assert decode(resized.data).shape == (64, 64, 3)


def test_i16_scaled_not_clipped() -> None:
    out = decode(process_image(_i16(), ImageConfig(resize_mode="no", encode_format="png")).data)
    assert tuple(out[0, 15]) == (128, 128, 128)  # 32896 / 65535 * 255; Pillow's convert("L") would give 255


@pytest.mark.parametrize("fmt,magic", [("jpg", b"\xff\xd8\xff"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(jpeg_640: bytes, fmt: str, magic: bytes) -> None:
    result = process_image(jpeg_640, ImageConfig(encode_format=fmt))
    assert result.data.startswith(magic)
    assert decode(result.data).shape == (256, 256, 3)
    assert result.original_format == "JPEG"


def test_sha256_is_of_input(jpeg_640: bytes) -> None:
    assert process_image(jpeg_640).sha256 == hashlib.sha256(jpeg_640).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Bombs and errors


def test_bomb_png_rejected_from_header() -> None:
    start = time.perf_counter()
    assert reason_of(png_with_header(30_000, 30_000)) == reasons.DECODE_BOMB  # Pillow's own error (> 2x its limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow warns above 1x, we refuse
        assert reason_of(png_with_header(10_000, 10_000)) == reasons.DECODE_BOMB
    assert time.perf_counter() - start < 1.0
    small = encode(photo(200, 150), "PNG")
    assert reason_of(small, ImageConfig(max_image_pixels=100 * 100)) == reasons.DECODE_BOMB
    assert process_image(small, ImageConfig(max_image_pixels=200 * 150)).width == 256


@pytest.mark.parametrize(
    "data",
    [b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>", b"", b"GIF", b"\x00" * 100],
)
def test_not_an_image_is_unidentified(data: bytes) -> None:
    assert reason_of(data) == reasons.DECODE_UNIDENTIFIED
    assert reason_of(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes()) == (
        reasons.DECODE_UNIDENTIFIED
    )


def test_truncated(jpeg_640: bytes) -> None:
    assert reason_of(jpeg_640[: int(len(jpeg_640) * 0.6)]) == reasons.DECODE_TRUNCATED
    assert reason_of(jpeg_640[:300]) == reasons.DECODE_TRUNCATED  # cut inside the header: "Truncated File Read"
    arr = photo(200, 150)
    for fmt in ("PNG", "GIF", "WEBP"):
        data = encode(arr, fmt)
        assert reason_of(data[: int(len(data) * 0.6)]) == reasons.DECODE_TRUNCATED, fmt


def _jpeg_headers(jpeg: bytes) -> bytes:
    """Everything up to the end of the start-of-scan header: a valid JPEG header with no entropy data."""
    sos = jpeg.index(b"\xff\xda")
    return jpeg[: sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")]


@pytest.mark.parametrize("seed", range(5))
def test_jpeg_header_plus_garbage_is_decode_error(jpeg_640: bytes, seed: int) -> None:
    # Deterministically DECODE_ERROR, with or without an end-of-image marker: libjpeg reports the garbage as a
    # "broken data stream", which is corrupt data, not a file cut short ("image file is truncated").
    garbage = np.random.default_rng(seed).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    header = _jpeg_headers(jpeg_640)
    assert reason_of(header + garbage) == reasons.DECODE_ERROR
    assert reason_of(header + garbage + b"\xff\xd9") == reasons.DECODE_ERROR
    # Only the JPEG signature, then garbage: TRUNCATED when the garbage happens to declare a marker segment longer
    # than the file (Pillow: "Truncated File Read"), else ERROR; never UNIDENTIFIED, since it claims to be a JPEG.
    assert reason_of(jpeg_640[:4] + garbage) in (reasons.DECODE_ERROR, reasons.DECODE_TRUNCATED)


def test_corrupt_png_is_decode_error() -> None:
    data = bytearray(encode(photo(200, 150), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 100 : idat + 400] = bytes(300)
    assert reason_of(bytes(data)) == reasons.DECODE_ERROR


def test_only_image_decode_error_escapes(jpeg_640: bytes) -> None:
    rng = np.random.default_rng(7)
    sources = [jpeg_640, encode(photo(120, 90), "PNG"), encode(photo(120, 90), "GIF"), encode(photo(120, 90), "WEBP")]
    seen: set[str] = set()
    for source in sources:
        for _ in range(40):
            data = bytearray(source)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
                data[pos] = int(rng.integers(0, 256))
            cut = int(rng.integers(len(data) // 2, len(data) + 1))
            try:
                result = process_image(bytes(data[:cut]), ImageConfig(image_size=64))
                assert isinstance(result, ProcessedImage)
            except ImageDecodeError as exc:
                assert exc.reason in {
                    reasons.DECODE_ERROR,
                    reasons.DECODE_TRUNCATED,
                    reasons.DECODE_UNIDENTIFIED,
                    reasons.DECODE_BOMB,
                }
                seen.add(exc.reason)
    assert seen  # the fuzzing did hit error paths


def test_error_pickles_and_formats() -> None:
    exc = ImageDecodeError(reasons.DECODE_TRUNCATED, "image file is truncated")
    back = pickle.loads(pickle.dumps(exc))
    assert (back.reason, back.message) == (exc.reason, exc.message)
    assert str(back) == "decode_truncated: image file is truncated"


def test_options_validated() -> None:
    for bad in (
        {"resize_mode": "stretch"},
        {"encode_format": "gif"},
        {"image_size": 0},
        {"encode_quality": 101},
        {"downscale_interpolation": "magic"},
        {"background": (0, 0, 256)},
    ):
        with pytest.raises(ValueError):
            ImageConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Perceptual hash


def test_phash_robust_to_reencode_and_resize() -> None:
    for seed in range(5):
        arr = photo(640, 480, seed=seed)
        original = process_image(encode(arr, "JPEG", quality=95)).phash
        smaller = Image.fromarray(arr).resize((320, 240), Image.Resampling.BILINEAR)
        copy = process_image(encode(smaller, "JPEG", quality=60), ImageConfig(resize_mode="keep_ratio")).phash
        assert hamming64(original, copy) <= 4, seed
        assert phash64(arr) == phash64(Image.fromarray(arr))


def test_phash_different_scenes_far_apart() -> None:
    hashes = [process_image(encode(photo(320, 240, seed=seed), "JPEG")).phash for seed in range(10, 16)]
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            assert hamming64(hashes[i], hashes[j]) >= 12, (i, j)


def test_phash_agrees_with_imagehash() -> None:
    imagehash = pytest.importorskip("imagehash")
    distances = []
    for seed in range(10):
        im = Image.fromarray(photo(400, 300, seed=100 + seed))
        distances.append(hamming64(phash64(im), int(str(imagehash.phash(im)), 16)))
    assert max(distances) <= 4 and sum(distances) / len(distances) <= 2, distances


def test_phash_int64_helpers() -> None:
    for value in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xF0F0_0000_1234_ABCD):
        signed = phash_to_int64(value)
        assert -(2**63) <= signed < 2**63
        assert int64_to_phash(signed) == value
        assert struct.unpack(">q", struct.pack(">Q", value))[0] == signed  # same bits as a C cast
    assert hamming64(2**64 - 1, 0) == 64
    assert hamming64(phash_to_int64(2**64 - 1), 0) == 64
    assert hamming64(-1, 2**64 - 1) == 0
    h = process_image(encode(photo(100, 100), "PNG")).phash
    assert 0 <= h < 2**64


def test_every_configurable_interpolation_resizes() -> None:
    from altsieve.core.config import INTERPOLATIONS

    data = encode(photo(120, 90), "PNG")
    for name in INTERPOLATIONS:  # the config's choices and imageops' cv2 flags are one list
        down = process_image(data, ImageConfig(image_size=60, downscale_interpolation=name))
        up = process_image(data, ImageConfig(image_size=240, upscale_interpolation=name))
        assert (down.width, up.width) == (60, 240)


# ---------------------------------------------------------------------------------------------------------------------
# Memory: bounded by the pixel limit before decoding (bench/bench_image_memory.py measures the peaks)


def _ico(png: bytes, side: int = 0) -> bytes:
    """An .ico of one entry declaring ``side`` (0 means 256) that holds ``png``, whatever its real size."""
    entry = struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def test_icon_wrapping_a_huge_png_is_refused_before_decoding() -> None:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow must not even open it
        assert reason_of(_ico(png_with_header(13_000, 13_000))) == reasons.DECODE_BOMB
    assert time.perf_counter() - start < 0.5
    icon = process_image(_ico(encode(photo(48, 48), "PNG"), side=48), ImageConfig(image_size=32))
    assert (icon.original_width, icon.original_height, icon.original_format, icon.width) == (48, 48, "ICO", 32)


# Traced (numpy) peaks measured for this 2000x2000 image: before, 65 MB in both modes; now 1.7 MB resized, and
# 24 MB kept at full size, most of it the 12 MB output itself (see bench/bench_image_memory.py for process RSS).
@pytest.mark.parametrize(("resize_mode", "limit_mb"), [("border", 4), ("no", 30)])
def test_large_int32_tiff_costs_no_whole_image_copies(resize_mode: str, limit_mb: int) -> None:
    """Conversions run block by block: numpy's working memory stays far below the image's (16 MB raster here).

    Before, the mode "I" conversion made whole-image int64 copies: 9400x9400 took 1.77 GB for a 337 MB raster.
    """
    import tracemalloc

    grid = (np.arange(2000, dtype=np.int32)[:, None] * 5000 + np.arange(2000, dtype=np.int32)).astype(np.int32)
    data = encode(Image.fromarray(grid), "TIFF", compression="tiff_adobe_deflate")
    tracemalloc.start()
    try:
        result = process_image(data, ImageConfig(resize_mode=resize_mode, encode_format="png"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.original_width, result.original_height) == (2000, 2000)
    assert peak < limit_mb * 2**20, f"{peak / 2**20:.1f} MB traced"
    # The values are stretched over the whole image's range, as a whole-image conversion did (the corners of the
    # resized one are averages of a few source pixels).
    out = decode(result.data).astype(int)
    assert out[0, 0, 0] <= 2 and out[-1, -1, 0] >= 253


def test_reducing_in_blocks_equals_reducing_whole() -> None:
    from altsieve.transforms.imageops import _reduce_in_blocks

    rgb = Image.fromarray(photo(1200, 1000, seed=3))  # two row blocks of 1M pixels
    for mode in ("RGB", "L", "P"):
        im = rgb.convert(mode) if mode != "P" else rgb.quantize(64)
        whole = (im.convert("RGB") if mode == "P" else im).reduce(3, box=(0, 0, 1200, 999))
        assert np.array_equal(np.asarray(_reduce_in_blocks(im, 3, 1200, 999)), np.asarray(whole)), mode
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(1200)[None, :] % 256 * np.ones((1000, 1))).astype(np.uint8)))
    by_blocks = np.asarray(_reduce_in_blocks(rgba, 4, 1200, 1000).convert("RGBA"), np.int16)
    whole = np.asarray(rgba.convert("RGBa").reduce(4).convert("RGBA"), np.int16)
    assert np.abs(by_blocks - whole).max() <= 1
