"""``altsieve``: run, ingest, select, reshard, extract, recipes, demo, serve-testcorpus, audit.

Flags override recipe values; every argument this CLI does not know is handed to Beam unchanged
(``--runner``, ``--direct_num_workers``, ``--direct_running_mode``, ``--project``...), and one that
Beam does not know either is an error, not a silent no-op.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from altsieve import __version__
from altsieve.core.config import Config, ConfigError, builtin_recipe_names, load_config, parse_override

# Flag -> dotted config field. Each becomes an override applied after the recipe.
FLAG_FIELDS: dict[str, tuple[str, Any]] = {
    "url_col": ("input.url_col", str),
    "caption_col": ("input.caption_col", str),
    "input_format": ("input.input_format", str),
    "rows_per_partition": ("input.rows_per_partition", int),
    "image_size": ("image.image_size", int),
    "resize_mode": ("image.resize_mode", str),
    "encode_format": ("image.encode_format", str),
    "encode_quality": ("image.encode_quality", int),
    "samples_per_shard": ("output.samples_per_shard", int),
    "retries": ("download.retries", int),
    "timeout": ("download.read_timeout_s", float),
    "concurrency": ("download.concurrency", int),
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe and overrides")
    group.add_argument("--recipe", default="default", help="built-in recipe name or YAML path (default: default)")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override any recipe field, e.g. --set rules.image.min_side=200 (repeatable)")
    group.add_argument("--url-col", dest="url_col")
    group.add_argument("--caption-col", dest="caption_col")
    group.add_argument("--save-additional-columns", dest="save_additional_columns",
                       help="comma-separated input columns to carry to the output")
    group.add_argument("--input-format", dest="input_format", choices=["auto", "parquet", "csv", "tsv", "jsonl"])
    group.add_argument("--rows-per-partition", dest="rows_per_partition", type=int)
    group.add_argument("--image-size", dest="image_size", type=int)
    group.add_argument("--resize-mode", dest="resize_mode",
                       choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])
    group.add_argument("--encode-format", dest="encode_format", choices=["jpg", "webp", "png"])
    group.add_argument("--encode-quality", dest="encode_quality", type=int)
    group.add_argument("--samples-per-shard", dest="samples_per_shard", type=int)
    group.add_argument("--retries", type=int)
    group.add_argument("--timeout", type=float, help="read timeout in seconds")
    group.add_argument("--concurrency", type=int, help="download threads per worker")
    group.add_argument("--allow-private-addresses", dest="allow_private_addresses", nargs="*", metavar="CIDR",
                       help="let the downloader reach these private/loopback networks (no CIDR: all of them). "
                       "Off by default: URLs come from the web and must not reach your own network")
    group.add_argument("--languages", help="comma-separated language allow-list, e.g. zh for a Chinese subset "
                       "(rules.text.languages; labels as the language model writes them: en, zh, ja, de ...)")
    group.add_argument("--split-by-language", dest="split_by_language", action="store_true", default=None,
                       help="one output tree per language bucket: OUTPUT/lang=en/00000.tar ... (language.buckets)")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: list[dict[str, Any]] = []
    for flag, (dotted, _) in FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(_nested(dotted, value))
    if getattr(args, "save_additional_columns", None):
        columns = [c.strip() for c in args.save_additional_columns.split(",") if c.strip()]
        overrides.append(_nested("input.save_additional_columns", columns))
    if getattr(args, "allow_private_addresses", None) is not None:
        networks = args.allow_private_addresses or ["0.0.0.0/0", "::/0"]
        overrides.append(_nested("download.allow_private_addresses", networks))
    if getattr(args, "languages", None) is not None:
        languages = [code.strip() for code in args.languages.split(",") if code.strip()]
        overrides.append(_nested("rules.text.languages", languages))
    if getattr(args, "split_by_language", None):
        overrides.append(_nested("output.split_by_language", True))
    overrides.extend(parse_override(item) for item in args.set)
    return load_config(args.recipe, overrides)


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def check_beam_args(beam_args: list[str]) -> None:
    """Refuse an option neither altsieve nor Beam knows (Beam alone would only log and drop it)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    seen: set[type] = set()
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            continue  # an option two subclasses both declare
    _, unknown = parser.parse_known_args(beam_args)
    flags = [item for item in unknown if item.startswith("-")]
    if flags:
        raise ConfigError(
            f"unknown option {flags[0]}: not an altsieve flag (see altsieve run --help) nor a Beam option"
        )


