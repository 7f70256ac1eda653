"""Config schema, recipes, flag overrides and input readers."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altsieve.core import reasons
from altsieve.core.config import (
    CaptionRulesConfig,
    Config,
    ConfigError,
    ImageRulesConfig,
    RulesConfig,
    builtin_recipe_names,
    load_config,
)
from altsieve.filters.base import RuleSet
from altsieve.filters.caption import count_words
from altsieve.pipeline.cli import build_parser, check_beam_args, config_from_args
from altsieve.transforms.decode import image_rule_sets
from altsieve.transforms.read_inputs import InputError, iter_partitions, list_input_files, sniff_input


def test_every_builtin_recipe_validates() -> None:
    names = builtin_recipe_names()
    assert {"default", "minimal"} <= set(names)
    for name in names:
        assert load_config(name).name == name


def test_misspelt_field_gets_a_suggestion(tmp_path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("rules:\n  image:\n    min_sied: 200\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(recipe))
    assert "rules.image.min_sied" in str(err.value)
    assert "min_side" in str(err.value)
    assert str(recipe) in str(err.value)


def test_wrong_type_and_inconsistent_bounds_are_named(tmp_path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("rules:\n  caption:\n    min_words: 10\n    max_words: 3\n")
    with pytest.raises(ConfigError, match="min_words"):
        load_config(str(recipe))
    with pytest.raises(ConfigError, match="not an IP network"):
        load_config("default", [{"download": {"allow_private_addresses": ["localhost"]}}])
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_config("no-such-recipe")


def test_flags_override_the_recipe_in_order() -> None:
    parser = build_parser()
    args, beam = parser.parse_known_args(
        ["run", "in.parquet", "-o", "out", "--image-size", "128", "--set", "rules.image.min_side=300",
         "--allow-private-addresses", "127.0.0.1/32", "--runner", "DirectRunner", "--direct_num_workers", "2"]
    )
    config = config_from_args(args)
    assert config.image.image_size == 128
    assert config.rules.image.min_side == 300
    assert config.download.allow_private_addresses == ["127.0.0.1/32"]
    assert beam == ["--runner", "DirectRunner", "--direct_num_workers", "2"]
    check_beam_args(beam)
    with pytest.raises(ConfigError, match="--no_such_option"):
        check_beam_args(["--no_such_option", "1"])


def test_caption_rules_count_cjk_characters_as_words() -> None:
    assert count_words("two red circles") == 3
    assert count_words("一只猫坐在沙发上") == 8
    assert count_words("Foto 猫") == 2
    rules = RuleSet.for_stages(Config(rules=RulesConfig(caption=CaptionRulesConfig(min_chars=5, max_words=4))),
                               reasons.CAPTION)
    assert rules.first_reason({"caption": "  "}) == reasons.CAPTION_EMPTY
    assert rules.first_reason({"caption": "cat"}) == reasons.CAPTION_TOO_SHORT_CHARS
    assert rules.first_reason({"caption": "a b c d e f"}) == reasons.CAPTION_TOO_MANY_WORDS
    assert rules.first_reason({"caption": "a red cat"}) is None


def test_image_rules() -> None:
    config = ImageRulesConfig(min_side=100, max_aspect_ratio=3, min_pixels=20_000, max_pixels=10**6,
                              min_file_bytes=5000)
    before, rules = image_rule_sets(Config(rules=RulesConfig(image=config)))
    assert rules.first_reason({"original_width": 50, "original_height": 400}) == reasons.IMAGE_TOO_SMALL
    assert rules.first_reason({"original_width": 1000, "original_height": 200}) == reasons.IMAGE_ASPECT_RATIO
    assert rules.first_reason({"original_width": 120, "original_height": 120}) == reasons.IMAGE_TOO_FEW_PIXELS
    assert rules.first_reason({"original_width": 2000, "original_height": 1000}) == reasons.IMAGE_TOO_MANY_PIXELS
    assert rules.first_reason({"original_width": 400, "original_height": 300}) is None
    assert before.first_reason({"bytes": 4000}) == reasons.IMAGE_FILE_TOO_SMALL


ROWS = [{"url": f"http://example.com/{i}.jpg", "caption": f"caption {i}", "source_id": f"s{i}"} for i in range(7)]


def _write(path, fmt: str) -> None:
    if fmt == "parquet":
        if str(path).endswith(".gz"):
            plain = path.with_suffix("")
            pq.write_table(pa.Table.from_pylist(ROWS), plain, row_group_size=3)
            path.write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
        else:
            pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=3)
        return
    if fmt == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in ROWS)
    else:
        sep = "," if fmt == "csv" else "\t"
        text = sep.join(ROWS[0]) + "\n" + "".join(sep.join(row.values()) + "\n" for row in ROWS)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    "name", ["in.parquet", "in.parquet.gz", "in.csv", "in.tsv.gz", "in.jsonl", "in.jsonl.gz", "in.csv.gz"]
)
def test_every_format_reads_into_stable_partitions(tmp_path, name) -> None:
    path = tmp_path / name
    _write(path, name.split(".")[1])
    (source,) = list_input_files([str(tmp_path)])
    partitions = list(iter_partitions(source, "url", "caption", ["source_id"], rows_per_partition=3))
    assert [p.partition_id for p in partitions] == ["00000_0000000000", "00000_0000000003", "00000_0000000006"]
    rows = [row for p in partitions for row in p.rows]
    assert [r["key"] for r in rows] == [f"00000{i:010d}" for i in range(7)]
    assert [r["extra"]["source_id"] for r in rows] == [f"s{i}" for i in range(7)]
    assert all(r["reason"] is None for r in rows)


def test_missing_column_and_bad_file_are_one_clear_error(tmp_path) -> None:
    good = tmp_path / "a.parquet"
    _write(good, "parquet")
    (source,) = list_input_files([str(good)])
    with pytest.raises(InputError, match=r"a\.parquet: column 'text' not found"):
        sniff_input(source, "url", "text")
    broken = tmp_path / "b.parquet"
    broken.write_bytes(b"definitely not parquet")
    (source,) = list_input_files([str(broken)])
    with pytest.raises(InputError, match=r"b\.parquet: not a readable Parquet file"):
        sniff_input(source, "url", "caption")
    with pytest.raises(InputError, match="no file matches|no such file"):
        list_input_files([str(tmp_path / "missing-*.csv")])


def test_bad_rows_become_rows_with_a_reason(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"url": "http://a/1.jpg", "caption": "x"}\nnot json\n{"url": "", "caption": "y"}\n')
    (source,) = list_input_files([str(path)])
    rows = [r for p in iter_partitions(source, "url", "caption", [], 10) for r in p.rows]
    assert [r["reason"] for r in rows] == [None, reasons.INPUT_MALFORMED_ROW, reasons.URL_MISSING]
