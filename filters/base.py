"""The one contract every rule keeps: ``check(record) -> None`` to keep, or a reason code to drop.

Rules never raise on odd input and never mutate the record: statistics then come for free from
the reason codes, and a rule can be tested on a plain dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    """A named predicate: ``check`` returns ``None`` to keep the pair, or its reason code."""

    name: str
    check: Callable[[Record], str | None]


def first_reason(rules: Sequence[Rule], record: Record) -> str | None:
    """The reason of the first rule that drops the record, in the order the rules were given."""
    for rule in rules:
        reason = rule.check(record)
        if reason is not None:
            return reason
    return None
