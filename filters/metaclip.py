"""MetaCLIP curation (Xu et al. 2023, "Demystifying CLIP Data"), as a corpus rule of the select pass.

1. **Substring matching**: each caption is matched against an entry list (MetaCLIP: 500K entries:
   WordNet synsets, Wikipedia unigrams and bigrams, article titles) with Aho-Corasick
   (pyahocorasick): an entry matches when it occurs in the caption as a substring. A caption
   with no entry is dropped (``metaclip_no_entry``; about half of the English pool in the paper).
2. **Balancing**: ``count(e)`` is how many pairs match entry e over the whole corpus (a Beam
   combine: no worker holds the corpus). The paper's sampling: entry e picks each of its pairs
   with probability ``min(1, t / count(e))`` (t = 20,000 in the paper), and a pair is kept when
   any of its entries picks it; otherwise ``metaclip_balanced``. So the tail entries keep all
   their pairs and the head entries (``photo``, ``image``...) are cut down to about t each.

The draw is a seeded hash of (pair key, entry), not ``random()``: a rerun, or another runner, keeps
the same pairs. Shuffled per pair: one element per matched entry (~40 bytes), the counts per entry
(a side input: 8 bytes an entry), then one element per matched entry for the per-pair verdict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from altsieve.core import reasons
from altsieve.filters.corpus import CorpusRule, Drop

_SCALE = float(1 << 64)


def read_entries(path: str, lowercase: bool) -> list[str]:
    """One entry a line (blank lines skipped; entries are distinct after ``lowercase``)."""
    import fsspec

    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        entries = [line.rstrip("\n\r") for line in handle]
    entries = [e.lower() if lowercase else e for e in entries if e.strip()]
    return list(dict.fromkeys(entries))


def automaton(entries: list[str]) -> Any:
    import ahocorasick

    machine = ahocorasick.Automaton()
    for index, entry in enumerate(entries):
        machine.add_word(entry, index)
    machine.make_automaton()
    return machine


def matched_entries(machine: Any, caption: str) -> list[int]:
    """The distinct entry ids occurring in ``caption`` as substrings, sorted."""
    if not caption or not len(machine):
        return []
    return sorted({index for _, index in machine.iter(caption)})


def draw(key: str, entry: int, seed: int) -> float:
    """A uniform value in [0, 1) from (seed, key, entry): the paper's random draw, made reproducible."""
    digest = hashlib.blake2b(f"{seed}\x00{key}\x00{entry}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / _SCALE


def keep_probability(count: int, t: int) -> float:
    return min(1.0, t / count) if count else 1.0


class _Match(beam.DoFn):
    def __init__(self, entries_file: str, lowercase: bool) -> None:
        self._file, self._lowercase = entries_file, lowercase

    def setup(self) -> None:
        self._machine = automaton(read_entries(self._file, self._lowercase))

    def process(self, row: dict[str, Any]):
        caption = row.get("caption") or ""
        found = matched_entries(self._machine, caption.lower() if self._lowercase else caption)
        if not found:
            yield pvalue.TaggedOutput("unmatched", (row["partition_id"], (row["key"], reasons.METACLIP_NO_ENTRY, None)))
            return
        for entry in found:
            yield entry, (row["key"], row["partition_id"])


def _verdict(element: tuple[str, Iterable[tuple[str, bool]]]) -> Iterator[Drop]:
    key, draws = element
    draws = list(draws)
    if not any(picked for _, picked in draws):
        yield draws[0][0], (key, reasons.METACLIP_BALANCED, None)


class MetaClipBalance(CorpusRule):
    """Rows with ``caption`` -> ``metaclip_no_entry`` and ``metaclip_balanced`` drops (see the module docstring).

    ``record`` (optional) is called once with ``{entry: count}`` of the entries over ``t``, for the report.
    """

    columns = ("key", "partition_id", "caption")

    def __init__(self, entries_file: str, t: int = 20_000, lowercase: bool = False, seed: int = 0,
                 record: Any = None) -> None:
        super().__init__()
        self.entries_file, self.t, self.lowercase, self.seed, self.record = entries_file, t, lowercase, seed, record

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        t, seed = self.t, self.seed
        matched = rows | "Match" >> beam.ParDo(_Match(self.entries_file, self.lowercase)).with_outputs(
            "unmatched", main="matches")
        counts = (
            matched.matches
            | "Ones" >> beam.Map(lambda item: (item[0], 1))
            | "CountPerEntry" >> beam.CombinePerKey(sum)
        )
        over = counts | "OverCap" >> beam.Filter(lambda item: item[1] > t)
        if self.record is not None:
            record = self.record
            _ = (over | "AllOver" >> beam.combiners.ToList()
                 | "Record" >> beam.Map(lambda items: record(dict(sorted(items)))))

        def picked(item: tuple[int, tuple[str, str]], over_cap: dict[int, int]) -> tuple[str, tuple[str, bool]]:
            entry, (key, partition_id) = item
            count = over_cap.get(entry)  # entries at or under t keep every pair
            chosen = count is None or draw(key, entry, seed) < keep_probability(count, t)
            return key, (partition_id, chosen)

        balanced = (
            matched.matches
            | "Draw" >> beam.Map(picked, over_cap=beam.pvalue.AsDict(over))
            | "ByPair" >> beam.GroupByKey()
            | "Verdict" >> beam.FlatMap(_verdict)
        )
        return (matched.unmatched, balanced) | "MetaClipDrops" >> beam.Flatten()
