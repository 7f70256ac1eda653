"""``altsieve``: run, ingest, select, reshard, extract, recipes, demo, serve-testcorpus, audit.

Flags override recipe values; every argument this CLI does not know is handed to Beam unchanged
(``--runner``, ``--direct_num_workers``, ``--direct_running_mode``, ``--project``...), and one that
Beam does not know either is an error, not a silent no-op.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from typing import Any

from altsieve import __version__
from altsieve.core.config import (
    ENCODE_FORMATS,
    RESIZE_MODES,
    Config,
    ConfigError,
    builtin_recipe_names,
    load_config,
    parse_override,
)

# Flag -> dotted config field. Each becomes an override applied after the recipe.
FLAG_FIELDS: dict[str, tuple[str, Any]] = {
    "url_col": ("input.url_col", str),
    "caption_col": ("input.caption_col", str),
    "input_format": ("input.input_format", str),
    "rows_per_partition": ("input.rows_per_partition", int),
    "encoding": ("input.encoding", str),
    "image_size": ("image.image_size", int),
    "resize_mode": ("image.resize_mode", str),
    "encode_format": ("image.encode_format", str),
    "encode_quality": ("image.encode_quality", int),
    "samples_per_shard": ("output.samples_per_shard", int),
    "output_format": ("output.format", str),
    "retries": ("download.retries", int),
    "timeout": ("download.read_timeout_s", float),
    "concurrency": ("download.concurrency", int),
}


@functools.cache
def _default_recipe() -> Config:
    return load_config("default")


def _recipe_default(dotted: str) -> str:
    """The help text's default for a flag that overrides a recipe field: the recipe decides."""
    value: Any = _default_recipe()
    for part in dotted.split("."):
        value = getattr(value, part)
    return f"(default: the recipe's; {value} in the default recipe)"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe and overrides (each flag overrides the recipe's value)")
    group.add_argument("--recipe", default="default",
                       help="built-in recipe name (see `altsieve recipes`) or the path of a YAML file "
                       "(a name ending in .yaml/.yml or with a / in it) (default: default)")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override any recipe field, e.g. --set rules.image.min_side=200 (repeatable; "
                       "default: none)")
    group.add_argument("--url-col", dest="url_col", metavar="NAME",
                       help=f"input column holding the image URL {_recipe_default('input.url_col')}")
    group.add_argument("--caption-col", dest="caption_col", metavar="NAME",
                       help=f"input column holding the alt-text {_recipe_default('input.caption_col')}")
    group.add_argument("--save-additional-columns", dest="save_additional_columns", metavar="A,B",
                       help="comma-separated input columns to carry to the output Parquet and sample JSON "
                       "(default: none)")
    group.add_argument("--input-format", dest="input_format", choices=["auto", "parquet", "csv", "tsv", "jsonl"],
                       help="input file format; auto: from the name, .gz included "
                       f"{_recipe_default('input.input_format')}")
    group.add_argument("--rows-per-partition", dest="rows_per_partition", type=int, metavar="N",
                       help="pairs per partition, the unit of work and of resume (default: the recipe's; in the "
                       "default recipe sized from the input, 4 partitions or more per local worker, 50-10,000 rows)")
    group.add_argument("--encoding", metavar="CODEC",
                       help="encoding of CSV/TSV/JSONL inputs, e.g. latin-1, cp1252: a line not valid in it becomes a "
                       f"row with reason input_undecodable {_recipe_default('input.encoding')}")
    group.add_argument("--image-size", dest="image_size", type=int, metavar="PX",
                       help=f"side of the stored images, in pixels {_recipe_default('image.image_size')}")
    group.add_argument("--resize-mode", dest="resize_mode",
                       choices=RESIZE_MODES,
                       help="how images are fitted to --image-size, as img2dataset's resize modes "
                       f"{_recipe_default('image.resize_mode')}")
    group.add_argument("--encode-format", dest="encode_format", choices=ENCODE_FORMATS,
                       help=f"format the stored images are encoded in {_recipe_default('image.encode_format')}")
    group.add_argument("--encode-quality", dest="encode_quality", type=int, metavar="Q",
                       help=f"JPEG/WebP quality, 1-100 {_recipe_default('image.encode_quality')}")
    group.add_argument("--samples-per-shard", dest="samples_per_shard", type=int, metavar="N",
                       help=f"pairs in each final shard (the last may hold fewer) "
                       f"{_recipe_default('output.samples_per_shard')}")
    group.add_argument("--output-format", dest="output_format", choices=["webdataset", "parquet"],
                       help="final shards: webdataset tars (+ Parquet metadata), or Parquet with the image bytes "
                       f"(img2dataset's parquet format) {_recipe_default('output.format')}")
    group.add_argument("--retries", type=int, metavar="N",
                       help=f"retries of a transient download failure {_recipe_default('download.retries')}")
    group.add_argument("--timeout", type=float, metavar="S",
                       help=f"read timeout in seconds {_recipe_default('download.read_timeout_s')}")
    group.add_argument("--concurrency", type=int, metavar="N",
                       help="requests in flight per worker process, one window across partitions "
                       f"{_recipe_default('download.concurrency')}")
    group.add_argument("--allow-private-addresses", dest="allow_private_addresses", nargs="*", metavar="CIDR",
                       help="let the downloader reach these private/loopback networks, e.g. 127.0.0.1/32 (`all`: "
                       "every address, cloud metadata endpoints included). Default: none, since URLs come from the web "
                       "and must not reach your own network")
    group.add_argument("--languages", metavar="CODES",
                       help="comma-separated language allow-list, e.g. zh for a Chinese subset "
                       "(rules.text.languages; labels as the language model writes them: en, zh, ja, de ...) "
                       "(default: the recipe's; every language in the default recipe)")
    group.add_argument("--split-by-language", dest="split_by_language", action="store_true", default=None,
                       help="one output tree per language bucket: OUTPUT/lang=en/00000.tar ... (language.buckets) "
                       "(default: the recipe's; off in the default recipe)")


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
        overrides.append(_nested("download.allow_private_addresses", _private_networks(args.allow_private_addresses)))
    if getattr(args, "languages", None) is not None:
        languages = [code.strip() for code in args.languages.split(",") if code.strip()]
        overrides.append(_nested("rules.text.languages", languages))
    if getattr(args, "split_by_language", None):
        overrides.append(_nested("output.split_by_language", True))
    overrides.extend(parse_override(item) for item in args.set)
    return load_config(args.recipe, overrides)


def _private_networks(values: list[str]) -> list[str]:
    """The networks of --allow-private-addresses; opening every address must be written out (`all`)."""
    if not values:
        raise ConfigError(
            "--allow-private-addresses needs the networks to open, e.g. 127.0.0.1/32 or 10.0.0.0/8; "
            "write `all` to open every address (cloud metadata endpoints such as 169.254.169.254 included)"
        )
    if "all" in values:
        return ["0.0.0.0/0", "::/0"]
    return values


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
    """The three passes in order, then the reports, under the run's lease (one run per output folder; the passes
    inside share it)."""
    # lease is imported here, not at the top: the fork server starts ~0.18 s sooner (prestart_fork_server).
    from altsieve.core import lease
    from altsieve.pipeline.extract import prepare_crawl_inputs
    from altsieve.pipeline.ingest import run_ingest, with_partition_size
    from altsieve.pipeline.report import write_reports
    from altsieve.pipeline.reshard import run_select_and_reshard

    with lease.hold(output, "altsieve run"):
        started = time.time()
        # Crawl inputs (WARC/WAT) become Parquet URL lists first; select and reshard need the config that ingests
        # them.
        inputs, config = prepare_crawl_inputs(config, inputs, output, beam_args, crawl_inputs)
        metrics = run_ingest(config, inputs, output, beam_args, retry_failed)
        config = with_partition_size(config, output, 0, None)  # the size ingest chose, as it saved it
        run_select_and_reshard(config, output, beam_args)
        return write_reports(config, output, metrics, started)


def _print_summary(output: str, stats: dict | None = None, config: Config | None = None,
                   inputs: list[str] | None = None, retry_hint: bool = True) -> None:
    """The run's summary, then where the output is and what to do with it (with a hint when most fetches
    were refused as private addresses: the flag that allows them)."""
    import fsspec

    from altsieve.core import fsutil
    from altsieve.pipeline.report import next_steps

    with fsspec.open(fsutil.join(output, "summary.txt"), "rt", encoding="utf-8") as handle:
        print(handle.read(), end="")
    if stats is not None and config is not None:
        print("\n".join(next_steps(output, stats, config, inputs, retry_hint)))


DESCRIPTION = ("altsieve: noisy web image/alt-text pairs -> clean training shards (webdataset tars + Parquet), "
               "with a reason code for every pair it drops. Each pass is an Apache Beam pipeline (run: ingest, then "
               "select and reshard as one).")
BEAM_NOTE = """\
Any other flag goes to Apache Beam unchanged: --runner (default: Beam's local FnApiRunner, a worker process per
core), --direct_num_workers, --direct_running_mode, --project, --region, --temp_location ...; one that Beam does
not know either is an error."""

EXAMPLES = {
    "altsieve": """\
examples:
  altsieve demo                                       the noisy test corpus, served on 127.0.0.1 and curated
  altsieve run urls.parquet -o out/                   ingest, select and reshard with the default recipe
  altsieve run urls.parquet -o out/ --recipe laion400m --image-size 384 --resize-mode center_crop
  altsieve run urls.parquet -o out/ --retry-failed    fetch again only the transient failures
  altsieve audit out/ --report audit/                 noise report: report.html + audit.json
  altsieve recipes                                    the built-in recipes""",
    "run": """\
examples:
  altsieve run urls.parquet -o out/
  altsieve run 'lists/*.csv.gz' -o out/ --url-col URL --caption-col TEXT --save-additional-columns license
  altsieve run urls.parquet -o out/ --recipe datacomp-basic --output-format parquet
  altsieve run urls.parquet -o out/ --direct_num_workers 4          the local runner, 4 worker processes
  altsieve run urls.parquet -o out/ --runner PrismRunner            any Beam runner, when named
  altsieve run 'gs://bucket/lists/*.parquet' -o gs://bucket/out --runner DataflowRunner --project P --region R
  altsieve run crawl/*.warc.gz -o out/                WARC/WAT inputs are extracted first""",
    "ingest": """\
examples:
  altsieve ingest urls.parquet -o out/ && altsieve select -o out/ && altsieve reshard -o out/
  altsieve ingest urls.parquet -o out/ --retry-failed""",
    "extract": """\
examples:
  altsieve extract CC-MAIN-2024-22/warc.paths.gz --limit 10 -o pairs/
  altsieve extract 'crawl/*.warc.gz' -o pairs/ --surrounding-text""",
    "select": "example:\n  altsieve select -o out/          after `altsieve ingest ... -o out/`",
    "reshard": "example:\n  altsieve reshard -o out/         after `altsieve select -o out/`",
    "recipes": "examples:\n  altsieve recipes\n"
               "  altsieve recipes laion400m > mine.yaml   then edit it and pass --recipe mine.yaml",
    "demo": "examples:\n  altsieve demo\n  altsieve demo --pairs 2000 --output big-demo/",
    "serve-testcorpus": "example:\n  altsieve serve-testcorpus --pairs 100000 --port 8000 --input corpus.parquet",
    "audit": """\
examples:
  altsieve audit out/ --report audit/                an altsieve output
  altsieve audit i2d-out/ --report audit/            an img2dataset output
  altsieve audit urls.parquet --report audit/ --url-col URL --caption-col TEXT""",
}


def _command(commands: Any, name: str, helptext: str, beam: bool = True) -> argparse.ArgumentParser:
    epilog = EXAMPLES[name] + ("\n\n" + BEAM_NOTE if beam else "")
    return commands.add_parser(name, help=helptext, description=helptext, epilog=epilog, allow_abbrev=False,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, metavar="FOLDER",
                        help="the output folder, local or any fsspec URL (required)")


def _print_next_pass(output: str, command: str) -> None:
    from altsieve.pipeline.report import display_path

    print(f"output: {display_path(output)}\nnext: altsieve {command} -o {display_path(output)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="altsieve", description=DESCRIPTION, allow_abbrev=False,
                                     epilog=EXAMPLES["altsieve"] + "\n\n" + BEAM_NOTE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"altsieve {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Beam's own log (default: off)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: off; a user's error is one line)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, helptext in [("run", "ingest, select and reshard in one go, then the reports"),
                           ("ingest", "pass 1 alone: fetch, decode and apply the per-pair rules")]:
        command = _command(commands, name, helptext)
        command.add_argument("inputs", nargs="+", help="URL lists (Parquet, CSV, TSV, JSONL, plain or .gz) or crawl "
                             "files: files, folders or globs, local or fsspec URLs")
        _add_output(command)
        command.add_argument("--retry-failed", action="store_true",
                             help="fetch again the pairs that failed for a transient reason (timeouts, 5xx, 429) "
                             "(default: off)")
        _add_config_flags(command)
        _add_crawl_flags(command)
    extract = _command(commands, "extract", "crawl files (WARC, WAT, *.paths.gz listings) -> Parquet URL lists")
    extract.add_argument("inputs", nargs="+", help="WARC/WAT files, folders, globs or Common Crawl paths listings")
    _add_output(extract)
    _add_crawl_flags(extract)
    for name, helptext in [("select", "pass 2 alone: the corpus-wide rules and deduplication (metadata only)"),
                           ("reshard", "pass 3 alone: the final shards, then the reports")]:
        _add_output(_command(commands, name, helptext))
    recipes = _command(commands, "recipes", "list the built-in recipes, or print one in full", beam=False)
    recipes.add_argument("name", nargs="?", help="the recipe to print as YAML (default: list them all)")
    demo = _command(commands, "demo", "serve the noisy test corpus on 127.0.0.1 and curate it end to end")
    demo.add_argument("--output", "-o", default="altsieve-demo", metavar="FOLDER",
                      help="folder for input.parquet, truth.parquet and dataset/ (default: altsieve-demo)")
    demo.add_argument("--pairs", type=int, default=100, metavar="N", help="pairs in the corpus (default: 100)")
    demo.add_argument("--seed", type=int, default=0, help="the corpus's random seed (default: 0)")
    demo.add_argument("--recipe", default="demo",
                      help="recipe name or YAML path (default: demo, the default recipe + the tiny test CLIP)")
    serve = _command(commands, "serve-testcorpus", "serve the noisy test corpus alone (for benchmarks)", beam=False)
    serve.add_argument("--pairs", type=int, default=100, metavar="N", help="pairs in the corpus (default: 100)")
    serve.add_argument("--seed", type=int, default=0, help="the corpus's random seed (default: 0)")
    serve.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000)")
    serve.add_argument("--input", default="testcorpus.parquet", metavar="PATH",
                       help="where to write the URL list (format from its name; truth.parquet beside it) "
                       "(default: testcorpus.parquet)")
    audit = _command(commands, "audit", "noise statistics of a corpus: one HTML report plus JSON", beam=False)
    audit.add_argument("path", help="an altsieve output, an img2dataset output, or Parquet with url and caption")
    audit.add_argument("--report", required=True, metavar="FOLDER",
                       help="folder for report.html and audit.json (required)")
    audit.add_argument("--samples", type=int, default=6, metavar="N", help="pairs shown per drop reason (default: 6)")
    audit.add_argument("--url-col", dest="url_col", default="url", metavar="NAME",
                       help="url column of bare Parquet (default: url)")
    audit.add_argument("--caption-col", dest="caption_col", default="caption", metavar="NAME",
                       help="caption column of bare Parquet (default: caption)")
    audit.add_argument("--compare", metavar="B", default=None,
                       help="a second corpus (another run, another recipe): report both side by side, their funnels, "
                            "reason deltas, overlap of kept keys and what one kept and the other dropped "
                            "(default: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    # Beam's optional-dependency warnings (apitools, bigquery) are noise to a user of the local runner.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("altsieve").setLevel(logging.INFO)
    if not (args.verbose or args.debug):
        # Beam logs a failing step's traceback before raising it; the one line below says what it was.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    try:
        return _dispatch(args, beam_args)
    except BrokenPipeError:
        # Whoever read the output has gone (`altsieve recipes | head`): end as a command SIGPIPE ends, silently.
        # What is still buffered for stdout then goes nowhere, not into a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as err:
        from altsieve.pipeline.errors import user_error

        problem = None if args.debug else user_error(err, getattr(args, "output", None))
        if problem is None:
            raise  # a bug (or --debug): the traceback is what helps
        print(f"altsieve: error: {problem.message}", file=sys.stderr)
        return problem.exit_code


# The commands that run no Beam pipeline: garbage collection, deferred over the imports (launch.entry), resumes at once.
NO_PIPELINE_COMMANDS = ("audit", "recipes", "serve-testcorpus")


def _dispatch(args: argparse.Namespace, beam_args: list[str]) -> int:
    if args.command in NO_PIPELINE_COMMANDS:
        from altsieve.pipeline.beam_worker import resume_collection

        resume_collection()
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
    from altsieve.pipeline import beam_worker

    if args.command in beam_worker.WORKER_COMMANDS:
        beam_worker.prestart_fork_server(beam_args)  # before Beam's import below: the two import side by side
    beam_worker.import_beam_lean()  # every command from here on runs a pipeline
    check_beam_args(beam_args)
    if args.command == "demo":
        from altsieve.pipeline.demo import run_demo

        stats = run_demo(args.output, args.pairs, args.seed, args.recipe, beam_args)
        dataset = fsutil.join(args.output, "dataset")
        # The demo's transient failures are planted, and its server is gone: no retry advice.
        _print_summary(dataset, stats, _output_config(dataset), retry_hint=False)
        return 0
    if args.command in ("run", "ingest"):
        config = config_from_args(args)
        if args.command == "run":
            stats = run_all(config, args.inputs, args.output, beam_args, args.retry_failed, _crawl_inputs(args))
            _print_summary(args.output, stats, _output_config(args.output), args.inputs)
        else:
            from altsieve.pipeline.ingest import run_ingest

            run_ingest(config, args.inputs, args.output, beam_args, args.retry_failed, _crawl_inputs(args))
            _print_next_pass(args.output, "select")
        return 0
    if args.command == "extract":
        return _extract(args, beam_args)
    config = _output_config(args.output)
    if args.command == "select":
        from altsieve.pipeline.select import run_select

        run_select(config, args.output, beam_args)
        _print_next_pass(args.output, "reshard")
    else:
        from altsieve.core import lease
        from altsieve.pipeline.report import write_reports
        from altsieve.pipeline.reshard import run_reshard

        started = time.time()
        with lease.hold(args.output, "altsieve reshard"):  # the reports too, under the pass's lease
            metrics = run_reshard(config, args.output, beam_args)
            stats = write_reports(config, args.output, metrics, started)
        _print_summary(args.output, stats, config)
    return 0


def _add_crawl_flags(parser: argparse.ArgumentParser) -> None:
    from altsieve.transforms.crawl.listing import DEFAULT_CC_BASE_URL

    group = parser.add_argument_group("crawl inputs (WARC, WAT, *.paths.gz listings)")
    group.add_argument("--limit", type=int, metavar="N",
                       help="read at most this many crawl files, a listing's first ones (default: all)")
    group.add_argument("--cc-base-url", dest="cc_base_url", default=DEFAULT_CC_BASE_URL, metavar="URL",
                       help=f"what a listing's relative paths are resolved against (default: {DEFAULT_CC_BASE_URL})")
    group.add_argument("--surrounding-text", dest="surrounding_text", action="store_true",
                       help="also keep the text around each image, WARC only (default: off)")
    group.add_argument("--keep-svg", dest="keep_svg", action="store_true",
                       help="keep .svg images (default: off, they are skipped)")
    group.add_argument("--crawl-id", dest="crawl_id", metavar="ID",
                       help="crawl id to record when neither warcinfo nor path says (default: none)")
    group.add_argument("--max-record-mib", dest="max_record_mib", type=_positive_mib, default=5.0, metavar="MIB",
                       help="read at most this many MiB of one record's payload (default: 5; Common Crawl truncates "
                            "at 1 MiB, other crawls may not)")


def _positive_mib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} MiB: give a size above 0")
    return value


def _crawl_inputs(args: argparse.Namespace) -> Any:
    from altsieve.pipeline.extract import CrawlInputs
    from altsieve.transforms.crawl.pairs import ExtractOptions

    options = ExtractOptions(surrounding_text=args.surrounding_text, keep_svg=args.keep_svg, crawl_id=args.crawl_id,
                             max_record_bytes=int(args.max_record_mib * (1 << 20)))
    return CrawlInputs(limit=args.limit, cc_base_url=args.cc_base_url, options=options)


def _extract(args: argparse.Namespace, beam_args: list[str]) -> int:
    from altsieve.pipeline.extract import run_extract, summary_lines
    from altsieve.transforms.crawl.listing import list_crawl_files

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


def entry() -> None:
    """The ``altsieve`` command: main(), then the process ends without the interpreter's teardown of every module
    (beam_worker.end_without_teardown: exit handlers and flushed streams first); an exception (a bug, or Ctrl-C)
    ends the process as usual."""
    from altsieve.pipeline.beam_worker import end_without_teardown

    end_without_teardown(main())


if __name__ == "__main__":
    entry()
