"""Push the inline images that lowered `COPY <<EOF` instructions copy from.

Each inline image is one reproducible layer holding heredoc bodies as
files owned by root with mode 0644, the file BuildKit makes for a `COPY`
heredoc. The producer pushes them before it queues any stage, and a tag
that already exists is left alone, because the tag is derived from the
files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import structlog

from .base_images import OCI_CONFIG, OCI_LAYER_GZIP, host_architecture
from .lowering import INLINE_FILE_MODE, InlineImage
from .plan import Plan
from .registry import OCI_MANIFEST, Manifest, RegistryClient, sha256_digest
from .render import render_stage

log = structlog.get_logger(__name__)


def plan_inline_images(plan: Plan) -> list[InlineImage]:
    """Return the inline images that the planned stages copy from, without repeats."""
    images: dict[str, InlineImage] = {}
    for stage in plan.stages:
        rendered = render_stage(plan.graph, stage, lambda index: f"stage-{index}")
        for image in rendered.inline_images:
            images.setdefault(image.tag, image)
    return list(images.values())


def push_inline_images(registry: RegistryClient, repository: str, images: list[InlineImage]) -> None:
    """Push each image in `images` to `repository:<its tag>` unless it is there already."""
    for image in images:
        if registry.get_manifest(repository, image.tag) is not None:
            continue
        layer, diff_id = inline_layer(image)
        layer_digest = registry.push_blob_bytes(repository, layer)
        config = _canonical_json(
            {
                # NOTE: the host's architecture, whatever the stage's platform:
                # the layer holds plain files, and Buildah copies them from an
                # image of another architecture with a warning only.
                "architecture": host_architecture(),
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        )
        config_digest = registry.push_blob_bytes(repository, config)
        manifest = _canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}],
            }
        )
        registry.put_manifest(
            repository, image.tag, Manifest(OCI_MANIFEST, manifest, sha256_digest(manifest))
        )
        log.info("inline image pushed", repository=repository, tag=image.tag, files=len(image.files))


def inline_layer(image: InlineImage) -> tuple[bytes, str]:
    """Return the gzip layer of `image` and its diff_id (the digest of the plain tar)."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directories: set[str] = set()
        for path, content in image.files:
            directory = path.rpartition("/")[0]
            if directory and directory not in directories:
                directories.add(directory)
                archive.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
            entry = _entry(path, tarfile.REGTYPE, INLINE_FILE_MODE)
            entry.size = len(content)
            archive.addfile(entry, io.BytesIO(content))
    tar_bytes = plain.getvalue()

    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gzipped:
        gzipped.write(tar_bytes)
    return compressed.getvalue(), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.mode = mode
    entry.uid = entry.gid = 0
    entry.mtime = 0
    return entry


def _canonical_json(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
