"""The producer: turn one Dockerfile into stage tasks, then finish the build.

`submit` checks everything a user can get wrong (the Dockerfile, the
tags, the context, Redis and the registry) before it writes anything, so
a failed submission leaves nothing queued. `write_tags` runs once the
target stage is built.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .build_store import BuildStore
from .celery_app import create_app, send_stage
from .config import Settings
from .connections import connect_redis, connect_registry
from .content_key import reads_context, stage_key
from .context import pack_context
from .errors import FarmError, RegistryError
from .fleet import require_platforms
from .inline_images import plan_inline_images, push_inline_images
from .plan import Plan, plan_dockerfile
from .reference import ImageReference, parse_reference
from .registry import RegistryClient
from .render import render_stage
from .spec import StageSpec
from .stages import default_platform

log = structlog.get_logger(__name__)


@dataclass
class BuildRequest:
    """What `farm build` was asked to build."""

    dockerfile: Path
    context: Path
    tags: list[str] = field(default_factory=list)
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    platform: str | None = None


@dataclass
class SubmittedBuild:
    """A build stored in Redis, with its stages and tags."""

    build_id: str
    plan: Plan
    specs: dict[str, StageSpec]
    tags: list[ImageReference]

    @property
    def target_id(self) -> str:
        return self.plan.target.id


def submit(request: BuildRequest, settings: Settings) -> SubmittedBuild:
    """Plan, upload the context, store the build and queue its first stages."""
    platform = request.platform or default_platform()
    plan = plan_dockerfile(request.dockerfile, request.target, request.build_args, platform)
    tags = [resolve_tag(tag, settings) for tag in request.tags]
    if not Path(request.context).is_dir():
        raise FarmError(f"build context not found: {request.context} is not a directory")

    redis_client = connect_redis(settings)
    require_platforms(redis_client, {stage.platform or platform for stage in plan.stages})
    with connect_registry(settings) as registry:
        context_digest = _upload_context(registry, Path(request.context), settings)
        push_inline_images(registry, settings.stages_repository, plan_inline_images(plan))

    build_id = uuid.uuid4().hex[:12]
    specs = build_specs(plan, settings, request.build_args, platform, context_digest)
    store = BuildStore(redis_client)
    record = {
        "target": plan.target.id,
        "dockerfile": str(request.dockerfile),
        "context_digest": context_digest,
        "tags": " ".join(str(tag) for tag in tags),
    }
    roots = store.create(build_id, record, list(specs.values()))

    app = create_app(settings)
    for stage_id in roots:
        send_stage(app, build_id, stage_id, specs[stage_id].platform)
    log.info("build submitted", build_id=build_id, stages=len(specs), queued=roots)
    return SubmittedBuild(build_id, plan, specs, tags)


def build_specs(
    plan: Plan,
    settings: Settings,
    build_args: dict[str, str],
    platform: str,
    context_digest: str | None,
) -> dict[str, StageSpec]:
    """Key and render every planned stage, dependencies first."""
    graph = plan.graph
    stage_keys: dict[int, str] = {}
    specs: dict[str, StageSpec] = {}
    registry_stages = f"{settings.registry}/{settings.stages_repository}"

    for stage in plan.stages:
        stage_platform = stage.platform or platform
        canonical = render_stage(graph, stage, lambda index: f"stages:{stage_keys[index]}")
        context = context_digest if reads_context(stage, graph.path) else None
        key = stage_key(canonical.dockerfile, build_args, stage_platform, context)
        stage_keys[stage.index] = key

        rendered = render_stage(
            graph, stage, lambda index: f"{registry_stages}:{stage_keys[index]}", registry_stages
        )
        specs[stage.id] = StageSpec(
            id=stage.id,
            index=stage.index,
            key=key,
            image=f"{registry_stages}:{key}",
            dockerfile=rendered.dockerfile,
            step_lines=rendered.step_lines,
            needs=plan.needs_ids(stage),
            dependants=[],
            platform=stage_platform,
            build_args=dict(build_args),
            context_digest=context,
            source_path=graph.path,
            from_line=stage.from_instruction.line,
        )

    for spec in specs.values():
        for needed in spec.needs:
            specs[needed].dependants.append(spec.id)
    return specs


def resolve_tag(text: str, settings: Settings) -> ImageReference:
    """Parse a `-t` value; a tag without a registry goes into the farm's registry."""
    try:
        reference = parse_reference(text)
    except ValueError:
        raise FarmError(f"invalid tag {text!r}: expected [REGISTRY/]REPOSITORY[:TAG]") from None
    if reference.digest:
        raise FarmError(f"invalid tag {text!r}: a tag cannot name a digest")
    if not reference.registry:
        return ImageReference(settings.registry, reference.repository, reference.tag or "latest")
    if reference.registry != settings.registry:
        raise FarmError(
            f"tag {text!r} names registry {reference.registry}, but the farm's registry is "
            f"{settings.registry} (FARM_REGISTRY); tags are written there"
        )
    return ImageReference(reference.registry, reference.repository, reference.tag or "latest")


def write_tags(registry: RegistryClient, settings: Settings, build: SubmittedBuild, digest: str) -> None:
    """Point every requested tag at the target's manifest and check that it is there."""
    for tag in build.tags:
        registry.copy_image(settings.stages_repository, digest, tag.repository, tag.reference)
        manifest = registry.get_manifest(tag.repository, tag.reference)
        if manifest is None or manifest.digest != digest:
            raise RegistryError(f"tag {tag} was written but the registry does not return {digest} for it")
        log.info("tag written", build_id=build.build_id, tag=str(tag), digest=digest)


def _upload_context(registry: RegistryClient, context: Path, settings: Settings) -> str:
    with tempfile.TemporaryDirectory(prefix="farm-context-") as scratch:
        packed = pack_context(context, Path(scratch) / "context.tar.gz")
        registry.push_blob(settings.contexts_repository, packed.path, packed.digest)
    log.info("context uploaded", digest=packed.digest, bytes=packed.size, files=packed.files)
    return packed.digest
