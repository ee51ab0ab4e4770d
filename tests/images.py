"""Read images back from the registry the way a user would check them."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.reference import parse_reference
from farm.registry import INDEX_TYPES, RegistryClient, platform_object


@dataclass(frozen=True)
class ImageFile:
    """One file of an image's final file system."""

    mode: int
    content: bytes | None
    linkname: str = ""


def image_config(registry: RegistryClient, reference: str, platform: str | None = None) -> dict:
    """Return the image config (the `config` object of the config blob)."""
    return image_config_blob(registry, reference, platform).get("config", {})


def image_config_blob(registry: RegistryClient, reference: str, platform: str | None = None) -> dict:
    """Return the whole config blob, with `architecture` and `os` beside `config`."""
    parsed = parse_reference(reference)
    manifest = image_manifest(registry, reference, platform)
    return json.loads(_blob(registry, parsed.repository, manifest["config"]["digest"]))


def image_manifest(registry: RegistryClient, reference: str, platform: str | None = None) -> dict:
    """Return the image manifest of `reference`; with `platform`, resolve an image index to it."""
    parsed = parse_reference(reference)
    manifest = registry.get_manifest(parsed.repository, parsed.reference)
    assert manifest is not None, f"{reference} is not in the registry"
    if manifest.media_type not in INDEX_TYPES:
        assert platform is None, f"{reference} is a single image ({manifest.media_type}), not an index"
        return manifest.json()

    assert platform is not None, f"{reference} is an image index: name the platform to read"
    expected = platform_object(platform)
    digests = [entry["digest"] for entry in manifest.json()["manifests"] if entry.get("platform") == expected]
    assert len(digests) == 1, f"{reference} lists {len(digests)} manifests for {platform}"
    child = registry.get_manifest(parsed.repository, digests[0])
    assert child is not None, f"{parsed.repository}@{digests[0]} is listed by {reference} but missing"
    return child.json()


def image_files(
    registry: RegistryClient, reference: str, platform: str | None = None
) -> dict[str, ImageFile]:
    """Apply the image's layers in order and return its files by absolute path."""
    parsed = parse_reference(reference)
    manifest = image_manifest(registry, reference, platform)
    files: dict[str, ImageFile] = {}
    for layer in manifest["layers"]:
        data = _blob(registry, parsed.repository, layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                _apply(files, tar, member)
    return files


def run_image(registry_address: str, registries_conf: Path, reference: str, command: list[str]) -> str:
    """Run `command` in a container of `reference` with Buildah and return its output."""
    with tempfile.TemporaryDirectory(prefix="run-image-") as scratch:
        base = [
            "buildah",
            "--root",
            f"{scratch}/storage",
            "--runroot",
            f"{scratch}/run",
            "--storage-driver",
            "vfs",
        ]
        env = {"CONTAINERS_REGISTRIES_CONF": str(registries_conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        container = subprocess.run(
            [*base, "from", "--quiet", reference], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        try:
            result = subprocess.run(
                [*base, "run", "--isolation", "chroot", container, "--", *command],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            return result.stdout
        finally:
            subprocess.run([*base, "rm", "--all"], capture_output=True, env=env, check=False)
            subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, env=env, check=False)


def _blob(registry: RegistryClient, repository: str, digest: str) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "blob"
        registry.fetch_blob(repository, digest, path)
        return path.read_bytes()


def _apply(files: dict[str, ImageFile], tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    path = "/" + member.name.lstrip("./").rstrip("/")
    directory, _, name = path.rpartition("/")
    if name == ".wh..wh..opq":
        for existing in [p for p in files if p.startswith(directory + "/")]:
            del files[existing]
        return
    if name.startswith(".wh."):
        removed = f"{directory}/{name[4:]}"
        for existing in [p for p in files if p == removed or p.startswith(removed + "/")]:
            del files[existing]
        return
    content = tar.extractfile(member).read() if member.isfile() else None
    files[path] = ImageFile(member.mode, content, member.linkname)
