"""A noisy-web corpus with a truth table: every pair's category is known, so pipeline tests can check each verdict.

``generate_corpus`` only *plans* the corpus (captions, labels, what the server answers for each path);
image bytes are rendered lazily when ``corpus.responses[path]`` is first read, and kept in a bounded
LRU cache keyed by the image recipe. Why: 100k pairs plan in a couple of seconds, and memory stays
bounded even for textured 640x480 images (~110 KB each). Rendering is deterministic in the recipe,
so a body rendered twice (cache eviction) is byte-identical, and exact duplicates share one recipe.

Labels are listed in ``LABELS``; ``EXPECTED_REASON`` maps the labels whose outcome does not depend on
rule settings to the reason code a pipeline with default fetch/decode settings should report.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import math
import os
import random
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from altsieve.core import reasons
from altsieve.testcorpus.scenes import (
    SceneSpec,
    all_captions,
    caption_for,
    draw_scene,
    mismatched_caption,
    random_scene,
)

# Labels in priority order: when a small corpus cannot hold all of them, the last ones are left out.
LABELS: tuple[str, ...] = (
    "clean",
    "mismatched_caption",
    "exact_duplicate",
    "near_dup_reencoded",
    "near_dup_resized",
    "near_dup_cropped",
    "near_dup_brightened",
    "tiny",
    "extreme_aspect",
    "corrupt",
    "truncated",
    "html_as_image",
    "http_404",
    "http_500",
    "http_429",
    "rate_limited_then_ok",
    "transient_then_ok",
    "slow",
    "stalled",
    "redirect_chain",
    "redirect_loop_too_many",
    "redirect_private",
    "robots_noai",
    "robots_noimageai_agent",
    "exif_rotated",
    "cmyk_jpeg",
    "palette_png",
    "alpha_png",
    "animated_gif",
    "webp",
    "bomb",
    "boilerplate_caption",
    "shared_caption",
    "many_captions_image",
    "empty_caption",
    "bad_url",
    "ftp_url",
)
# Labels a corpus holds only when ``label_counts`` asks for them (the default mix, and so every figure measured
# on it, stays as it was): the planted kinds of the image-content and crop-robust rules.
OPT_IN_LABELS: tuple[str, ...] = (
    "near_dup_cropped_side",  # 5-20 % cut off one or two sides (any), the rest of the original
    "near_dup_overlay",  # a small box with text laid over a corner (a logo, a watermark, a price tag)
    "text_overlay",  # a scene with large text lines over a good part of it (T-MARS's text-only images)
    "face",  # a scene with a drawn face (the face rule and blurring)
)
ALL_LABELS: tuple[str, ...] = (*LABELS, *OPT_IN_LABELS)

# (minimum count, share of the corpus) per non-clean label; "clean" takes the rest.
# Stalled/slow/bomb are rarer so that a 100k benchmark does not spend its time waiting on them.
_LABEL_RATES: dict[str, tuple[int, float]] = {
    "mismatched_caption": (2, 0.03),
    "exact_duplicate": (2, 0.02),
    "near_dup_reencoded": (1, 0.01),
    "near_dup_resized": (1, 0.01),
    "near_dup_cropped": (1, 0.01),
    "near_dup_brightened": (1, 0.01),
    "tiny": (1, 0.01),
    "extreme_aspect": (1, 0.01),
    "corrupt": (1, 0.01),
    "truncated": (1, 0.01),
    "html_as_image": (1, 0.01),
    "http_404": (1, 0.01),
    "http_500": (1, 0.005),
    "http_429": (1, 0.005),
    "rate_limited_then_ok": (1, 0.005),
    "transient_then_ok": (1, 0.005),
    "slow": (1, 0.002),
    "stalled": (1, 0.001),
    "redirect_chain": (1, 0.005),
    "redirect_loop_too_many": (1, 0.002),
    "redirect_private": (1, 0.002),
    "robots_noai": (1, 0.005),
    "robots_noimageai_agent": (1, 0.005),
    "exif_rotated": (1, 0.01),
    "cmyk_jpeg": (1, 0.005),
    "palette_png": (1, 0.01),
    "alpha_png": (1, 0.01),
    "animated_gif": (1, 0.005),
    "webp": (1, 0.01),
    "bomb": (1, 0.001),
    "boilerplate_caption": (1, 0.01),
    "shared_caption": (3, 0.005),
    "many_captions_image": (3, 0.01),
    "empty_caption": (1, 0.005),
    "bad_url": (1, 0.005),
    "ftp_url": (1, 0.005),
    **{label: (0, 0.0) for label in OPT_IN_LABELS},
}
# Labels that point at an earlier clean pair (their ``duplicate_of``): the first pair is always clean.
_NEEDS_CLEAN_ORIGINAL = frozenset(
    {"exact_duplicate", "near_dup_reencoded", "near_dup_resized", "near_dup_cropped", "near_dup_brightened",
     "near_dup_cropped_side", "near_dup_overlay"}
)
# At least this share of a corpus stays clean, however small it is.
_MIN_CLEAN_SHARE = 0.3

# Outcome a pipeline with default fetch/decode settings must report; labels whose verdict depends on
# rule settings or on models (mismatched, near duplicates, boilerplate, shared captions, many captions) are absent.
EXPECTED_REASON: dict[str, str | None] = {
    "clean": None,
    "exact_duplicate": reasons.DUPLICATE_SHA256,
    "tiny": reasons.IMAGE_TOO_SMALL,
    "extreme_aspect": reasons.IMAGE_ASPECT_RATIO,
    "corrupt": reasons.DECODE_ERROR,
    "truncated": reasons.DECODE_TRUNCATED,
    "html_as_image": reasons.DECODE_UNIDENTIFIED,
    "http_404": reasons.DOWNLOAD_NOT_FOUND,
    "http_500": reasons.DOWNLOAD_SERVER_ERROR,
    "http_429": reasons.DOWNLOAD_RATE_LIMITED,
    "rate_limited_then_ok": None,
    "transient_then_ok": reasons.DOWNLOAD_SERVER_ERROR,  # on the first run; None after a --retry-failed run
    "slow": None,
    "stalled": reasons.DOWNLOAD_TIMEOUT,
    "redirect_chain": None,
    "redirect_loop_too_many": reasons.DOWNLOAD_TOO_MANY_REDIRECTS,
    "redirect_private": reasons.DOWNLOAD_BLOCKED_ADDRESS,
    "robots_noai": reasons.DOWNLOAD_ROBOTS_OPTOUT,
    "robots_noimageai_agent": reasons.DOWNLOAD_ROBOTS_OPTOUT,
    "exif_rotated": None,
    "cmyk_jpeg": None,
    "palette_png": None,
    "alpha_png": None,
    "animated_gif": None,
    "webp": None,
    "bomb": reasons.DECODE_BOMB,
    "empty_caption": reasons.CAPTION_EMPTY,
    "bad_url": reasons.URL_INVALID,
    "ftp_url": reasons.URL_SCHEME_NOT_ALLOWED,
}

BOILERPLATE_CAPTIONS: tuple[str, ...] = ("image", "IMG_1234.jpg", "1920x1080", "图片", "查看源网页")
SHARED_CAPTIONS: tuple[str, ...] = (
    "Free stock photo download",
    "Click here to enlarge",
    "Royalty free image",
    "Photo courtesy of the author",
)
BAD_URL = "not a url"
FTP_URL = "ftp://example.com/a.jpg"
PRIVATE_REDIRECT_URL = "http://169.254.169.254/latest/meta-data/"
ROBOTS_NOAI = "noai"
ROBOTS_NOIMAGEAI_AGENT = "altsieve: noimageai"
TINY_SIZE = (40, 30)
EXTREME_ASPECT_SIZE = (900, 100)
BOMB_SIZE = (30000, 30000)
REDIRECT_CHAIN_HOPS = 3
REDIRECT_LOOP_HOPS = 12
TRANSIENT_FAILURES = 5
SLOW_DELAY_S = 0.5
STALL_S = 30.0
INPUT_FORMATS: tuple[str, ...] = ("parquet", "csv", "tsv", "jsonl")

_HTML_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Photo gallery</title></head>\n"
    b"<body><h1>Oops</h1><p>This page is not an image, whatever its Content-Type says.</p></body></html>\n"
)
_CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


# ---------------------------------------------------------------------------------------------
# Public records


@dataclass(slots=True)
class CorpusPair:
    """One input row and its truth. ``raw_url``, when set, is written verbatim instead of base_url + path."""

    pair_id: int
    path: str
    caption: str
    label: str
    language: str
    duplicate_of: int | None = None
    expected_width: int | None = None
    expected_height: int | None = None
    image_format: str | None = None
    raw_url: str | None = None


@dataclass(slots=True)
class ServedResponse:
    """What the server answers for one path (see ``server.CorpusServer``).

    The first ``fail_first`` requests of the path get ``fail_status`` with ``fail_headers``; later ones
    get ``status``/``headers``/``body``. ``redirect_to`` becomes the Location header (absolute URL or
    server path). ``delay_s`` spreads the body over that time; ``stall_s`` sends the headers and a
    little body, then waits that long before the rest.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    fail_first: int = 0
    fail_status: int = 503
    fail_headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    stall_s: float = 0.0
    redirect_to: str | None = None


