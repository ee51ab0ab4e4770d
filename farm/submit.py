"""The producer: turn build entries into one graph of stage tasks and queue it.

`submit` checks everything a user can get wrong (Dockerfiles, tags,
contexts, COPY sources, Redis, the registry and the live platforms)
before it writes anything, so a failed submission leaves nothing queued.
Stages with equal content keys are planned once, across entries and
platforms; a stage whose key is already in the registry is not built.
"""

from __future__ import annotations

import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .batch import BuildEntry
from .build_secrets import BuildSecret, seal_secrets, store_secrets
from .build_store import BuildStore
from .celery_app import create_app, send_stage
from .config import Settings
from .connections import connect_redis, connect_registry
from .context import PackedContext, pack_context
from .errors import FarmError
from .fleet import require_mount_from, require_platforms, route_stage
from .graph import StageGraphBuilder
from .inline_images import plan_inline_images, push_inline_images
from .plan import Plan, plan_dockerfile
from .reference import ImageReference, parse_reference
from .registry import RegistryClient
from .spec import StageResult, StageSpec
from .stages import default_platform

log = structlog.get_logger(__name__)

_UPLOAD_THREADS = 8


@dataclass
class BuildUnit:
    """One entry built for one platform: its plan and the stage id of its target."""

    entry: BuildEntry
    platform: str
    plan: Plan
    target_id: str = ""


@dataclass
class SubmittedBuild:
    """A build stored in Redis: its units, stages and tags per entry."""

    build_id: str
    units: list[BuildUnit]
    specs: dict[str, StageSpec]
    tags: dict[str, list[ImageReference]] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)

    @property
    def entries(self) -> list[str]:
        return list(dict.fromkeys(unit.entry.name for unit in self.units))

    def units_of(self, entry: str) -> list[BuildUnit]:
        return [unit for unit in self.units if unit.entry.name == entry]


def submit(
    entries: list[BuildEntry],
    settings: Settings,
    use_cache: bool = True,
    secrets: list[BuildSecret] | None = None,
) -> SubmittedBuild:
    """Plan every entry, upload contexts, store the build and its encrypted secrets, and queue its first stages."""
    sealed = seal_secrets(secrets or [], settings.secret_key)
    units = _plan_units(entries)
    tags = {entry.name: [resolve_tag(tag, settings) for tag in entry.tags] for entry in entries}
    for entry in entries:
        if not entry.context.is_dir():
            raise FarmError(f"build context not found: {entry.context} is not a directory")

    redis_client = connect_redis(settings)
    require_platforms(redis_client, {unit.platform for unit in units})
    with connect_registry(settings) as registry:
        specs, cached_results = _plan_stages(units, registry, settings, use_cache)
    require_mount_from(redis_client, [spec for node, spec in specs.items() if node not in cached_results])

    build_id = uuid.uuid4().hex[:12]
    record = {
        "entries": " ".join(dict.fromkeys(entry.name for entry in entries)),
        "targets": " ".join(unit.target_id for unit in units),
    }
    store = BuildStore(redis_client)
    roots = store.create(build_id, record, list(specs.values()), cached_results)
    store_secrets(redis_client, build_id, sealed)

    app = create_app(settings)
    for stage_id in roots:
        send_stage(app, build_id, stage_id, route_stage(redis_client, specs[stage_id]))
    log.info(
        "build submitted", build_id=build_id, stages=len(specs), cached=len(cached_results), queued=roots
    )
    return SubmittedBuild(build_id, units, specs, tags, set(cached_results))


def _plan_units(entries: list[BuildEntry]) -> list[BuildUnit]:
    units = []
    for entry in entries:
        for platform in entry.platforms or [default_platform()]:
            plan = plan_dockerfile(entry.dockerfile, entry.target, entry.build_args, platform)
            units.append(BuildUnit(entry, platform, plan))
    return units


def _plan_stages(
    units: list[BuildUnit], registry: RegistryClient, settings: Settings, use_cache: bool
) -> tuple[dict[str, StageSpec], dict[str, StageResult]]:
    """Key every stage of every unit, merge equal keys, and find the cached ones."""
    builder = StageGraphBuilder(settings, registry, naming=_Naming(units))
    for unit in units:
        push_inline_images(registry, settings.stages_repository, plan_inline_images(unit.plan))
    with tempfile.TemporaryDirectory(prefix="farm-context-") as scratch:
        contexts = _upload_contexts(
            registry, [unit.entry.context.resolve() for unit in units], Path(scratch), settings
        )
        for unit in units:
            unit.target_id = builder.add(unit, contexts[unit.entry.context.resolve()])
    targets = [unit.target_id for unit in units]
    cached = builder.find_cached(registry, targets) if use_cache else {}
    if not use_cache:
        for spec in builder.specs.values():
            spec.no_cache = True
    return builder.prune(cached, targets), cached


def _upload_contexts(
    registry: RegistryClient, directories: list[Path], scratch: Path, settings: Settings
) -> dict[Path, PackedContext]:
    """Pack each distinct context and upload those the registry does not have yet, in parallel."""
    packed = {}
    for directory in dict.fromkeys(directories):
        archive = Path(tempfile.mkdtemp(dir=scratch)) / "context.tar.gz"
        packed[directory] = pack_context(directory, archive, settings.context_limit)

    def upload(context: PackedContext) -> None:
        registry.push_blob(settings.contexts_repository, context.path, context.digest)

    with ThreadPoolExecutor(max_workers=_UPLOAD_THREADS) as pool:
        list(pool.map(upload, packed.values()))
    log.info(
        "contexts uploaded", contexts=len(packed), bytes=sum(context.size for context in packed.values())
    )
    return packed


class _Naming:
    """Stage ids within a build: `[entry/]stage[@platform]`, as short as stays unique."""

    def __init__(self, units: list[BuildUnit]) -> None:
        self._several_entries = len({unit.entry.name for unit in units}) > 1
        self._several_platforms = {
            unit.entry.name: len({u.platform for u in units if u.entry.name == unit.entry.name}) > 1
            for unit in units
        }

    def __call__(self, unit: BuildUnit, stage_id: str) -> str:
        name = f"{unit.entry.name}/{stage_id}" if self._several_entries else stage_id
        if self._several_platforms[unit.entry.name]:
            name += f"@{unit.platform}"
        return name


def resolve_tag(text: str, settings: Settings) -> ImageReference:
    """Parse a `-t` value; a tag without a registry goes into the farm's registry."""
    try:
        reference = parse_reference(text)
    except ValueError:
        raise FarmError(f"invalid tag {text!r}: expected [REGISTRY/]REPOSITORY[:TAG]") from None
    if reference.digest:
        raise FarmError(f"invalid tag {text!r}: a tag cannot name a digest")
    if reference.registry and reference.registry != settings.registry:
        raise FarmError(
            f"tag {text!r} names registry {reference.registry}, but the farm's registry is "
            f"{settings.registry} (FARM_REGISTRY); tags are written there"
        )
    return ImageReference(settings.registry, reference.repository, reference.tag or "latest")
