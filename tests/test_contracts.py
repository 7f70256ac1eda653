"""The declarations the stages share agree with each other: reason codes, the funnel, rules and columns."""

from __future__ import annotations

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, registered_rules
from altsieve.transforms import shards


def _declared_codes() -> set[str]:
    skip = {"UNKNOWN_STATUS_PREFIX", "INPUT", "CAPTION", "TEXT", "DOWNLOAD", "DECODE", "IMAGE", "CLIP", "CORPUS",
            "DEDUP", "SAFETY", "CONTENT", "HEADS", "BALANCE"}
    return {value for name, value in vars(reasons).items()
            if name.isupper() and isinstance(value, str) and name not in skip and not name.startswith(("STATUS_",
                                                                                                         "CRAWL_"))}


def test_every_reason_code_is_in_exactly_one_funnel_stage() -> None:
    listed = [code for stage in reasons.FUNNEL for code in stage.reasons]
    assert len(listed) == len(set(listed)), "a code listed in two stages"
    assert _declared_codes() == set(listed)
    assert set(listed) >= reasons.TRANSIENT


def test_funnel_counts_add_up() -> None:
    counts = {"kept": 5, reasons.URL_INVALID: 1, reasons.DOWNLOAD_TIMEOUT: 2, reasons.DUPLICATE_PHASH: 3,
              "some_future_code": 1}
    funnel = reasons.funnel(counts)
    assert funnel["input_pairs"] == 12 and funnel["kept"] == 5
    by_stage = {stage["stage"]: stage for stage in funnel["stages"]}
    assert by_stage["valid input row"]["remaining"] == 11
    assert by_stage["fetched"]["remaining"] == 9
    assert by_stage["deduplicated"]["dropped"] == 3
    assert by_stage["other rules"]["reasons"][0]["reason"] == "some_future_code"
    assert funnel["stages"][-1] == {"stage": "kept", "remaining": 5, "dropped": 0, "percent_of_input": 41.67,
                                    "reasons": []}


def test_every_rule_builds_from_the_default_config_and_declares_its_stage() -> None:
    rules = [rule for stage in reasons.STAGES for rule in registered_rules(stage)]
    assert len(rules) >= 20
    for rule in rules:
        assert issubclass(rule, PairRule)
        assert set(rule.reasons) <= set(reasons.STAGES[rule.stage].reasons)
        rule.from_config(Config())  # off or on, never an error


def test_output_columns_are_declared_once_and_documented() -> None:
    assert len(shards.COLUMN_NAMES) == len(set(shards.COLUMN_NAMES))
    # The dataset card lists every column with its meaning.
    assert [column.name for column in shards.COLUMNS if not column.doc] == []
    assert not set(shards.COLUMN_NAMES) & shards.INTERNAL_FIELDS


def test_an_undeclared_record_field_is_refused_not_dropped() -> None:
    import pytest

    with pytest.raises(ValueError, match="sharpness_score"):
        shards.to_table([{"key": "0", "reason": None, "sharpness_score": 0.5}], [])
