"""Write a finished entry's tags: its image, or an image index for several platforms."""

from __future__ import annotations

import structlog

from .config import Settings
from .errors import RegistryError
from .reference import ImageReference
from .registry import RegistryClient, image_index

log = structlog.get_logger(__name__)


def write_tags(
    registry: RegistryClient, settings: Settings, tags: list[ImageReference], digests: dict[str, str]
) -> str:
    """Point every tag at the entry's image and check it is there; return the image digest.

    `digests` maps each platform to its target stage's manifest digest.
    With several platforms the image is an OCI image index listing them.
    """
    digest = _image_digest(registry, settings, digests)
    for tag in tags:
        registry.copy_image(settings.stages_repository, digest, tag.repository, tag.reference)
        if registry.manifest_digest(tag.repository, tag.reference) != digest:
            raise RegistryError(f"tag {tag} was written but the registry does not return {digest} for it")
        log.info("tag written", tag=str(tag), digest=digest)
    return digest


def _image_digest(registry: RegistryClient, settings: Settings, digests: dict[str, str]) -> str:
    if len(digests) == 1:
        return next(iter(digests.values()))

    images = {}
    for platform, digest in sorted(digests.items()):
        manifest = registry.get_manifest(settings.stages_repository, digest)
        if manifest is None:
            raise RegistryError(f"{settings.stages_repository}@{digest} not found for platform {platform}")
        images[platform] = manifest
    index = image_index(images)
    return registry.put_manifest(settings.stages_repository, index.digest, index)
