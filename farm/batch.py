"""Batch files: many builds in one submission, in the shape of a `docker buildx bake` file.

A batch file is YAML or JSON with a `target` mapping; each entry names a
build:

```yaml
target:
  hello:
    context: examples/hello-c     # relative to the batch file
    dockerfile: Dockerfile        # relative to the context (the default)
    target: runtime               # stage to build (default: the last one)
    tags: [examples/hello:1]      # no registry means the farm's registry
    args: {GREETING: hi}          # build args
    platforms: [linux/amd64]      # default: the farm's default platform
```

A `group` mapping may be present, as in bake files; it is read but every
target is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import FarmError

_ENTRY_KEYS = {"context", "dockerfile", "target", "tags", "args", "platforms"}


@dataclass
class BuildEntry:
    """One build of a batch: a Dockerfile, its context, target, tags, args and platforms."""

    name: str
    context: Path
    dockerfile: Path
    target: str | None = None
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    platforms: list[str] = field(default_factory=list)


def load_batch(path: Path) -> list[BuildEntry]:
    """Read the batch file at `path`; raise FarmError naming the file and entry on a bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FarmError(f"batch file not found: {path}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise FarmError(f"{path}: invalid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None

    if (
        not isinstance(document, dict)
        or not isinstance(document.get("target"), dict)
        or not document["target"]
    ):
        raise FarmError(f"{path}: a batch file needs a 'target' mapping with at least one entry")
    base = path.parent
    return [_entry(path, base, name, values) for name, values in document["target"].items()]


def _entry(path: Path, base: Path, name: str, values: object) -> BuildEntry:
    where = f"{path}: target {name!r}"
    if not isinstance(values, dict):
        raise FarmError(f"{where}: expected a mapping of settings")
    unknown = sorted(set(values) - _ENTRY_KEYS)
    if unknown:
        raise FarmError(
            f"{where}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(_ENTRY_KEYS))}"
        )

    context = base / _string(values.get("context", "."), f"{where}: context")
    dockerfile = context / _string(values.get("dockerfile", "Dockerfile"), f"{where}: dockerfile")
    target = values.get("target")
    return BuildEntry(
        name=name,
        context=context,
        dockerfile=dockerfile,
        target=None if target is None else _string(target, f"{where}: target"),
        tags=_strings(values.get("tags", []), f"{where}: tags"),
        build_args={str(k): str(v) for k, v in _mapping(values.get("args", {}), f"{where}: args").items()},
        platforms=_strings(values.get("platforms", []), f"{where}: platforms"),
    )


def _string(value: object, where: str) -> str:
    if isinstance(value, (str, int)) and str(value):
        return str(value)
    raise FarmError(f"{where}: expected a non-empty string, got {value!r}")


def _strings(value: object, where: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise FarmError(f"{where}: expected a list of strings, got {value!r}")


def _mapping(value: object, where: str) -> dict:
    if isinstance(value, dict):
        return value
    raise FarmError(f"{where}: expected a mapping, got {value!r}")
