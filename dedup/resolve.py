"""From near-duplicate pairs to decisions: greedy in key order, computed in rounds of Beam joins.

"Near" is not transitive (A~B and B~C with A and C far apart), so a rule must say which pairs of
a chain it keeps. The rule here is the sequential greedy one, in key order: **a pair is dropped
when it is near a pair with a smaller key that is kept; otherwise it is kept.** Its results:

* deterministic (keys are stable across reruns and runners);
* every dropped pair names, in ``duplicate_of``, a kept pair it is near (not a dropped one);
* no two kept pairs are near each other, and a chain A~B~C keeps A and C (B is dropped for A):
  union-find would drop C as well, for a pair it is not near.

A sequential loop would need the whole graph in one worker. The same result comes from rounds
(the parallel greedy maximal independent set): a pair whose smaller neighbours are all decided
gets its verdict, kept when every one of them was dropped, dropped as soon as one is kept. Each
round is two joins over the pairs still undecided (the requests "what became of u?" keyed by u,
then the answers keyed by the asking pair), so the shuffle is a few dozen bytes per near pair,
and a pair that is near nothing never enters. Duplicate clusters on the web are stars and short
chains, decided in one or two rounds; what is still undecided after ``rounds`` (chains longer
than that) is finished by the sequential loop in one worker, over that remainder only.

When a drop is decided, ``duplicate_of`` is the smallest kept smaller neighbour known at that
round (deterministic; usually the cluster's smallest key).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from altsieve.filters.corpus import Drop

# (smaller key, its partition_id, larger key, its partition_id)
Edge = tuple[str, str, str, str]
# Pending: (key, (partition_id, sorted smaller neighbours still undecided))
Pending = tuple[str, tuple[str, tuple[str, ...]]]

KEPT, DROPPED, UNDECIDED = "K", "D", "U"
DEFAULT_ROUNDS = 4
# Up to this many rows a pass resolves in no round: the loop takes every undecided pair in one worker. Those are
# the pairs with a smaller near neighbour: 250,000 of them (a quarter of a million rows) take the loop 1.9 s.
# Each round adds two joins, about 0.3 s of Beam per rule whatever the size (select of bench/bench_web.py's 4,565
# pairs: 5.4 s with no round, 6.6-7.5 s with 4, twice each).
ONE_WORKER_ROWS = 1_000_000


def rounds_for(rows: int | None) -> int:
    """Rounds of GreedyResolve for a pass over at most ``rows`` rows (None: not known, the default rounds)."""
    return 0 if rows is not None and rows <= ONE_WORKER_ROWS else DEFAULT_ROUNDS


def _lower_neighbours(element: tuple[str, Iterable[tuple[str, str]]]) -> Pending:
    key, items = element
    items = list(items)
    partition_id = items[0][0]
    return key, (partition_id, tuple(sorted({u for _, u in items})))


def _answer(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, tuple[str, str]]]:
    """For one pair u: tell every pair that asked what became of u."""
    u, joined = element
    if joined["status"]:
        status = joined["status"][0]
    elif joined["pending"]:
        status = UNDECIDED
    else:
        status = KEPT  # u has no smaller neighbour at all: kept from the start
    for asker in joined["requests"]:
        yield asker, (u, status)


class _Decide(beam.DoFn):
    """Verdicts of the pairs whose smaller neighbours are settled; the others stay pending, pruned."""

    def process(self, element: tuple[str, dict[str, list[Any]]]):
        v, joined = element
        if not joined["pending"]:
            return
        partition_id, _ = joined["pending"][0]
        answers = joined["answers"]
        kept = sorted(u for u, status in answers if status == KEPT)
        if kept:
            yield pvalue.TaggedOutput("status", (v, DROPPED))
            yield pvalue.TaggedOutput("dropped", (v, partition_id, kept[0]))
            return
        undecided = tuple(sorted(u for u, status in answers if status == UNDECIDED))
        if undecided:
            yield pvalue.TaggedOutput("pending", (v, (partition_id, undecided)))
        else:
            yield pvalue.TaggedOutput("status", (v, KEPT))


def _finish_rest(
    element: tuple[None, Iterable[tuple[str, str, list[tuple[str, str]]]]],
) -> Iterator[tuple[str, str, str]]:
    """The pairs still undecided after the rounds, in one worker: the loop, with what their neighbours became.

    Each comes with the answers of its smaller neighbours: kept or dropped by the last round, or still
    undecided, in which case the neighbour is in this remainder too and the loop reaches it first.
    """
    rest = sorted(element[1])
    kept: set[str] = set()
    for key, partition_id, answers in rest:
        kept_lower = sorted(u for u, status in answers if status == KEPT or (status == UNDECIDED and u in kept))
        if kept_lower:
            yield key, partition_id, kept_lower[0]
        else:
            kept.add(key)


def _finish_alone(element: tuple[None, Iterable[Pending]]) -> Iterator[tuple[str, str, str]]:
    """No round before it: the loop over every pair with a smaller near neighbour, whose neighbours are either
    among them (undecided) or have no smaller neighbour themselves (kept)."""
    pending = list(element[1])
    undecided = {v for v, _ in pending}
    rest = [(v, pv, [(u, UNDECIDED if u in undecided else KEPT) for u in lower]) for v, (pv, lower) in pending]
    yield from _finish_rest((None, rest))


class GreedyResolve(beam.PTransform):
    """Edges ``(u, pu, v, pv)`` with ``u < v``, each once -> the drops of the greedy rule above."""

    def __init__(self, reason: str, rounds: int = DEFAULT_ROUNDS) -> None:
        super().__init__()
        self.reason = reason
        self.rounds = rounds

    @staticmethod
    def _answers(pending: beam.PCollection, status: beam.PCollection | None, tag: str) -> beam.PCollection:
        """(v, (u, status of u)) for every smaller neighbour u still listed by a pending pair v."""
        requests = pending | f"{tag}Requests" >> beam.FlatMap(lambda p: ((u, p[0]) for u in p[1][1]))
        markers = pending | f"{tag}Markers" >> beam.Map(lambda p: (p[0], True))
        if status is None:  # first round: nothing decided yet
            status = pending.pipeline | f"{tag}NoStatus" >> beam.Create([])
        return (
            {"requests": requests, "pending": markers, "status": status}
            | f"{tag}Ask" >> beam.CoGroupByKey()
            | f"{tag}Answer" >> beam.FlatMap(_answer)
        )

    def expand(self, edges: beam.PCollection) -> beam.PCollection:
        reason = self.reason
        pending = (
            edges
            | "ByLarger" >> beam.Map(lambda e: (e[2], (e[3], e[0])))
            | "GroupByLarger" >> beam.GroupByKey()
            | "LowerNeighbours" >> beam.Map(_lower_neighbours)
        )
        if self.rounds == 0:
            # No round: every pair with a smaller near neighbour goes to the loop as it is, without the join that
            # asks what became of each neighbour (nothing is decided yet: one with no smaller neighbour is kept).
            # Select of bench_web's 4,565 pairs, 4 times in one process, twice each, interleaved: 2.12-3.13 s
            # with that join, 1.56-2.26 s without (20 -> 15 bundles).
            return (
                pending
                | "RestToOne" >> beam.Map(lambda p: (None, p))
                | "GroupRest" >> beam.GroupByKey()
                | "FinishRest" >> beam.FlatMap(_finish_alone)
                | "AsDrops" >> beam.Map(lambda d: (d[1], (d[0], reason, d[2])))
            )
        status = None
        drops = []
        for index in range(1, self.rounds + 1):
            tag = f"Round{index}"
            decided = (
                {"pending": pending, "answers": self._answers(pending, status, tag)}
                | f"{tag}Gather" >> beam.CoGroupByKey()
                | f"{tag}Decide" >> beam.ParDo(_Decide()).with_outputs("status", "dropped", "pending")
            )
            drops.append(decided.dropped)
            status, pending = decided.status, decided.pending

        # Chains longer than the rounds: finished in one worker, over what is left only.
        def with_answers(element: tuple[str, dict[str, list[Any]]]):
            v, joined = element
            if joined["pending"]:
                yield None, (v, joined["pending"][0][0], list(joined["answers"]))

        rest = (
            {"pending": pending, "answers": self._answers(pending, status, "Rest")}
            | "RestGather" >> beam.CoGroupByKey()
            | "RestToOne" >> beam.FlatMap(with_answers)
            | "GroupRest" >> beam.GroupByKey()
            | "FinishRest" >> beam.FlatMap(_finish_rest)
        )
        drops.append(rest)
        return (
            drops
            | "AllDrops" >> beam.Flatten()
            | "AsDrops" >> beam.Map(lambda d: (d[1], (d[0], reason, d[2])))
        )


def follow_representatives(same: beam.PCollection, resolved: beam.PCollection, reason: str) -> beam.PCollection:
    """Drops of pairs identical to a representative: ``duplicate_of`` moves on when the representative was dropped.

    ``same`` holds ``(key, partition_id, representative)``: pairs with exactly the payload of a smaller one. They
    have the representative's neighbours plus the representative itself, so the greedy rule drops them whatever
    becomes of it; only the name they carry changes, to the kept pair the representative was dropped for.
    """

    def name_kept(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Drop]:
        representative, joined = element
        kept_one = joined["resolved"][0] if joined["resolved"] else representative
        for key, partition_id in joined["same"]:
            yield partition_id, (key, reason, kept_one)

    return (
        {
            "same": same | "FollowKeySame" >> beam.Map(lambda s: (s[2], (s[0], s[1]))),
            "resolved": resolved | "FollowKeyResolved" >> beam.Map(lambda d: (d[1][0], d[1][2])),
        }
        | "FollowJoin" >> beam.CoGroupByKey()
        | "FollowName" >> beam.FlatMap(name_kept)
    )


def drops_from_edges(edges: beam.PCollection, same: beam.PCollection, reason: str,
                     rounds: int = DEFAULT_ROUNDS) -> beam.PCollection:
    """Edges between distinct representatives, plus identical pairs -> every drop of the rule, each once."""
    resolved = edges | "Resolve" >> GreedyResolve(reason, rounds)
    identical = follow_representatives(same, resolved, reason)
    return (resolved, identical) | "Drops" >> beam.Flatten()
