"""The dataset card, ``README.md`` at the top of an output: what Hugging Face ``datasets`` reads by name.

``load_dataset(OUTPUT)`` reads the card's YAML header: its ``configs`` point at the final shards
(the tars, or the Parquet shards with ``output.format: parquet``), so that neither the stats and
manifest files nor ``_candidates/`` are taken for data. The body says how the corpus was made (the
recipe, what it cites, the funnel) and how each tool reads it.
"""

from __future__ import annotations

from typing import Any

import yaml

from altsieve import __version__
from altsieve.core import layout
from altsieve.core.config import Config
from altsieve.transforms import shards

# Hugging Face's size categories (the hub's `size_categories` tag), by upper bound.
_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                    (10_000_000_000, "1B<n<10B")]


def size_category(samples: int) -> str:
    return next((name for bound, name in _SIZE_CATEGORIES if samples < bound), "n>10B")


def _configs(config: Config, buckets: list[str]) -> list[dict[str, Any]]:
    """One config over every shard (the default) and one per language bucket."""
    shard = "*.parquet" if config.output.format == "parquet" else "*.tar"
    folders = [f"{layout.BUCKET_DIR_PREFIX}{bucket}/" for bucket in buckets] or [""]
    configs: list[dict[str, Any]] = [{
        "config_name": "default",
        "default": True,
        "data_files": [{"split": "train", "path": [f"{folder}{shard}" for folder in folders]}],
    }]
    for bucket in buckets:
        configs.append({"config_name": f"lang_{bucket}",
                        "data_files": [{"split": "train", "path": f"{layout.BUCKET_DIR_PREFIX}{bucket}/{shard}"}]})
    # No config for the Parquet metadata beside the tars: datasets reads every config of a folder with one
    # builder (the tars' webdataset one), which cannot read Parquet. The card says how to load it instead.
    return configs


def card_header(config: Config, stats: dict[str, Any], buckets: list[str]) -> dict[str, Any]:
    return {
        "pretty_name": f"altsieve {config.name}",
        "task_categories": ["image-to-text", "text-to-image"],
        "size_categories": [size_category(int(stats["output_samples"]))],
        "tags": ["altsieve", "image-text pairs", "webdataset" if config.output.format == "webdataset" else "parquet"],
        "configs": _configs(config, buckets),
    }


def card_text(config: Config, stats: dict[str, Any], buckets: list[str]) -> str:
    header = yaml.safe_dump(card_header(config, stats, buckets), sort_keys=False, allow_unicode=True)
    funnel = stats["funnel"]
    lines = [f"---\n{header}---", "", f"# altsieve {config.name}", ""]
    lines += [f"{stats['output_samples']} image-text pairs in {stats['shards']} shards, curated by altsieve "
              f"{__version__} with the recipe `{config.name}`" + (f": {config.description}" if config.description
                                                                  else "."), ""]
    if config.cites:
        lines += ["## The rules applied and where they come from", ""]
        lines += [f"- {cite}" for cite in config.cites]
        lines += ["", "Every other value is the project's own choice; `manifest.json` has the full config.", ""]
    lines += ["## Funnel", "", "| stage | remaining | % of input | dropped |", "|---|---:|---:|---:|"]
    for stage in funnel["stages"]:
        lines.append(f"| {stage['stage']} | {stage['remaining']} | {stage['percent_of_input']:.1f} | "
                     f"{stage['dropped']} |")
    lines += ["", "Drop reasons (`stats.json` has them all, `_candidates/` and `_decisions/` every pair's):", ""]
    lines += [f"- `{reason}`: {count}" for reason, count in sorted(stats["reasons"].items(),
                                                                    key=lambda item: (-item[1], item[0]))]
    lines += ["", "## Reading it", "", "```python"]
    lines += ["from datasets import load_dataset", "ds = load_dataset(\"path/to/this/folder\", split=\"train\")"]
    if config.output.format == "webdataset":
        lines += ["# every column, no image: the Parquet beside each tar",
                  "meta = load_dataset(\"parquet\", data_files=\"path/to/this/folder/*.parquet\", split=\"train\")",
                  "```", "",
                  "- webdataset / open_clip: `--train-data 'folder/{00000..NNNNN}.tar'`; `sizes.json` gives "
                  "open_clip the sample count, `shardindex.json` is the wids shard index.",
                  "- Each sample: `{key}.jpg` (or .webp, .png), `{key}.txt` (the caption), `{key}.json` (its row)."]
    else:
        lines += ["```", "", f"- Each Parquet row holds the image bytes in the `{config.image.encode_format}` "
                  "column beside the metadata (img2dataset's parquet output format)."]
    if config.clip.enabled and config.clip.save_embeddings:
        lines.append(f"- `{layout.EMBEDDINGS_DIR}/`: the CLIP embeddings of every sample, in shard order, in "
                     "clip-retrieval's layout (`img_emb/`, `text_emb/`, `metadata/`): `clip-retrieval index` "
                     "and autofaiss read it as it is.")
    lines += ["", "## Columns", "", "Of the Parquet files and of each sample's `.json` (each stage declares the ones "
              "it sets):", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{column.name}` | {column.type} | {column.doc} |" for column in shards.COLUMNS]
    lines += [f"| `{name}` | string | carried from the input (`input.save_additional_columns`) |"
              for name in config.input.save_additional_columns if name not in shards.COLUMN_NAMES]
    return "\n".join(lines) + "\n"
