"""The contract every per-pair rule keeps, after datatrove's ``BaseFilter``.

A rule is one small class:

- ``stage``: the funnel stage it belongs to (``altsieve.core.reasons.FUNNEL``), which says where in the
  pipeline it runs (caption and text rules before download, image rules after decode, CLIP rules
  after scoring);
- ``reasons``: every reason code its ``check`` can return (each declared by that stage);
- ``from_config(config)``: the rule as the recipe sets it, or ``None`` when the recipe leaves it off;
- ``check(record)``: ``None`` to keep the pair, a reason code to drop it (or ``(code, message)`` when a
  message helps whoever reads the row).

Rules never raise on odd input and never mutate the record, so a rule can be tested on a plain dict.
Defining a class that names its ``stage`` registers it (``SettingRule`` is the base of the rules built
from one setting); ``RuleSet`` runs the registered rules of a stage that a config
switches on, in the order they were defined (cheapest first), and counts every reason it gives:
statistics come free from the reason codes.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from altsieve.core import reasons as reason_codes
from altsieve.core.config import Config

Record = Mapping[str, Any]
# What ``check`` returns: None (keep), a reason code, or a reason code and a message for error_message.
Verdict = str | tuple[str, str] | None

_REGISTRY: list[type[PairRule]] = []


class PairRule(ABC):
    """Base class of the per-pair rules (see the module docstring)."""

    stage: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]]
    # Where in its stage a rule runs, for the two stages that run in two places: text rules that read
    # LanguageTag's fields run after it (the others before it); image rules on the byte count alone run
    # before decoding (the others on the decoded dimensions).
    needs_language: ClassVar[bool] = False
    before_decode: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls) or "stage" not in cls.__dict__:
            return  # a base class that rules share (it names no stage of its own): not a rule
        stage = reason_codes.STAGES.get(getattr(cls, "stage", ""))
        if stage is None:
            raise TypeError(f"{cls.__name__}.stage must name a funnel stage: one of {', '.join(reason_codes.STAGES)}")
        undeclared = [code for code in getattr(cls, "reasons", ()) if code not in stage.reasons]
        if not getattr(cls, "reasons", ()) or undeclared:
            raise TypeError(f"{cls.__name__}.reasons must be codes of the {stage.name!r} stage "
                            f"(altsieve.core.reasons.FUNNEL); not declared there: {', '.join(undeclared) or '(none)'}")
        _REGISTRY.append(cls)

    @classmethod
    @abstractmethod
    def from_config(cls, config: Config) -> PairRule | None:
        """The rule with the recipe's settings, or None when the recipe switches it off."""

    @abstractmethod
    def check(self, record: Record) -> Verdict:
        """None to keep the pair; its reason code (or code and message) to drop it."""


class SettingRule(PairRule):
    """A rule built from one setting of the config (``setting``, a dotted field name): off when the recipe
    leaves it None, False or empty; otherwise ``self.bound`` holds its value for ``check``."""

    setting: ClassVar[str]

    def __init__(self, bound: Any) -> None:
        self.bound = bound

    @classmethod
    def from_config(cls, config: Config) -> SettingRule | None:
        value: Any = config
        for part in cls.setting.split("."):
            value = getattr(value, part)
        # Identity, not equality: 0 == False, and a bound of 0 (max_faces: 0, min_score: 0.0) is a real setting.
        return cls(value) if value is not None and value is not False and value != [] else None


def registered_rules(stage: str) -> list[type[PairRule]]:
    """The rule classes of a stage, in the order they were defined (filters/ imports every rule module)."""
    import altsieve.filters  # noqa: F401 - defining the rule classes registers them

    return [rule for rule in _REGISTRY if rule.stage == stage]


class RuleSet:
    """The rules of one or more stages that a config switches on; ``apply`` gives the first reason to drop.

    ``dropped`` counts every reason given (the Beam stages report it as ``dropped.<reason>`` counters).
    """

    def __init__(self, rules: list[PairRule]) -> None:
        self.rules = rules
        self.dropped: Counter[str] = Counter()

    @classmethod
    def for_stages(cls, config: Config, *stages: str,
                   when: Callable[[type[PairRule]], bool] | None = None) -> RuleSet:
        """The rules of ``stages`` (in funnel order) that the config switches on and ``when`` selects."""
        rules = []
        for stage in stages:
            for rule_class in registered_rules(stage):
                if when is not None and not when(rule_class):
                    continue
                rule = rule_class.from_config(config)
                if rule is not None:
                    rules.append(rule)
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def apply(self, record: Record) -> tuple[str, str | None] | None:
        """The first rule's verdict that drops the record, as ``(reason, message or None)``; None: kept."""
        for rule in self.rules:
            verdict = rule.check(record)
            if verdict is None:
                continue
            reason, message = (verdict, None) if isinstance(verdict, str) else verdict
            self.dropped[reason] += 1
            return reason, message
        return None

    def first_reason(self, record: Record) -> str | None:
        verdict = self.apply(record)
        return None if verdict is None else verdict[0]

    def take_counts(self) -> Counter[str]:
        """The counts since the last call (a Beam stage adds them to its counters at the end of a bundle)."""
        counts, self.dropped = self.dropped, Counter()
        return counts
