"""The stage graph of one submission: keyed, merged across entries, pruned by the cache.

Each planned stage becomes a node named by the build (see `submit`);
stages with equal content keys become one node, so a toolchain stage
shared by several Dockerfiles is built once. A node whose key is already
in the registry is cached, and the stages only it needed are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .buildah_support import mount_from_line
from .config import Settings
from .content_key import context_files, stage_key, visible_build_args
from .context import PackedContext
from .errors import DockerfileError
from .reference import parse_reference
from .registry import RegistryClient
from .render import render_stage
from .spec import StageResult, StageSpec
from .stages import Stage, StageGraph

if TYPE_CHECKING:
    from .submit import BuildUnit

# Registry look-ups are small requests; a few in flight hide their latency.
_LOOKUP_THREADS = 8

_DOCKER_HUB = ("", "docker.io", "index.docker.io", "registry-1.docker.io")


class StageGraphBuilder:
    """Collects the nodes of a submission, one unit (entry and platform) at a time."""

    def __init__(
        self, settings: Settings, registry: RegistryClient, naming: Callable[[BuildUnit, str], str]
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.specs: dict[str, StageSpec] = {}
        self._naming = naming
        self._node_by_key: dict[str, str] = {}
        self._base_digests: dict[str, str | None] = {}

    def add(self, unit: BuildUnit, context: PackedContext) -> str:
        """Key and render the unit's stages, dependencies first; return the target's node id."""
        graph = unit.plan.graph
        keys: dict[int, str] = {}
        nodes: dict[int, str] = {}
        for stage in unit.plan.stages:
            canonical = render_stage(graph, stage, lambda index: f"stages:{keys[index]}")
            files = context_files(graph, stage, context)
            build_args = visible_build_args(graph, stage, unit.entry.build_args)
            base_digest = self._base_digest(stage, graph)
            key = stage_key(canonical.dockerfile, build_args, unit.platform, base_digest, files)
            keys[stage.index] = key

            if key in self._node_by_key:
                nodes[stage.index] = self._node_by_key[key]
                continue
            node = self._naming(unit, stage.id)
            nodes[stage.index] = node
            self._node_by_key[key] = node
            self.specs[node] = self._spec(
                unit, graph, stage, node, key, keys, nodes, build_args, files, context
            )

        target = nodes[unit.plan.target.index]
        self.specs[target].is_target = True
        return target

    def find_cached(self, registry: RegistryClient, targets: list[str]) -> dict[str, StageResult]:
        """Return the nodes, reachable from `targets`, whose key is already in the registry.

        A cached node's own dependencies are not looked up: nothing needs
        them. Each level of the graph is looked up in parallel.
        """
        cached: dict[str, StageResult] = {}
        seen: set[str] = set()
        level = list(dict.fromkeys(targets))
        with ThreadPoolExecutor(max_workers=_LOOKUP_THREADS) as pool:
            while level:
                seen.update(level)
                keys = [self.specs[node].key for node in level]
                digests = pool.map(
                    lambda key: registry.manifest_digest(self.settings.stages_repository, key), keys
                )
                following: list[str] = []
                for node, digest in zip(level, digests, strict=True):
                    if digest:
                        cached[node] = StageResult(worker="", digest=digest, cached=True)
                    else:
                        following.extend(need for need in self.specs[node].needs if need not in seen)
                level = list(dict.fromkeys(following))
        return cached

    def prune(self, cached: dict[str, StageResult], targets: list[str]) -> dict[str, StageSpec]:
        """Keep the nodes the targets need (stopping at cached ones); link dependants and descendants."""
        kept: dict[str, StageSpec] = {}
        pending = list(targets)
        while pending:
            node = pending.pop()
            if node in kept:
                continue
            kept[node] = self.specs[node]
            if node not in cached:
                pending.extend(self.specs[node].needs)

        ordered = {node: spec for node, spec in self.specs.items() if node in kept}
        for spec in ordered.values():
            spec.dependants = []
            if spec.id in cached:
                spec.needs = [need for need in spec.needs if need in ordered]
        for spec in ordered.values():
            for need in spec.needs:
                ordered[need].dependants.append(spec.id)
        for spec in ordered.values():
            spec.descendants = _descendants(spec.id, ordered)
        return ordered

    def _spec(
        self,
        unit: BuildUnit,
        graph: StageGraph,
        stage: Stage,
        node: str,
        key: str,
        keys: dict[int, str],
        nodes: dict[int, str],
        build_args: dict[str, str],
        files: dict[str, str],
        context: PackedContext,
    ) -> StageSpec:
        stages_image = f"{self.settings.registry}/{self.settings.stages_repository}"
        rendered = render_stage(graph, stage, lambda index: f"{stages_image}:{keys[index]}", stages_image)
        return StageSpec(
            id=node,
            index=stage.index,
            key=key,
            image=f"{stages_image}:{key}",
            dockerfile=rendered.dockerfile,
            step_lines=rendered.step_lines,
            needs=[nodes[index] for index in stage.needs],
            dependants=[],
            platform=unit.platform,
            build_args=build_args,
            context_digest=context.digest if files else None,
            source_path=graph.path,
            from_line=stage.from_instruction.line,
            stage=stage.id,
            parent=nodes[stage.base_stage] if stage.base_stage is not None else None,
            mount_from_line=mount_from_line(rendered.dockerfile, rendered.step_lines),
        )

    def _base_digest(self, stage: Stage, graph: StageGraph) -> str | None:
        """Return the digest of an external base from the farm's registry, or None.

        NOTE: a base outside the farm's registry (and not mirrored by it)
        enters the key by its reference as written, so a moved tag there
        does not change the key.
        """
        if stage.base is None or stage.base == "scratch":
            return None
        if stage.base not in self._base_digests:
            self._base_digests[stage.base] = self._lookup_base(stage, graph)
        return self._base_digests[stage.base]

    def _lookup_base(self, stage: Stage, graph: StageGraph) -> str | None:
        line = stage.from_instruction.line
        try:
            reference = parse_reference(stage.base)
        except ValueError:
            raise DockerfileError(graph.path, line, f"invalid base image reference {stage.base!r}") from None
        if reference.digest:
            return reference.digest

        if reference.registry == self.settings.registry:
            repository = reference.repository
        elif reference.registry in _DOCKER_HUB and self.settings.mirror_docker_io:
            repository = (
                reference.repository if "/" in reference.repository else f"library/{reference.repository}"
            )
        else:
            return None

        manifest = self.registry.get_manifest(repository, reference.tag or "latest")
        if manifest is None and reference.registry == self.settings.registry:
            raise DockerfileError(graph.path, line, f"base image {stage.base} not found in the registry")
        return manifest.digest if manifest else None


def _descendants(node: str, specs: dict[str, StageSpec]) -> list[str]:
    found: list[str] = []
    pending = list(specs[node].dependants)
    while pending:
        current = pending.pop(0)
        if current not in found:
            found.append(current)
            pending.extend(specs[current].dependants)
    return found