@dataclass(frozen=True, slots=True)
class ImageRecipe:
    """Everything needed to render an image body; hashable so equal recipes share one cache entry.

    ``width``/``height`` are the drawn (upright) size; ``kind`` is the encoding, ``transform`` a
    near-duplicate edit and ``damage`` a deliberate corruption of the encoded bytes.
    """

    spec: SceneSpec
    width: int
    height: int
    kind: str = "jpeg"  # jpeg, cmyk_jpeg, exif_rotated, palette_png, alpha_png, gif, webp
    quality: int = 90
    # "", resize75, crop5, bright110, crop:L,T,R,B (per mille of the width/height cut off each side),
    # overlay:CORNER (a small text box in corner 0-3)
    transform: str = ""
    damage: str = ""  # "", corrupt, truncate60
    texture: bool = False
    decoration: str = ""  # "", text (draw_text_overlay), face (draw_face): drawn on the scene, seeded by its variant


# ---------------------------------------------------------------------------------------------
# Rendering


def _scaled(size: int) -> int:
    return max(1, round(size * 0.75))


def _crop_margin(size: int) -> int:
    # 5 % crop in total, split over both sides so the subject stays centred.
    return round(size * 0.025)


def _crop_box(transform: str, width: int, height: int) -> tuple[int, int, int, int]:
    """``crop:L,T,R,B`` (per mille of the side cut off the left, top, right, bottom) as a Pillow box."""
    left, top, right, bottom = (int(v) for v in transform.removeprefix("crop:").split(","))
    return (round(width * left / 1000), round(height * top / 1000),
            width - round(width * right / 1000), height - round(height * bottom / 1000))


