"""The funnels that published web image-text corpora report, for the audit to set beside its own.

Every number comes from ``shared/reference/published-curation-rules.md`` (facts collected from
the papers, blog posts and official READMEs); ``source`` names the table and row it is taken from.
Where a source gives no number, none is made up here: a stage without a count says so, and a
share the source states only as a share ("about 90 % removed") is kept as that share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REFERENCE = "shared/reference/published-curation-rules.md"


@dataclass(frozen=True)
class PublishedStage:
    stage: str
    count: float | None  # None: the source gives a share or a note, not a count
    as_published: str  # the figure as the source words it ("50B+", "about 10B")


@dataclass(frozen=True)
class PublishedFunnel:
    corpus: str
    source: str  # the reference table and row
    stages: list[PublishedStage]
    # The share of the first stage that was kept, as the source states it (percent), or None.
    kept_percent: float | None
    kept_percent_as_published: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        first = self.stages[0].count
        return {
            "corpus": self.corpus,
            "source": f"{REFERENCE}: {self.source}",
            "stages": [
                {
                    "stage": s.stage,
                    "count": s.count,
                    "as_published": s.as_published,
                    "percent_of_first": round(100.0 * s.count / first, 2) if s.count and first else None,
                }
                for s in self.stages
            ],
            "kept_percent": self.kept_percent,
            "kept_percent_as_published": self.kept_percent_as_published,
            "notes": list(self.notes),
        }


PUBLISHED_FUNNELS: list[PublishedFunnel] = [
    PublishedFunnel(
        corpus="LAION-5B",
        source="table 'LAION-400M / LAION-5B (official LAION blog posts)', row 'funnel', column 5B",
        stages=[
            PublishedStage("candidate pairs", 50e9, "50B+"),
            PublishedStage("kept", 5.85e9, "5.85B"),
        ],
        kept_percent=10.0,
        kept_percent_as_published="about 90 % removed",
        notes=["unsafe about 3 %, watermark about 6 %: tagged, not removed",
               "CLIP ViT-B/32 cosine >= 0.28 (English), multilingual CLIP >= 0.26 (other)"],
    ),
    PublishedFunnel(
        corpus="DataComp CommonPool",
        source="table 'DataComp (Gadre et al. 2023; baselines/apply_filter.py)', row 'funnel'",
        stages=[
            PublishedStage("URL-text pairs", 88e9, "88B"),
            PublishedStage("download attempts", 40e9, "40B"),
            PublishedStage("images downloaded", 16.8e9, "16.8B"),
        ],
        kept_percent=None,
        kept_percent_as_published="not published as one share",
        notes=["NSFW removal about 19 %", "eval-set dedup about 3 % (about 2.8 % of downloads flagged)"],
    ),
    PublishedFunnel(
        corpus="COYO-700M",
        source="table 'COYO-700M (official README)', header '747M kept from about 10B (about 7.5 %)'",
        stages=[
            PublishedStage("candidate pairs", 10e9, "about 10B"),
            PublishedStage("kept", 747e6, "747M"),
        ],
        kept_percent=7.5,
        kept_percent_as_published="about 7.5 %",
        notes=["image >= 5 KB, aspect <= 3, min side >= 200; English text; exact pHash and text dedup"],
    ),
    PublishedFunnel(
        corpus="Wukong",
        source="table 'Wukong (Gu et al. 2022)', header '100M Chinese pairs kept from about 2B raw (about 5 %)'",
        stages=[
            PublishedStage("raw pairs", 2e9, "about 2B"),
            PublishedStage("kept", 100e6, "100M"),
        ],
        kept_percent=5.0,
        kept_percent_as_published="about 5 %",
        notes=["both sides > 200 px, aspect 1/3..3, Chinese text, meaningless and too-frequent text dropped"],
    ),
]


def published_funnels_json() -> list[dict]:
    return [funnel.to_json() for funnel in PUBLISHED_FUNNELS]
