"""The one settings object: environment names equal field names, and .env.example lists them all."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterator

import pytest

from config import Settings
from tests.conftest import ROOT


def test_every_setting_is_documented_in_env_example() -> None:
    listed = set(re.findall(r"^#?([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = {name.upper() for name in Settings.model_fields} - listed
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_environment_names_are_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_BATCH_SIZE", "16")
    monkeypatch.setenv("SKIP_IMAGE_TYPES", "localizer, scout")
    monkeypatch.setenv("MODELS_DIRS", "models/store:/opt/models")
    monkeypatch.setenv("STALE_AFTER_S", "")  # empty means "the default"
    s = Settings()
    assert s.inference_batch_size == 16 and s.stale_after_s == 30.0
    assert s.skip_image_types == ("LOCALIZER", "SCOUT")
    assert [str(p) for p in s.models_dirs] == [str(ROOT / "models" / "store"), "/opt/models"]


def test_nonsense_values_are_refused() -> None:
    with pytest.raises(ValueError, match="inference_batch_size"):
        Settings(inference_batch_size=0)
    with pytest.raises(ValueError, match="store_source_paths"):
        Settings(store_source_paths="some")


# Library code gets its settings from its caller; only entry points read them from the
# environment (get_settings() or Settings()), so a test passes what it means and resets
# nothing. Besides every module's ``main()``, these entry points may read them:
ENTRY_POINTS = {
    # the worker's Celery app is configured once, when the worker process imports it
    ("worker/celery_app.py", "<module>"),
    # builds the worker's Context: tasks, the claimer and the sweeper get settings from it
    ("worker/context.py", "worker_context"),
    # the worker_ready signal handler, which starts the metrics server
    ("worker/signals.py", "_start_sweeper_and_metrics"),
}
LIBRARY_PACKAGES = ("worker", "db", "ingest", "storage", "models", "dicomnet")


def _reads_settings(node: ast.AST) -> bool:
    """``get_settings`` named (called or passed on), or ``Settings(...)`` called."""
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) == "get_settings"
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Settings"


def _settings_reads(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """(top-level function or class, or ``<module>``; line) of each settings read."""
    for top in tree.body:
        scope = "<module>"
        if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scope = top.name
        for node in ast.walk(top):
            if _reads_settings(node):
                yield scope, getattr(node, "lineno", 0)


def test_only_entry_points_read_the_settings() -> None:
    found = set()
    for package in LIBRARY_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            for scope, line in _settings_reads(ast.parse(path.read_text(), name)):
                found.add((name, scope, line))
    library = sorted(f for f in found if f[1] != "main" and f[:2] not in ENTRY_POINTS)
    assert not library, f"pass settings in from the entry point instead: {library}"
    assert {f[:2] for f in found} >= ENTRY_POINTS, "an entry point no longer reads settings"


def test_database_and_model_functions_need_their_source_given() -> None:
    from db.migrate import upgrade
    from db.session import get_engine, session_scope
    from worker.inference import get_predictor

    required: list[tuple[Callable[..., object], str]] = [
        (get_engine, "url"),
        (session_scope, "url"),
        (upgrade, "url"),
        (get_predictor, "models_dirs"),
    ]
    for function, parameter in required:
        default = inspect.signature(function).parameters[parameter].default
        assert default is inspect.Parameter.empty, f"{function.__qualname__}({parameter}=...)"