OVERLAY_TEXTS: tuple[str, ...] = ("(c) photo", "SALE", "stock", "logo", "www.shop")
TEXT_OVERLAY_LINES: tuple[str, ...] = ("BIG SALE TODAY", "50% OFF ALL", "CALL 555 0199", "FREE SHIPPING",
                                       "NEW ARRIVALS", "BEST PRICES")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no file outside the package


def _overlay(image: Image.Image, corner: int, seed: int) -> Image.Image:
    """A small box with a word, as a logo or watermark sits: ~22 % of the width, ~9 % of the height, in a corner."""
    width, height = image.size
    box_w, box_h = max(8, round(width * 0.22)), max(6, round(height * 0.09))
    x0 = round(width * 0.03) if corner in (0, 3) else width - box_w - round(width * 0.03)
    y0 = round(height * 0.03) if corner in (0, 1) else height - box_h - round(height * 0.03)
    out = image.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=(250, 250, 250))
    text = OVERLAY_TEXTS[seed % len(OVERLAY_TEXTS)]
    draw.text((x0 + 3, y0 + 1), text, fill=(20, 20, 20), font=_font(max(6, box_h - 4)))
    return out


def draw_text_overlay(image: Image.Image, seed: int) -> Image.Image:
    """Two or three lines of large text over the scene, as on ads and memes (T-MARS drops such pairs)."""
    rng = random.Random(seed)
    width, height = image.size
    out = image.copy()
    draw = ImageDraw.Draw(out)
    lines = rng.sample(TEXT_OVERLAY_LINES, rng.randint(2, 3))
    size = max(8, round(height * 0.11))
    top = round(height * rng.uniform(0.1, 0.3))
    for index, line in enumerate(lines):
        draw.text((round(width * 0.06), top + index * round(size * 1.5)), line, fill=(255, 255, 255),
                  font=_font(size), stroke_width=max(1, size // 10), stroke_fill=(0, 0, 0))
    return out


def draw_face(image: Image.Image, seed: int) -> Image.Image:
    """A drawn frontal face (skin-tone oval, darker eye sockets and brows, lighter nose bridge, a mouth): the
    light and dark pattern a frontal-face cascade looks for. About 40 % of the shorter side, at a random place."""
    rng = random.Random(seed)
    width, height = image.size
    size = min(width, height) * rng.uniform(0.35, 0.5)
    cx = rng.uniform(size * 0.6, width - size * 0.6)
    cy = rng.uniform(size * 0.7, height - size * 0.7)
    out = image.copy()
    draw = ImageDraw.Draw(out)
    skin = rng.choice(((224, 180, 150), (198, 150, 110), (150, 105, 75), (240, 200, 170)))
    dark = tuple(max(0, c - 120) for c in skin)
    half_w, half_h = size * 0.5, size * 0.65
    draw.ellipse((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=skin)
    for side in (-1, 1):
        ex, ey = cx + side * size * 0.2, cy - size * 0.1
        draw.ellipse((ex - size * 0.11, ey - size * 0.055, ex + size * 0.11, ey + size * 0.055), fill=dark)
        draw.rectangle((ex - size * 0.14, ey - size * 0.17, ex + size * 0.12, ey - size * 0.12), fill=dark)
    mouth_y = cy + size * 0.3
    draw.ellipse((cx - size * 0.17, mouth_y - size * 0.05, cx + size * 0.17, mouth_y + size * 0.05), fill=dark)
    nose = tuple(min(255, c + 15) for c in skin)
    draw.rectangle((cx - size * 0.04, cy - size * 0.1, cx + size * 0.04, cy + size * 0.15), fill=nose)
    return out


def _transform(image: Image.Image, transform: str) -> Image.Image:
    width, height = image.size
    if transform.startswith("crop:"):
        return image.crop(_crop_box(transform, width, height))
    if transform.startswith("overlay:"):
        return _overlay(image, int(transform.removeprefix("overlay:")), width * 31 + height)
    if transform == "resize75":
        return image.resize((_scaled(width), _scaled(height)), Image.Resampling.LANCZOS)
    if transform == "crop5":
        dx, dy = _crop_margin(width), _crop_margin(height)
        return image.crop((dx, dy, width - dx, height - dy))
    if transform == "bright110":
        return ImageEnhance.Brightness(image).enhance(1.1)
    return image


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _encode_exif_rotated(image: Image.Image, quality: int) -> bytes:
    # Stored sideways; Orientation 6 ("rotate 90 CW to display") makes exif_transpose bring it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=quality, exif=exif)


def _encode_alpha_png(image: Image.Image) -> bytes:
    # Transparent rounded corners: shapes sit in the halves/centre, so no caption fact is hidden.
    width, height = image.size
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width - 1, height - 1), radius=min(width, height) // 5, fill=255)
    rgba = image.convert("RGBA")
    rgba.putalpha(mask)
    return _save(rgba, "PNG")


def _encode_gif(image: Image.Image, recipe: ImageRecipe) -> bytes:
    # Three frames of the same scene with different jitter: an animation, not three scenes.
    frames = [image] + [
        draw_scene(replace(recipe.spec, variant=recipe.spec.variant + k), recipe.width, recipe.height, recipe.texture)
        for k in (1, 2)
    ]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)


def _encode(image: Image.Image, recipe: ImageRecipe) -> bytes:
    kind = recipe.kind
    if kind == "jpeg":
        return _save(image, "JPEG", quality=recipe.quality)
    if kind == "cmyk_jpeg":
        return _save(image.convert("CMYK"), "JPEG", quality=recipe.quality)
    if kind == "exif_rotated":
        return _encode_exif_rotated(image, recipe.quality)
    if kind == "palette_png":
        return _save(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")
    if kind == "alpha_png":
        return _encode_alpha_png(image)
    if kind == "gif":
        return _encode_gif(image, recipe)
    if kind == "webp":
        return _save(image, "WEBP", quality=recipe.quality)
    raise ValueError(f"unknown image kind {kind!r}")


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length) of each header segment up to and including SOS."""
    offset = 2
    while offset + 4 <= len(data):
        marker = data[offset + 1]
        length = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        yield marker, offset, length
        if marker == 0xDA:
            return
        offset += 2 + length


def _corrupt_jpeg(data: bytes, seed: int) -> bytes:
    """Keep SOI..SOS so Pillow identifies a JPEG of the right size, but make decoding fail for sure.

    A bogus Huffman table is a fatal libjpeg error (random entropy data alone sometimes decodes
    with mere warnings); the entropy-coded data is replaced by garbage as well.
    """
    out = bytearray(data)
    segments = list(_jpeg_segments(data))
    dht = next(offset for marker, offset, _ in segments if marker == 0xC4)
    out[dht + 5 : dht + 21] = b"\xff" * 16  # code counts summing far past 256
    _, sos, sos_len = segments[-1]
    start = sos + 2 + sos_len
    garbage = random.Random(seed).randbytes(len(data) - start - 2)
    return bytes(out[:start]) + garbage + b"\xff\xd9"


def _damage(data: bytes, recipe: ImageRecipe) -> bytes:
    if recipe.damage == "truncate60":
        return data[: int(len(data) * 0.6)]
    if recipe.damage == "corrupt":
        return _corrupt_jpeg(data, recipe.spec.variant)
    return data


def render_image(recipe: ImageRecipe) -> bytes:
    """Encoded bytes for ``recipe``; deterministic, so equal recipes give identical bytes."""
    image = draw_scene(recipe.spec, recipe.width, recipe.height, recipe.texture)
    if recipe.decoration == "text":
        image = draw_text_overlay(image, recipe.spec.variant)
    elif recipe.decoration == "face":
        image = draw_face(image, recipe.spec.variant)
    image = _transform(image, recipe.transform)
    return _damage(_encode(image, recipe), recipe)


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


@functools.cache
def bomb_png(width: int = BOMB_SIZE[0], height: int = BOMB_SIZE[1]) -> bytes:
    """A PNG whose IHDR declares width x height RGB pixels with a tiny IDAT: the pixels are never allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 256, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def image_format(recipe: ImageRecipe) -> str:
    """Pillow's format name for the recipe's bytes."""
    kind = recipe.kind
    if kind in ("jpeg", "cmyk_jpeg", "exif_rotated"):
        return "JPEG"
    if kind in ("palette_png", "alpha_png"):
        return "PNG"
    return {"gif": "GIF", "webp": "WEBP"}[kind]


def expected_size(recipe: ImageRecipe) -> tuple[int, int] | None:
    """Upright size of the decoded image, or None when the bytes do not decode."""
    if recipe.damage:
        return None
    width, height = recipe.width, recipe.height
    if recipe.transform == "resize75":
        return _scaled(width), _scaled(height)
    if recipe.transform == "crop5":
        return width - 2 * _crop_margin(width), height - 2 * _crop_margin(height)
    if recipe.transform.startswith("crop:"):
        x0, y0, x1, y1 = _crop_box(recipe.transform, width, height)
        return x1 - x0, y1 - y0
    return width, height


# ---------------------------------------------------------------------------------------------
# Served responses


@dataclass(frozen=True, slots=True)
class _ResponsePlan:
    """A ``ServedResponse`` before rendering: the body is either literal bytes or an image recipe."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | ImageRecipe = b""
    fail_first: int = 0
    fail_status: int = 503
    fail_headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    stall_s: float = 0.0
    redirect_to: str | None = None


class LazyResponses(Mapping[str, ServedResponse]):
    """path -> ServedResponse, rendering image bodies on access (LRU-cached by recipe; thread-safe)."""

    def __init__(self, plans: dict[str, _ResponsePlan], cache_size: int = 2048) -> None:
        self._plans = plans
        # lru_cache is thread-safe; two threads may render the same recipe once each, which is harmless.
        self._render = functools.lru_cache(maxsize=cache_size)(render_image)

    def __getitem__(self, path: str) -> ServedResponse:
        plan = self._plans[path]
        body = plan.body if isinstance(plan.body, bytes) else self._render(plan.body)
        return ServedResponse(
            status=plan.status,
            headers=dict(plan.headers),
            body=body,
            fail_first=plan.fail_first,
            fail_status=plan.fail_status,
            fail_headers=dict(plan.fail_headers),
            delay_s=plan.delay_s,
            stall_s=plan.stall_s,
            redirect_to=plan.redirect_to,
        )

    def __contains__(self, path: object) -> bool:
        return path in self._plans

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)


def _image_plan(
    recipe: ImageRecipe, extra_headers: tuple[tuple[str, str], ...] = (), **behaviour: object
) -> _ResponsePlan:
    headers = (("Content-Type", _CONTENT_TYPES[image_format(recipe)]), *extra_headers)
    return _ResponsePlan(headers=headers, body=recipe, **behaviour)  # type: ignore[arg-type]


def _text_plan(status: int, text: str, extra_headers: tuple[tuple[str, str], ...] = ()) -> _ResponsePlan:
    headers = (("Content-Type", "text/plain; charset=utf-8"), *extra_headers)
    return _ResponsePlan(status=status, headers=headers, body=text.encode())


def _redirect_plan(location: str) -> _ResponsePlan:
    return _ResponsePlan(status=302, headers=(("Content-Type", "text/plain; charset=utf-8"),), body=b"Found",
                         redirect_to=location)


# ---------------------------------------------------------------------------------------------
# The corpus


@dataclass
class TestCorpus:
    """Pairs in input order, what the server answers per path, and writers for the input and truth files."""

    __test__: ClassVar[bool] = False  # the name starts with "Test": keep pytest from collecting it

    pairs: list[CorpusPair]
    responses: Mapping[str, ServedResponse]
    seed: int = 0
    image_size: tuple[int, int] = (320, 240)
    texture: bool = False

    def url_for(self, pair: CorpusPair, base_url: str) -> str:
        """The input ``url`` value of ``pair`` for a server at ``base_url``."""
        return pair.raw_url if pair.raw_url is not None else base_url.rstrip("/") + pair.path

    def pairs_with_label(self, label: str) -> list[CorpusPair]:
        return [pair for pair in self.pairs if pair.label == label]

    def label_counts(self) -> dict[str, int]:
        """Every default label (0 when absent) and the opt-in labels the corpus holds."""
        counts = dict.fromkeys(LABELS, 0)
        for pair in self.pairs:
            counts[pair.label] = counts.get(pair.label, 0) + 1
        return counts

    def truth_table(self) -> pa.Table:
        """One row per pair, every ``CorpusPair`` field as a column, in input order."""
        columns = {name: [getattr(pair, name) for pair in self.pairs] for name in _TRUTH_SCHEMA.names}
        return pa.table(columns, schema=_TRUTH_SCHEMA)

    def input_table(self, base_url: str) -> pa.Table:
        """The input rows: ``url``, ``caption``, ``source_id`` (string, carried to the output)."""
        return pa.table(
            {
                "url": [self.url_for(pair, base_url) for pair in self.pairs],
                "caption": [pair.caption for pair in self.pairs],
                "source_id": [f"src-{pair.pair_id}" for pair in self.pairs],
            },
            schema=_INPUT_SCHEMA,
        )

    def write_input(self, path: str, base_url: str, fmt: str = "parquet") -> None:
        """Write the input URL list; a path ending in ``.gz`` gzips the whole file (for every format)."""
        if fmt not in INPUT_FORMATS:
            raise ValueError(f"unsupported input format {fmt!r}; expected one of {INPUT_FORMATS}")
        table = self.input_table(base_url)
        with _open_output(path) as sink:
            _WRITERS[fmt](table, sink)

    def write_truth(self, path: str) -> None:
        pq.write_table(self.truth_table(), path)


_TRUTH_SCHEMA = pa.schema(
    [
        ("pair_id", pa.int64()),
        ("path", pa.string()),
        ("caption", pa.string()),
        ("label", pa.string()),
        ("language", pa.string()),
        ("duplicate_of", pa.int64()),
        ("expected_width", pa.int64()),
        ("expected_height", pa.int64()),
        ("image_format", pa.string()),
        ("raw_url", pa.string()),
    ]
)
_INPUT_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("source_id", pa.string())])


def format_from_path(path: str) -> str:
    """Input format named by a file's extension (``.gz`` ignored): parquet, csv, tsv or jsonl."""
    stem = path[:-3] if path.endswith(".gz") else path
    ext = os.path.splitext(stem)[1].lstrip(".").lower()
    fmt = {"json": "jsonl", "pq": "parquet"}.get(ext, ext)
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"cannot tell the input format of {path!r}; use one of {INPUT_FORMATS}")
    return fmt


