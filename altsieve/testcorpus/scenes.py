"""Drawn scenes (coloured shapes on a background) and captions that describe them in en, zh, ja, de.

The scenes are simple enough that a tiny CLIP can learn them, and every caption is derived from the
same ``SceneSpec`` that drew the image, so "matching" and "mismatched" are known exactly.

``SceneSpec.variant`` drives the small random parts of a drawing (jitter, background gradient,
texture offset): two pairs with the same shape/colour/position/count still get different pixels,
so the corpus has no accidental duplicates besides the planted ones.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
# Backgrounds are deliberately not shape colours, so that "a red ..." is never ambiguous.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "brown": (110, 75, 45),
    "beige": (225, 210, 180),
    "teal": (40, 130, 130),
    "navy": (25, 35, 90),
    "pink": (240, 180, 200),
}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
LANGUAGES: tuple[str, ...] = ("en", "zh", "ja", "de")

# A shape must stand out from its background, even where the background waves darken or lighten it:
# squared RGB distance below this is rejected.
_MIN_CONTRAST_SQ = 130**2
# Background waves (see _background): how many, peak brightness amplitude of each, highest frequency.
_WAVES = 6
_WAVE_AMPLITUDE = 14.0
_WAVE_FREQ = 3.5
_FIELD_STEP = 8


@dataclass(frozen=True, slots=True)
class SceneSpec:
    """What a scene shows; ``variant`` only changes details that no caption mentions."""

    shape: str
    colour: str
    position: str
    count: int
    background: str
    variant: int = 0


def _contrast_ok(colour: str, background: str) -> bool:
    a, b = COLOURS[colour], BACKGROUNDS[background]
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) >= _MIN_CONTRAST_SQ


def random_scene(rng: random.Random) -> SceneSpec:
    """A random scene whose shapes contrast with the background."""
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    backgrounds = [b for b in BACKGROUNDS if _contrast_ok(colour, b)]
    return SceneSpec(
        shape=shape,
        colour=colour,
        position=rng.choice(POSITIONS),
        count=rng.randint(1, 3),
        background=rng.choice(backgrounds),
        variant=rng.getrandbits(31),
    )


# ---------------------------------------------------------------------------------------------
# Drawing


def _region(position: str, width: int, height: int) -> tuple[float, float, float, float]:
    """Box (x0, y0, x1, y1) the shapes live in; halves of the image so captions stay true."""
    boxes = {
        "left": (0.04, 0.08, 0.46, 0.92),
        "right": (0.54, 0.08, 0.96, 0.92),
        "top": (0.08, 0.04, 0.92, 0.46),
        "bottom": (0.08, 0.54, 0.92, 0.96),
        "center": (0.25, 0.25, 0.75, 0.75),
    }
    fx0, fy0, fx1, fy1 = boxes[position]
    return fx0 * width, fy0 * height, fx1 * width, fy1 * height


def _shape_centres(
    spec: SceneSpec, width: int, height: int, rng: random.Random
) -> tuple[list[tuple[float, float]], float]:
    """Centres and radius of the shapes: laid out along the longer side of the region."""
    x0, y0, x1, y1 = _region(spec.position, width, height)
    rw, rh = x1 - x0, y1 - y0
    vertical = rh > rw
    cells = spec.count
    cell_w, cell_h = (rw, rh / cells) if vertical else (rw / cells, rh)
    radius = 0.5 * min(cell_w, cell_h) * rng.uniform(0.6, 0.8)
    centres = []
    for i in range(cells):
        cx = x0 + (cell_w * 0.5 if vertical else cell_w * (i + 0.5))
        cy = y0 + (cell_h * (i + 0.5) if vertical else cell_h * 0.5)
        # Jitter inside the cell only: shapes never overlap or leave their region.
        cx += rng.uniform(-1, 1) * max(0.0, cell_w / 2 - radius)
        cy += rng.uniform(-1, 1) * max(0.0, cell_h / 2 - radius)
        centres.append((cx, cy))
    return centres, radius


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        pts = [(r, -90 + 120 * k) for k in range(3)]
    elif shape == "star":
        pts = [((r if k % 2 == 0 else r * 0.45), -90 + 36 * k) for k in range(10)]
    elif shape == "diamond":
        pts = [(r if k % 2 == 0 else r * 0.65, -90 + 90 * k) for k in range(4)]
    else:  # square: slightly rotated so squares differ from one another
        pts = [(r * 0.95, 45 + 90 * k) for k in range(4)]
    return [(cx + d * math.cos(math.radians(a + angle)), cy + d * math.sin(math.radians(a + angle))) for d, a in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int],
                angle: float) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


@functools.lru_cache(maxsize=16)
def _unit_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in [-1, 1]; cached because every scene of a size needs the same grid."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs / max(1, width - 1) * 2 - 1, ys / max(1, height - 1) * 2 - 1


def _background(spec: SceneSpec, width: int, height: int, rng: random.Random) -> Image.Image:
    """Base colour shaded by a gradient and a few random low-frequency waves.

    Why: flat backgrounds make every "red circle on the left" image look alike to a perceptual hash,
    so distinct pairs would pass for near duplicates. The waves give each scene its own low-frequency
    signature (tuned so distinct scenes stay >= 8 bits apart in a 64-bit pHash while the planted near
    duplicates stay mostly <= 8) and are too weak to change the colour a caption names.
    """
    # The field is smooth, so it is computed on a grid 8x coarser and upsampled: 60x less work.
    small_w, small_h = max(2, -(-width // _FIELD_STEP)), max(2, -(-height // _FIELD_STEP))
    xs, ys = _unit_grid(small_w, small_h)
    angle = rng.uniform(0, 2 * math.pi)
    field = (math.cos(angle) * xs + math.sin(angle) * ys) * rng.uniform(10, 25)
    for _ in range(_WAVES):
        fx, fy = rng.uniform(-_WAVE_FREQ, _WAVE_FREQ), rng.uniform(-_WAVE_FREQ, _WAVE_FREQ)
        phase = rng.uniform(0, 2 * math.pi)
        field = field + rng.uniform(0.5, 1.0) * _WAVE_AMPLITUDE * np.cos(math.pi * (fx * xs + fy * ys) + phase)
    base = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    small = np.clip(base[None, None, :] + field[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BILINEAR)


# Noise strength (luma, chroma) tuned so that a 640x480 textured JPEG at quality 90 weighs ~100-150 KB.
_TEXTURE_SIGMA = (10.0, 3.0)
_TEXTURE_PAD = 64


@functools.lru_cache(maxsize=8)
def _noise_pool(width: int, height: int) -> np.ndarray:
    """One fixed noise field per size; each scene crops it at its own offset (cheap and deterministic)."""
    gen = np.random.default_rng(20240601)
    shape = (height + _TEXTURE_PAD, width + _TEXTURE_PAD)
    luma = gen.normal(0, _TEXTURE_SIGMA[0], shape)
    chroma = gen.normal(0, _TEXTURE_SIGMA[1], (*shape, 3))
    return np.round(luma[:, :, None] + chroma).astype(np.int16)


def _add_texture(pixels: np.ndarray, rng: random.Random) -> np.ndarray:
    height, width = pixels.shape[:2]
    dx, dy = rng.randrange(_TEXTURE_PAD), rng.randrange(_TEXTURE_PAD)
    noise = _noise_pool(width, height)[dy : dy + height, dx : dx + width]
    return np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def draw_scene(spec: SceneSpec, width: int, height: int, texture: bool = False) -> Image.Image:
    """Render ``spec`` as an RGB image; deterministic in (spec, width, height, texture)."""
    rng = random.Random(spec.variant)
    image = _background(spec, width, height, rng)
    draw = ImageDraw.Draw(image)
    centres, radius = _shape_centres(spec, width, height, rng)
    fill = COLOURS[spec.colour]
    for cx, cy in centres:
        _draw_shape(draw, spec.shape, cx, cy, radius, fill, rng.uniform(-12, 12))
    if texture:
        image = Image.fromarray(_add_texture(np.asarray(image), rng), "RGB")
    return image


# ---------------------------------------------------------------------------------------------
# Captions

_EN_SHAPES = {s: (s, s + "s") for s in SHAPES}
_EN_NUMBERS = {2: "two", 3: "three"}
_EN_POSITIONS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_EN_TEMPLATES = (
    "{np} {pos}",
    "a picture of {np} {pos}",
    "{np} {pos} on a {bg} background",
    "an illustration showing {np} {pos}",
)

_ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "diamond": "菱形"}
_ZH_COLOURS = {
    "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
    "purple": "紫色", "orange": "橙色", "white": "白色", "black": "黑色",
}
_ZH_BACKGROUNDS = {"gray": "灰色", "brown": "棕色", "beige": "米色", "teal": "青绿色", "navy": "藏青色", "pink": "粉色"}
_ZH_NUMBERS = {1: "一", 2: "两", 3: "三"}
_ZH_POSITIONS = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "center": "中间"}
_ZH_TEMPLATES = (
    "{pos}有{num}个{colour}的{shape}",
    "图中{pos}有{num}个{colour}{shape}",
    "{bg}背景上，{pos}有{num}个{colour}的{shape}",
)

_JA_SHAPES = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "diamond": "ひし形"}
_JA_COLOURS = {
    "red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い",
    "purple": "紫の", "orange": "オレンジ色の", "white": "白い", "black": "黒い",
}
_JA_BACKGROUNDS = {
    "gray": "灰色", "brown": "茶色", "beige": "ベージュ", "teal": "青緑", "navy": "紺色", "pink": "ピンク",
}
_JA_NUMBERS = {1: "一つ", 2: "二つ", 3: "三つ"}
_JA_POSITIONS = {"left": "左側に", "right": "右側に", "top": "上の方に", "bottom": "下の方に", "center": "真ん中に"}
_JA_TEMPLATES = (
    "{pos}{colour}{shape}が{num}あります",
    "{bg}の背景の{pos}{colour}{shape}が{num}あります",
    "{pos}{colour}{shape}が{num}あるイラスト",
)

# German nouns: (singular, plural, gender); adjective stems take the strong endings below.
_DE_SHAPES = {
    "circle": ("Kreis", "Kreise", "m"),
    "square": ("Quadrat", "Quadrate", "n"),
    "triangle": ("Dreieck", "Dreiecke", "n"),
    "star": ("Stern", "Sterne", "m"),
    "diamond": ("Raute", "Rauten", "f"),
}
_DE_COLOURS = {
    "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
    "purple": "violett", "orange": "orangefarben", "white": "weiß", "black": "schwarz",
}
_DE_BACKGROUNDS = {  # dative after "auf ... Hintergrund"
    "gray": "grauem", "brown": "braunem", "beige": "beigem",
    "teal": "blaugrünem", "navy": "dunkelblauem", "pink": "rosa",
}
_DE_NUMBERS = {2: "zwei", 3: "drei"}
_DE_POSITIONS = {
    "left": "auf der linken Seite",
    "right": "auf der rechten Seite",
    "top": "oben",
    "bottom": "unten",
    "center": "in der Mitte",
}
_DE_TEMPLATES = (
    "{np} {pos}",
    "{np} {pos} auf {bg} Hintergrund",
    "Bild: {np} {pos}",
)


def _en_caption(spec: SceneSpec, template: str) -> str:
    singular, plural = _EN_SHAPES[spec.shape]
    if spec.count == 1:
        article = "an" if spec.colour[0] in "aeiou" else "a"
        np_ = f"{article} {spec.colour} {singular}"
    else:
        np_ = f"{_EN_NUMBERS[spec.count]} {spec.colour} {plural}"
    return template.format(np=np_, pos=_EN_POSITIONS[spec.position], bg=spec.background)


def _zh_caption(spec: SceneSpec, template: str) -> str:
    return template.format(
        pos=_ZH_POSITIONS[spec.position], num=_ZH_NUMBERS[spec.count], colour=_ZH_COLOURS[spec.colour],
        shape=_ZH_SHAPES[spec.shape], bg=_ZH_BACKGROUNDS[spec.background],
    )


def _ja_caption(spec: SceneSpec, template: str) -> str:
    return template.format(
        pos=_JA_POSITIONS[spec.position], num=_JA_NUMBERS[spec.count], colour=_JA_COLOURS[spec.colour],
        shape=_JA_SHAPES[spec.shape], bg=_JA_BACKGROUNDS[spec.background],
    )


def _de_noun_phrase(spec: SceneSpec) -> str:
    singular, plural, gender = _DE_SHAPES[spec.shape]
    stem = _DE_COLOURS[spec.colour]
    if spec.count == 1:
        article = "eine" if gender == "f" else "ein"
        ending = {"m": "er", "n": "es", "f": "e"}[gender]
        return f"{article} {stem}{ending} {singular}"
    return f"{_DE_NUMBERS[spec.count]} {stem}e {plural}"


def _de_caption(spec: SceneSpec, template: str) -> str:
    text = template.format(
        np=_de_noun_phrase(spec), pos=_DE_POSITIONS[spec.position], bg=_DE_BACKGROUNDS[spec.background]
    )
    return text[0].upper() + text[1:]


_CAPTIONERS = {
    "en": (_en_caption, _EN_TEMPLATES),
    "zh": (_zh_caption, _ZH_TEMPLATES),
    "ja": (_ja_caption, _JA_TEMPLATES),
    "de": (_de_caption, _DE_TEMPLATES),
}


def caption_for(spec: SceneSpec, lang: str, rng: random.Random) -> str:
    """A caption that truly describes ``spec`` in ``lang`` (en, zh, ja, de); ``rng`` picks the template."""
    try:
        render, templates = _CAPTIONERS[lang]
    except KeyError:
        raise ValueError(f"unsupported caption language {lang!r}; expected one of {LANGUAGES}") from None
    return render(spec, rng.choice(templates))


def mismatched_caption(spec: SceneSpec, lang: str, rng: random.Random) -> str:
    """A caption of another random scene whose shape AND colour both differ from ``spec``."""
    while True:
        other = random_scene(rng)
        if other.shape != spec.shape and other.colour != spec.colour:
            return caption_for(other, lang, rng)


def all_captions(spec: SceneSpec, lang: str) -> list[str]:
    """Every template's caption of ``spec`` in ``lang``: distinct true captions for one image."""
    render, templates = _CAPTIONERS[lang]
    return [render(spec, template) for template in templates]
