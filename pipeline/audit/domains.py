"""Domains of the pairs' URLs, and a counter whose memory is capped however many distinct domains there are."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

DOMAIN_CAP = 200_000  # distinct domains kept exactly before the rarest are folded
_HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>[^/?#:]+)"


class TopCounter:
    """A counter whose size is capped: past ``cap`` keys the rarest half is folded into ``folded``.

    Counts of the keys that stay can be short by at most ``max_folded`` (the largest count folded),
    which the report states; below the cap every count is exact.
    """

    def __init__(self, cap: int = DOMAIN_CAP) -> None:
        self.cap = cap
        self.counts: Counter[Any] = Counter()
        self.folded = 0
        self.max_folded = 0

    def update(self, items: dict[Any, int]) -> None:
        self.counts.update(items)
        if len(self.counts) > self.cap:
            keep = dict(self.counts.most_common(self.cap // 2))
            dropped = [v for k, v in self.counts.items() if k not in keep]
            self.folded += sum(dropped)
            self.max_folded = max(self.max_folded, max(dropped))
            self.counts = Counter(keep)


def hosts(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    hosts = pc.struct_field(pc.extract_regex(urls, _HOST), "host")
    hosts = pc.replace_substring_regex(pc.utf8_lower(hosts), r"^www\.", "")
    return pc.if_else(pc.is_valid(hosts), hosts, pa.scalar("(no host)"))