def _output_config(output: str) -> Config:
    """The config an earlier pass saved in the output folder, so that later passes agree with it."""
    import fsspec
    import yaml

    from altsieve.core import fsutil, layout

    path = layout.meta(output, "config.yaml")
    if not fsutil.exists(path):
        raise ConfigError(f"{output} holds no altsieve run ({path} is missing): run `altsieve ingest` or `run` first")
    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        return Config.model_validate(yaml.safe_load(handle.read()))


def run_all(config: Config, inputs: list[str], output: str, beam_args: list[str], retry_failed: bool = False,
            crawl_inputs: Any = None) -> dict:
    """The three passes in order, then the reports."""
    from altsieve.pipeline.extract import prepare_crawl_inputs
    from altsieve.pipeline.ingest import run_ingest
    from altsieve.pipeline.report import write_reports
    from altsieve.pipeline.reshard import run_reshard
    from altsieve.pipeline.select import run_select

    started = time.time()
    # Crawl inputs (WARC/WAT) become Parquet URL lists first; select and reshard need the config that ingests them.
    inputs, config = prepare_crawl_inputs(config, inputs, output, beam_args, crawl_inputs)
    metrics = run_ingest(config, inputs, output, beam_args, retry_failed)
    run_select(config, output, beam_args)
    run_reshard(config, output, beam_args)
    return write_reports(config, output, metrics, started)