class _open_output:  # noqa: N801 - used like open()
    """Binary sink; gzip (mtime 0, so the same corpus gives the same bytes) when the path ends in .gz."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in __exit__
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if path.endswith(".gz") else None

    def __enter__(self) -> IO[bytes]:
        return self._gzip if self._gzip is not None else self._raw  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        if self._gzip is not None:
            self._gzip.close()
        self._raw.close()


def _write_parquet(table: pa.Table, sink: IO[bytes]) -> None:
    pq.write_table(table, sink)


def _write_delimited(table: pa.Table, sink: IO[bytes], delimiter: str) -> None:
    text = io.TextIOWrapper(sink, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True))
    text.detach()  # leave the sink open for its owner


def _write_jsonl(table: pa.Table, sink: IO[bytes]) -> None:
    for row in table.to_pylist():
        sink.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")


_WRITERS = {
    "parquet": _write_parquet,
    "csv": functools.partial(_write_delimited, delimiter=","),
    "tsv": functools.partial(_write_delimited, delimiter="\t"),
    "jsonl": _write_jsonl,
}


# ---------------------------------------------------------------------------------------------
# Planning


def label_counts_for(n_pairs: int, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """How many pairs of each label a corpus of ``n_pairs`` holds (``overrides`` fixes the non-clean counts)."""
    if overrides is not None:
        unknown = set(overrides) - set(_LABEL_RATES) - {"clean"}  # "clean" is always the rest
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}")
        counts = {label: int(overrides.get(label, 0)) for label in _LABEL_RATES}
    else:
        counts = {label: max(low, round(n_pairs * rate)) for label, (low, rate) in _LABEL_RATES.items()}
        counts = _fit_small_corpus(counts, n_pairs)
    n_clean = n_pairs - sum(counts.values())
    if n_clean < 0 or (n_clean == 0 and any(counts[label] for label in _NEEDS_CLEAN_ORIGINAL)):
        raise ValueError(f"{n_pairs} pairs cannot hold {sum(counts.values())} special pairs and a clean original")
    return {"clean": n_clean, **counts}


def _fit_small_corpus(counts: dict[str, int], n_pairs: int) -> dict[str, int]:
    """Below ~80 pairs not every label fits: drop labels from the end of ``LABELS`` until enough stay clean."""
    budget = n_pairs - max(1, math.ceil(n_pairs * _MIN_CLEAN_SHARE))
    if sum(counts.values()) <= budget:
        return counts
    counts = {label: _LABEL_RATES[label][0] for label in counts}
    for label in reversed(LABELS[1:]):
        if sum(counts.values()) <= budget:
            break
        counts[label] = 0
    return counts


@dataclass
class _Original:
    pair_id: int
    spec: SceneSpec
    recipe: ImageRecipe


@dataclass
class _Group:
    """Pairs that share one thing (an image or a caption), filled in input order."""

    size: int
    members: int = 0
    original: _Original | None = None


class _Planner:
    """Turns a shuffled label sequence into pairs and response plans, one small method per label."""

    def __init__(self, seed: int, image_size: tuple[int, int], texture: bool, counts: dict[str, int]) -> None:
        self.rng = random.Random(seed)
        self.width, self.height = image_size
        self.texture = texture
        self.counts = counts
        self.plans: dict[str, _ResponsePlan] = {}
        self.cleans: list[_Original] = []
        self.ordinals: dict[str, int] = dict.fromkeys(ALL_LABELS, 0)
        self.clean_languages = self._clean_languages(counts["clean"])
        self.exact_groups = _groups(counts["exact_duplicate"], 2)
        self.many_groups = _groups(counts["many_captions_image"], 3)
        self.shared_group_size = max(3, math.ceil(counts["shared_caption"] / len(SHARED_CAPTIONS)))

    # -- helpers ---------------------------------------------------------------------------

    def _clean_languages(self, n_clean: int) -> list[str]:
        # English mostly; every other language at least once when there is room for it.
        langs = ["zh", "ja", "de"][: max(0, n_clean - 1)]
        for _ in range(n_clean - len(langs)):
            langs.append("en" if self.rng.random() < 0.7 else self.rng.choice(["zh", "ja", "de"]))
        self.rng.shuffle(langs)
        return langs

    def _recipe(self, spec: SceneSpec, size: tuple[int, int] | None = None, **fields: object) -> ImageRecipe:
        width, height = size or (self.width, self.height)
        quality = fields.pop("quality", self.rng.choice((85, 90, 95)))
        return ImageRecipe(spec, width, height, quality=quality, texture=self.texture, **fields)  # type: ignore[arg-type]

    def _image_pair(self, pair_id: int, label: str, recipe: ImageRecipe, caption: str, language: str = "en",
                    duplicate_of: int | None = None, path: str | None = None) -> CorpusPair:
        size = expected_size(recipe)
        return CorpusPair(
            pair_id=pair_id,
            path=path or _image_path(pair_id, recipe),
            caption=caption,
            label=label,
            language=language,
            duplicate_of=duplicate_of,
            expected_width=size[0] if size else None,
            expected_height=size[1] if size else None,
            image_format=image_format(recipe),
        )

    def _simple_image(self, pair_id: int, label: str, size: tuple[int, int] | None = None,
                      extra_headers: tuple[tuple[str, str], ...] = (), **behaviour: object) -> CorpusPair:
        """A fresh scene with a true English caption, served at its own path."""
        kind = behaviour.pop("kind", "jpeg")
        damage = behaviour.pop("damage", "")
        spec = random_scene(self.rng)
        recipe = self._recipe(spec, size, kind=kind, damage=damage)
        pair = self._image_pair(pair_id, label, recipe, caption_for(spec, "en", self.rng))
        self.plans[pair.path] = _image_plan(recipe, extra_headers, **behaviour)
        return pair

    def _no_image(self, pair_id: int, label: str, plan: _ResponsePlan | None, ext: str = "jpg") -> CorpusPair:
        """A pair whose URL never yields a complete image; its caption is a true one of an unseen scene."""
        pair = CorpusPair(pair_id, f"/img/{pair_id:06d}.{ext}", caption_for(random_scene(self.rng), "en", self.rng),
                          label, "en")
        if plan is not None:
            self.plans[pair.path] = plan
        return pair

    def _copy_of_clean(self, pair_id: int, label: str, original: _Original, recipe: ImageRecipe) -> CorpusPair:
        pair = self._image_pair(pair_id, label, recipe, caption_for(original.spec, "en", self.rng),
                                duplicate_of=original.pair_id)
        self.plans[pair.path] = _image_plan(recipe)
        return pair

    def _next(self, label: str) -> int:
        ordinal = self.ordinals[label]
        self.ordinals[label] += 1
        return ordinal

    # -- one method per label -----------------------------------------------------------------

    def clean(self, pair_id: int) -> CorpusPair:
        language = self.clean_languages[self._next("clean")]
        spec = random_scene(self.rng)
        recipe = self._recipe(spec)
        pair = self._image_pair(pair_id, "clean", recipe, caption_for(spec, language, self.rng), language)
        self.plans[pair.path] = _image_plan(recipe)
        self.cleans.append(_Original(pair_id, spec, recipe))
        return pair

    def mismatched_caption(self, pair_id: int) -> CorpusPair:
        spec = random_scene(self.rng)
        recipe = self._recipe(spec)
        pair = self._image_pair(pair_id, "mismatched_caption", recipe, mismatched_caption(spec, "en", self.rng))
        self.plans[pair.path] = _image_plan(recipe)
        return pair

    def exact_duplicate(self, pair_id: int) -> CorpusPair:
        group = _group_for(self.exact_groups, self._next("exact_duplicate"))
        if group.original is None:
            group.original = self.rng.choice(self.cleans)
        return self._copy_of_clean(pair_id, "exact_duplicate", group.original, group.original.recipe)

    def _near_dup(self, pair_id: int, label: str, **change: object) -> CorpusPair:
        original = self.rng.choice(self.cleans)
        return self._copy_of_clean(pair_id, label, original, replace(original.recipe, **change))

    def near_dup_reencoded(self, pair_id: int) -> CorpusPair:
        return self._near_dup(pair_id, "near_dup_reencoded", quality=self.rng.choice((60, 70)))

    def near_dup_resized(self, pair_id: int) -> CorpusPair:
        return self._near_dup(pair_id, "near_dup_resized", transform="resize75")

    def near_dup_cropped(self, pair_id: int) -> CorpusPair:
        return self._near_dup(pair_id, "near_dup_cropped", transform="crop5")

    def near_dup_brightened(self, pair_id: int) -> CorpusPair:
        return self._near_dup(pair_id, "near_dup_brightened", transform="bright110")

    def near_dup_cropped_side(self, pair_id: int) -> CorpusPair:
        # One or two sides (any of the four), each losing 5-20 % of its dimension: what is left is 64-95 % of
        # the original's area, off-centre.
        cuts = [0, 0, 0, 0]
        for side in self.rng.sample(range(4), self.rng.choice((1, 2))):
            cuts[side] = self.rng.randint(50, 200)
        return self._near_dup(pair_id, "near_dup_cropped_side", transform="crop:" + ",".join(map(str, cuts)))

    def near_dup_overlay(self, pair_id: int) -> CorpusPair:
        return self._near_dup(pair_id, "near_dup_overlay", transform=f"overlay:{self.rng.randrange(4)}")

    def text_overlay(self, pair_id: int) -> CorpusPair:
        return self._decorated(pair_id, "text_overlay", "text")

    def face(self, pair_id: int) -> CorpusPair:
        return self._decorated(pair_id, "face", "face")

    def _decorated(self, pair_id: int, label: str, decoration: str) -> CorpusPair:
        """A random scene with ``decoration`` drawn on it (see ImageRecipe.decoration)."""
        spec = random_scene(self.rng)
        recipe = self._recipe(spec, decoration=decoration)
        pair = self._image_pair(pair_id, label, recipe, caption_for(spec, "en", self.rng))
        self.plans[pair.path] = _image_plan(recipe)
        return pair

    def tiny(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "tiny", TINY_SIZE)

    def extreme_aspect(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "extreme_aspect", EXTREME_ASPECT_SIZE)

    def corrupt(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "corrupt", damage="corrupt")

    def truncated(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "truncated", damage="truncate60")

    def html_as_image(self, pair_id: int) -> CorpusPair:
        return self._no_image(pair_id, "html_as_image", _ResponsePlan(headers=(("Content-Type", "image/jpeg"),),
                                                                      body=_HTML_BODY))

    def http_404(self, pair_id: int) -> CorpusPair:
        return self._no_image(pair_id, "http_404", _text_plan(404, "Not Found"))

    def http_500(self, pair_id: int) -> CorpusPair:
        return self._no_image(pair_id, "http_500", _text_plan(500, "Internal Server Error"))

    def http_429(self, pair_id: int) -> CorpusPair:
        return self._no_image(pair_id, "http_429", _text_plan(429, "Too Many Requests", (("Retry-After", "1"),)))

    def rate_limited_then_ok(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "rate_limited_then_ok", fail_first=1, fail_status=429,
                                  fail_headers=(("Retry-After", "1"),))

    def transient_then_ok(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "transient_then_ok", fail_first=TRANSIENT_FAILURES, fail_status=503)

    def slow(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "slow", delay_s=SLOW_DELAY_S)

    def stalled(self, pair_id: int) -> CorpusPair:
        pair = self._simple_image(pair_id, "stalled", stall_s=STALL_S)
        # The body never arrives within any sane timeout: nothing decodable comes from this URL.
        pair.expected_width = pair.expected_height = pair.image_format = None
        return pair

    def redirect_chain(self, pair_id: int) -> CorpusPair:
        spec = random_scene(self.rng)
        recipe = self._recipe(spec)
        final = f"/img/{pair_id:06d}-final.{_extension(recipe)}"
        hops = [f"/img/{pair_id:06d}.jpg"] + [f"/redirect/{pair_id:06d}/{k}" for k in range(1, REDIRECT_CHAIN_HOPS)]
        for here, there in zip(hops, [*hops[1:], final], strict=True):
            self.plans[here] = _redirect_plan(there)
        self.plans[final] = _image_plan(recipe)
        return self._image_pair(pair_id, "redirect_chain", recipe, caption_for(spec, "en", self.rng), path=hops[0])

    def redirect_loop_too_many(self, pair_id: int) -> CorpusPair:
        pair = self._no_image(pair_id, "redirect_loop_too_many", None)
        hops = [pair.path] + [f"/loop/{pair_id:06d}/{k}" for k in range(1, REDIRECT_LOOP_HOPS)]
        for here, there in zip(hops, [*hops[1:], hops[0]], strict=True):
            self.plans[here] = _redirect_plan(there)
        return pair

    def redirect_private(self, pair_id: int) -> CorpusPair:
        return self._no_image(pair_id, "redirect_private", _redirect_plan(PRIVATE_REDIRECT_URL))

    def robots_noai(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "robots_noai", extra_headers=(("X-Robots-Tag", ROBOTS_NOAI),))

    def robots_noimageai_agent(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "robots_noimageai_agent",
                                  extra_headers=(("X-Robots-Tag", ROBOTS_NOIMAGEAI_AGENT),))

    def exif_rotated(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "exif_rotated", kind="exif_rotated")

    def cmyk_jpeg(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "cmyk_jpeg", kind="cmyk_jpeg")

    def palette_png(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "palette_png", kind="palette_png")

    def alpha_png(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "alpha_png", kind="alpha_png")

    def animated_gif(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "animated_gif", kind="gif")

    def webp(self, pair_id: int) -> CorpusPair:
        return self._simple_image(pair_id, "webp", kind="webp")

    def bomb(self, pair_id: int) -> CorpusPair:
        pair = self._no_image(pair_id, "bomb", _ResponsePlan(headers=(("Content-Type", "image/png"),),
                                                             body=bomb_png()), ext="png")
        pair.image_format = "PNG"
        return pair

    def _captioned_image(self, pair_id: int, label: str, caption: str, language: str) -> CorpusPair:
        spec = random_scene(self.rng)
        recipe = self._recipe(spec)
        pair = self._image_pair(pair_id, label, recipe, caption, language)
        self.plans[pair.path] = _image_plan(recipe)
        return pair

    def boilerplate_caption(self, pair_id: int) -> CorpusPair:
        return self._captioned_image(pair_id, "boilerplate_caption", self.rng.choice(BOILERPLATE_CAPTIONS), "")

    def shared_caption(self, pair_id: int) -> CorpusPair:
        index = min(self._next("shared_caption") // self.shared_group_size, len(SHARED_CAPTIONS) - 1)
        return self._captioned_image(pair_id, "shared_caption", SHARED_CAPTIONS[index], "en")

    def empty_caption(self, pair_id: int) -> CorpusPair:
        return self._captioned_image(pair_id, "empty_caption", "", "")

    def many_captions_image(self, pair_id: int) -> CorpusPair:
        group = _group_for(self.many_groups, self._next("many_captions_image"))
        if group.original is None:
            spec = random_scene(self.rng)
            group.original = _Original(pair_id, spec, self._recipe(spec))
        original = group.original
        language, caption = _distinct_caption(original.spec, group.members)
        group.members += 1
        duplicate_of = None if original.pair_id == pair_id else original.pair_id
        pair = self._image_pair(pair_id, "many_captions_image", original.recipe, caption, language, duplicate_of)
        self.plans[pair.path] = _image_plan(original.recipe)
        return pair

    def bad_url(self, pair_id: int) -> CorpusPair:
        pair = self._no_image(pair_id, "bad_url", None)
        pair.path, pair.raw_url = "", BAD_URL
        return pair

    def ftp_url(self, pair_id: int) -> CorpusPair:
        pair = self._no_image(pair_id, "ftp_url", None)
        pair.path, pair.raw_url = "", FTP_URL
        return pair


def _groups(count: int, size: int) -> list[_Group]:
    """Split ``count`` members into groups of ``size``; the remainder joins the last group."""
    if count <= 0:
        return []
    n_groups = max(1, count // size)
    sizes = [size] * n_groups
    sizes[-1] += count - size * n_groups
    return [_Group(s) for s in sizes]


def _group_for(groups: list[_Group], ordinal: int) -> _Group:
    for group in groups:
        if ordinal < group.size:
            return group
        ordinal -= group.size
    raise IndexError("more members than planned")


def _distinct_caption(spec: SceneSpec, k: int) -> tuple[str, str]:
    """The k-th distinct true caption of ``spec``: English templates first, then the other languages."""
    options = [(lang, text) for lang in ("en", "de", "zh", "ja") for text in all_captions(spec, lang)]
    return options[k % len(options)]


def _extension(recipe: ImageRecipe) -> str:
    return {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}[image_format(recipe)]


def _image_path(pair_id: int, recipe: ImageRecipe) -> str:
    return f"/img/{pair_id:06d}.{_extension(recipe)}"


def _label_sequence(counts: dict[str, int], rng: random.Random) -> list[str]:
    """Labels in input order: shuffled, with a clean pair first so every duplicate has an earlier original."""
    sequence = [label for label in ALL_LABELS for _ in range(counts[label])]
    rng.shuffle(sequence)
    if "clean" in sequence:
        first_clean = sequence.index("clean")
        sequence[0], sequence[first_clean] = sequence[first_clean], sequence[0]
    return sequence


def generate_corpus(
    n_pairs: int = 100,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
    texture: bool = False,
    *,
    label_counts: Mapping[str, int] | None = None,
    cache_size: int = 2048,
) -> TestCorpus:
    """Plan a corpus of ``n_pairs`` pairs, deterministic in all arguments.

    ``label_counts`` fixes the number of each non-clean label (the rest is clean), e.g. ``{}`` for an
    all-clean benchmark corpus. ``cache_size`` bounds how many rendered image bodies stay in memory.
    """
    counts = label_counts_for(n_pairs, label_counts)
    planner = _Planner(seed, image_size, texture, counts)
    pairs = [getattr(planner, label)(pair_id) for pair_id, label in enumerate(_label_sequence(counts, planner.rng))]
    return TestCorpus(pairs, LazyResponses(planner.plans, cache_size), seed, image_size, texture)
