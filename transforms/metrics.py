"""Beam counters the stages share: what each stage's rules dropped, by reason."""

from __future__ import annotations

from apache_beam.metrics import Metrics

from altsieve.filters.base import RuleSet


def count_drops(rules: RuleSet) -> None:
    """A stage's drops since the last call as Beam counters ``dropped.<reason>`` (datatrove's ``dropped_<reason>``).

    Called at the end of each bundle: one counter update per reason, not one per pair.
    """
    for reason, count in rules.take_counts().items():
        Metrics.counter("altsieve", f"dropped.{reason}").inc(count)