def _print_summary(output: str) -> None:
    import fsspec

    from altsieve.core import fsutil

    with fsspec.open(fsutil.join(output, "summary.txt"), "rt", encoding="utf-8") as handle:
        print(handle.read(), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="altsieve", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"altsieve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Beam's own log")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, helptext in [("run", "ingest, select and reshard in one go"), ("ingest", "pass 1 alone")]:
        command = commands.add_parser(name, help=helptext, allow_abbrev=False)
        command.add_argument("inputs", nargs="+", help="files, folders or globs (local or fsspec URLs)")
        command.add_argument("--output", "-o", required=True)
        command.add_argument("--retry-failed", action="store_true",
                             help="fetch again the pairs that failed for a transient reason (timeouts, 5xx, 429)")
        _add_config_flags(command)
        _add_crawl_flags(command)
    extract = commands.add_parser("extract", allow_abbrev=False,
                                  help="crawl files (WARC, WAT, *.paths.gz listings) -> Parquet URL lists")
    extract.add_argument("inputs", nargs="+", help="WARC/WAT files, folders, globs or Common Crawl paths listings")
    extract.add_argument("--output", "-o", required=True)
    _add_crawl_flags(extract)
    for name, helptext in [("select", "pass 2 alone (metadata only)"), ("reshard", "pass 3 alone")]:
        command = commands.add_parser(name, help=helptext, allow_abbrev=False)
        command.add_argument("--output", "-o", required=True)
    commands.add_parser("recipes", help="list the built-in recipes").add_argument("name", nargs="?",
                                                                                 help="show one recipe in full")
    demo = commands.add_parser("demo", help="serve the noisy test corpus on loopback and curate it end to end")
    demo.add_argument("--output", "-o", default="altsieve-demo")
    demo.add_argument("--pairs", type=int, default=100)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--recipe", default="demo", help="default: demo (the default recipe + the tiny test CLIP)")
    serve = commands.add_parser("serve-testcorpus", help="serve the noisy test corpus alone")
    serve.add_argument("--pairs", type=int, default=100)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--input", default="testcorpus.parquet", help="where to write the URL list (and truth)")
    audit = commands.add_parser("audit", help="noise statistics of a corpus: one HTML report plus JSON",
                                allow_abbrev=False)
    audit.add_argument("path", help="an altsieve output, an img2dataset output, or Parquet with url and caption")
    audit.add_argument("--report", required=True, help="folder for report.html and audit.json")
    audit.add_argument("--samples", type=int, default=6, help="pairs shown per drop reason (default: 6)")
    audit.add_argument("--url-col", dest="url_col", default="url", help="url column of bare Parquet")
    audit.add_argument("--caption-col", dest="caption_col", default="caption", help="caption column of bare Parquet")
    audit.add_argument("--compare", metavar="B", default=None,
                       help="a second corpus (another run, another recipe): report both side by side, their funnels, "
                            "reason deltas, overlap of kept keys and what one kept and the other dropped")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    # Beam's optional-dependency warnings (apitools, bigquery) are noise to a user of the DirectRunner.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("altsieve").setLevel(logging.INFO)
    try:
        return _dispatch(args, beam_args)
    except ConfigError as err:
        print(f"altsieve: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from altsieve.transforms.read_inputs import InputError

        if isinstance(err, InputError):
            print(f"altsieve: error: {err}", file=sys.stderr)
            return 2
        raise


def _dispatch(args: argparse.Namespace, beam_args: list[str]) -> int:
    if args.command == "audit":
        if beam_args:  # audit runs no Beam pipeline: an unknown flag is a mistake, not a Beam option
            raise ConfigError(f"unknown option {beam_args[0]} for altsieve audit (see altsieve audit --help)")
        from altsieve.pipeline.audit import audit_cli

        return audit_cli(args.path, args.report, args.samples, args.url_col, args.caption_col, args.compare)
    if args.command == "recipes":
        return _recipes(args.name)
    if args.command == "serve-testcorpus":
        from altsieve.testcorpus.server import serve_forever_cli

        serve_forever_cli(n_pairs=args.pairs, port=args.port, input_path=args.input, seed=args.seed)
        return 0
    from altsieve.core import fsutil

    check_beam_args(beam_args)
    if args.command == "demo":
        from altsieve.pipeline.demo import run_demo

        run_demo(args.output, args.pairs, args.seed, args.recipe, beam_args)
        _print_summary(fsutil.join(args.output, "dataset"))
        return 0
    if args.command in ("run", "ingest"):
        config = config_from_args(args)
        if args.command == "run":
            run_all(config, args.inputs, args.output, beam_args, args.retry_failed, _crawl_inputs(args))
            _print_summary(args.output)
        else:
            from altsieve.pipeline.ingest import run_ingest

            run_ingest(config, args.inputs, args.output, beam_args, args.retry_failed, _crawl_inputs(args))
        return 0
    if args.command == "extract":
        return _extract(args, beam_args)
    config = _output_config(args.output)
    if args.command == "select":
        from altsieve.pipeline.select import run_select

        run_select(config, args.output, beam_args)
    else:
        from altsieve.pipeline.report import write_reports
        from altsieve.pipeline.reshard import run_reshard

        started = time.time()
        metrics = run_reshard(config, args.output, beam_args)
        write_reports(config, args.output, metrics, started)
        _print_summary(args.output)
    return 0


def _add_crawl_flags(parser: argparse.ArgumentParser) -> None:
    from altsieve.transforms.crawl import DEFAULT_CC_BASE_URL

    group = parser.add_argument_group("crawl inputs (WARC, WAT, *.paths.gz listings)")
    group.add_argument("--limit", type=int, help="read at most this many crawl files (a listing's first ones)")
    group.add_argument("--cc-base-url", dest="cc_base_url", default=DEFAULT_CC_BASE_URL,
                       help=f"what a listing's relative paths are resolved against (default {DEFAULT_CC_BASE_URL})")
    group.add_argument("--surrounding-text", dest="surrounding_text", action="store_true",
                       help="also keep the text around each image (WARC only)")
    group.add_argument("--keep-svg", dest="keep_svg", action="store_true", help="keep .svg images (skipped by default)")
    group.add_argument("--crawl-id", dest="crawl_id", help="crawl id to record when neither warcinfo nor path says")


def _crawl_inputs(args: argparse.Namespace) -> Any:
    from altsieve.pipeline.extract import CrawlInputs
    from altsieve.transforms.crawl import ExtractOptions

    options = ExtractOptions(surrounding_text=args.surrounding_text, keep_svg=args.keep_svg, crawl_id=args.crawl_id)
    return CrawlInputs(limit=args.limit, cc_base_url=args.cc_base_url, options=options)


def _extract(args: argparse.Namespace, beam_args: list[str]) -> int:
    from altsieve.pipeline.extract import run_extract, summary_lines
    from altsieve.transforms.crawl import list_crawl_files

    settings = _crawl_inputs(args)
    files = list_crawl_files(args.inputs, settings.cc_base_url, settings.limit)
    stats = run_extract(files, args.output, settings.options, beam_args)
    print("\n".join(summary_lines(stats)))
    return 0


def _recipes(name: str | None) -> int:
    from altsieve.core.config import config_to_yaml

    if name:
        print(config_to_yaml(load_config(name)), end="")
        return 0
    for recipe in builtin_recipe_names():
        config = load_config(recipe)
        print(f"{recipe:<16} {config.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
