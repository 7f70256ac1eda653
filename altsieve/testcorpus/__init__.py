"""Noisy-web test corpus: drawn scenes with known captions, planted failures, and a loopback server.

Each pair carries its true category (``label``) in ``TestCorpus.truth_table()``; ``CorpusServer``
answers every path the way the label says (404s, throttling, redirects, stalls, ...).
"""

from altsieve.testcorpus.generator import (
    ALL_LABELS,
    BOILERPLATE_CAPTIONS,
    EXPECTED_REASON,
    INPUT_FORMATS,
    LABELS,
    OPT_IN_LABELS,
    SHARED_CAPTIONS,
    CorpusPair,
    ImageRecipe,
    ServedResponse,
    TestCorpus,
    bomb_png,
    format_from_path,
    generate_corpus,
    label_counts_for,
    render_image,
)
from altsieve.testcorpus.scenes import (
    COLOURS,
    LANGUAGES,
    POSITIONS,
    SHAPES,
    SceneSpec,
    all_captions,
    caption_for,
    draw_scene,
    mismatched_caption,
    random_scene,
)
from altsieve.testcorpus.server import CorpusServer, serve_forever_cli

__all__ = [
    "BOILERPLATE_CAPTIONS",
    "COLOURS",
    "EXPECTED_REASON",
    "INPUT_FORMATS",
    "ALL_LABELS",
    "LABELS",
    "OPT_IN_LABELS",
    "LANGUAGES",
    "POSITIONS",
    "SHAPES",
    "SHARED_CAPTIONS",
    "CorpusPair",
    "CorpusServer",
    "ImageRecipe",
    "SceneSpec",
    "ServedResponse",
    "TestCorpus",
    "all_captions",
    "bomb_png",
    "caption_for",
    "draw_scene",
    "format_from_path",
    "generate_corpus",
    "label_counts_for",
    "mismatched_caption",
    "random_scene",
    "render_image",
    "serve_forever_cli",
]
