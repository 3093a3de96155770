"""Which DICOM series a model classifies: a small JSON rule format, per model.

A model card may carry ``"series_rules"`` (or a ``series_rules.json`` next to
``card.json`` holding the same list). A file is kept when it matches ANY rule;
a rule matches when ALL of its conditions hold; a condition left out holds::

    [{"modality": ["CT"],
      "image_type": ["AXIAL", "!LOCALIZER", "!SCOUT"],
      "slice_thickness": {"min": 0.5, "max": 5.0},
      "orientation": ["axial"]}]

``image_type`` values must all be present; ``!VALUE`` must be absent.
``orientation`` is ``axial``, ``coronal``, ``sagittal`` or ``oblique``, judged from
ImageOrientationPatient. Without rules the environment's SKIP_IMAGE_TYPES and
ALLOWED_MODALITIES make the one default rule (:meth:`SeriesRules.from_settings`),
the selection ingest always applied. Patterned on MONAI Deploy's
``DICOMSeriesSelectorOperator`` rules, made smaller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import Settings

RULES_FILE = "series_rules.json"
ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique")
_OBLIQUE_BELOW = 0.8  # the largest component of the slice normal, below it: oblique


class InvalidRules(ValueError):
    """A rule set that cannot be read; the message says which rule and why."""


@dataclass(frozen=True)
class FileFacts:
    """What a rule reads from one file's header (no patient data)."""

    modality: str
    image_type: tuple[str, ...]
    slice_thickness: float | None
    orientation: str | None


@dataclass(frozen=True)
class SeriesRule:
    """One rule; empty tuples and None bounds mean "any"."""

    modalities: tuple[str, ...] = ()
    required_types: tuple[str, ...] = ()
    excluded_types: tuple[str, ...] = ()
    min_thickness: float | None = None
    max_thickness: float | None = None
    orientations: tuple[str, ...] = ()

    def problem(self, f: FileFacts) -> str | None:
        """Why ``f`` does not match this rule, or None when it does."""
        if self.modalities and f.modality not in self.modalities:
            allowed = ", ".join(self.modalities)
            return f"modality {f.modality or 'unknown'} is not one of the allowed ({allowed})"
        hits = [t for t in f.image_type if t in self.excluded_types]
        if hits:
            return f"{hits[0].lower()} image (ImageType {hits[0]}), not a diagnostic slice"
        missing = [t for t in self.required_types if t not in f.image_type]
        if missing:
            return f"ImageType lacks {missing[0]}"
        return self._thickness_problem(f) or self._orientation_problem(f)

    def _thickness_problem(self, f: FileFacts) -> str | None:
        if self.min_thickness is None and self.max_thickness is None:
            return None
        t = f.slice_thickness
        low = self.min_thickness if self.min_thickness is not None else float("-inf")
        high = self.max_thickness if self.max_thickness is not None else float("inf")
        if t is None or not low <= t <= high:
            shown = "unknown" if t is None else f"{t:g} mm"
            return f"slice thickness {shown} outside {low:g}..{high:g} mm"
        return None

    def _orientation_problem(self, f: FileFacts) -> str | None:
        if self.orientations and f.orientation not in self.orientations:
            return f"{f.orientation or 'unknown'} orientation, not {'/'.join(self.orientations)}"
        return None


@dataclass(frozen=True)
class SeriesRules:
    """A model's rule set: a file is kept when one rule matches."""

    rules: tuple[SeriesRule, ...]

    def problem(self, f: FileFacts) -> str | None:
        """None to keep the file, else why the first rule refused it."""
        problems = [rule.problem(f) for rule in self.rules]
        return None if any(p is None for p in problems) else problems[0]

    @classmethod
    def from_settings(cls, settings: Settings) -> SeriesRules:
        """Today's environment-level selection (ALLOWED_MODALITIES, SKIP_IMAGE_TYPES)."""
        rule = SeriesRule(
            modalities=tuple(settings.allowed_modalities),
            excluded_types=tuple(settings.skip_image_types),
        )
        return cls((rule,))

    @classmethod
    def parse(cls, data: Any) -> SeriesRules:
        """Rules from their JSON form (a list of rule objects); raises :class:`InvalidRules`."""
        if not isinstance(data, list) or not data:
            raise InvalidRules("series_rules must be a non-empty list of rules")
        return cls(tuple(_rule(i, item) for i, item in enumerate(data)))


def rules_for_model(
    raw_card: Mapping[str, Any], model_dir: Path, settings: Settings
) -> SeriesRules:
    """The card's ``series_rules``, else ``series_rules.json`` next to it, else the default."""
    if raw_card.get("series_rules") is not None:
        return SeriesRules.parse(raw_card["series_rules"])
    path = model_dir / RULES_FILE
    if path.is_file():
        return SeriesRules.parse(json.loads(path.read_text()))
    return SeriesRules.from_settings(settings)


def orientation_name(iop: Sequence[float] | None) -> str | None:
    """``axial``/``coronal``/``sagittal``/``oblique`` from ImageOrientationPatient."""
    if iop is None or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    normal = (
        abs(r[1] * c[2] - r[2] * c[1]),
        abs(r[2] * c[0] - r[0] * c[2]),
        abs(r[0] * c[1] - r[1] * c[0]),
    )
    axis = max(range(3), key=lambda i: normal[i])
    if normal[axis] < _OBLIQUE_BELOW:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _rule(index: int, item: Any) -> SeriesRule:
    if not isinstance(item, dict):
        raise InvalidRules(f"rule {index}: must be an object")
    unknown = set(item) - {"modality", "image_type", "slice_thickness", "orientation"}
    if unknown:
        raise InvalidRules(f"rule {index}: unknown condition(s) {sorted(unknown)}")
    types = _strings(index, item, "image_type")
    thickness = item.get("slice_thickness") or {}
    if not isinstance(thickness, dict) or set(thickness) - {"min", "max"}:
        raise InvalidRules(f"rule {index}: slice_thickness is {{'min': mm, 'max': mm}}")
    orientations = tuple(o.lower() for o in _strings(index, item, "orientation"))
    if set(orientations) - set(ORIENTATIONS):
        raise InvalidRules(f"rule {index}: orientation is one of {', '.join(ORIENTATIONS)}")
    return SeriesRule(
        modalities=tuple(m.upper() for m in _strings(index, item, "modality")),
        required_types=tuple(t.upper() for t in types if not t.startswith("!")),
        excluded_types=tuple(t[1:].upper() for t in types if t.startswith("!")),
        min_thickness=_number(index, thickness.get("min")),
        max_thickness=_number(index, thickness.get("max")),
        orientations=orientations,
    )


def _strings(index: int, item: dict[str, Any], key: str) -> list[str]:
    value = item.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRules(f"rule {index}: {key} must be a list of strings")
    return value


def _number(index: int, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRules(f"rule {index}: slice_thickness bounds are numbers (mm)")
    return float(value)
