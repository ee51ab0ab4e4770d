"""Tests of farm.base_images against a real registry, and of the mirror configuration with a real Buildah."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.base_images import (
    DEFAULT_PATH,
    _mirror_from_deb822,
    _mirror_from_sources_list,
    build_debian_rootfs,
    host_architecture,
    make_busybox_image,
    make_debian_image,
    pack_layer,
)
from farm.errors import FarmError
from farm.registries_conf import registries_conf
from farm.registry import OCI_MANIFEST, RegistryClient


@dataclass(frozen=True)
class PulledImage:
    """An image read back from the registry: manifest, config and the uncompressed layer."""

    manifest: dict
    manifest_digest: str
    config: dict
    layer: bytes


@pytest.fixture(scope="module")
def client(farm) -> RegistryClient:
    return farm.registry


@pytest.fixture(scope="module")
def busybox_reference(client: RegistryClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("busybox-image")
    yield make_busybox_image(client, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def pull(client: RegistryClient, repository: str, tag: str, scratch: Path) -> PulledImage:
    manifest = client.get_manifest(repository, tag)
    assert manifest is not None, f"{repository}:{tag} was not pushed"
    document = manifest.json()

    config_path = scratch / "config.json"
    client.fetch_blob(repository, document["config"]["digest"], config_path)
    layer_path = scratch / "layer.tar.gz"
    client.fetch_blob(repository, document["layers"][0]["digest"], layer_path)

    return PulledImage(
        manifest=document,
        manifest_digest=manifest.digest,
        config=json.loads(config_path.read_bytes()),
        layer=gzip.decompress(layer_path.read_bytes()),
    )


def layer_members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as archive:
        return {member.name: member for member in archive.getmembers()}


def test_busybox_image_reads_back(client: RegistryClient, busybox_reference: str, tmp_path: Path) -> None:
    assert busybox_reference == f"{client.registry}/library/busybox:latest"

    image = pull(client, "library/busybox", "latest", tmp_path)

    assert image.manifest["mediaType"] == OCI_MANIFEST
    assert image.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [layer["mediaType"] for layer in image.manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]
    assert image.config["architecture"] == host_architecture()
    assert image.config["os"] == "linux"
    assert image.config["config"]["Cmd"] == ["sh"]
    assert image.config["config"]["Env"] == [f"PATH={DEFAULT_PATH}"]
    assert image.config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(image.layer).hexdigest()]

    members = layer_members(image.layer)
    assert members["bin/sh"].issym()
    assert members["bin/sh"].linkname == "/bin/busybox"
    assert members["usr/bin/env"].issym()
    assert members["bin/busybox"].isreg()
    assert members["bin/busybox"].mode == 0o755
    assert members["tmp"].isdir()
    assert members["tmp"].mode == 0o1777
    assert {"etc/passwd", "etc/group", "root"} <= members.keys()
    assert all(member.uid == 0 and member.gid == 0 and member.uname == "" for member in members.values())


def test_pack_layer_is_reproducible(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "dir" / "nested").mkdir(parents=True)
    (rootfs / "dir" / "file").write_text("content\n")
    os.link(rootfs / "dir" / "file", rootfs / "hardlink")
    (rootfs / "to-file").symlink_to("dir/file")
    (rootfs / "outside").symlink_to(tmp_path)
    os.mkfifo(rootfs / "fifo")
    if os.geteuid() == 0:
        os.mknod(rootfs / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))

    first = pack_layer(rootfs, tmp_path / "first.tar.gz")
    os.utime(rootfs / "dir" / "file", (1_000_000, 1_000_000))
    second = pack_layer(rootfs, tmp_path / "second.tar.gz")

    assert first == second
    compressed = (tmp_path / "first.tar.gz").read_bytes()
    assert compressed[4:8] == b"\0\0\0\0", "the gzip header must not carry a time"
    uncompressed = gzip.decompress(compressed)
    assert first[1] == "sha256:" + hashlib.sha256(uncompressed).hexdigest()

    members = layer_members(uncompressed)
    assert list(members) == sorted(members)
    assert {member.mtime for member in members.values()} == {0}
    assert members["to-file"].issym()
    assert members["to-file"].linkname == "dir/file"
    assert members["outside"].issym(), "a symbolic link to a directory must not be followed"
    assert members["hardlink"].islnk()
    assert members["hardlink"].linkname == "dir/file"
    assert members["fifo"].isfifo()
    if os.geteuid() == 0:
        assert members["null"].ischr()
        assert (members["null"].devmajor, members["null"].devminor) == (1, 3)


def test_registries_conf_mirrors_docker_io() -> None:
    config = tomllib.loads(registries_conf("127.0.0.1:5000", mirror_docker_io=True))

    assert config["unqualified-search-registries"] == ["docker.io"]
    farm_entry, docker_io_entry = config["registry"]
    assert farm_entry == {"location": "127.0.0.1:5000", "insecure": True}
    assert docker_io_entry["prefix"] == docker_io_entry["location"] == "docker.io"
    assert docker_io_entry["mirror"] == [{"location": "127.0.0.1:5000", "insecure": True}]


def test_registries_conf_without_mirror_or_insecure() -> None:
    config = tomllib.loads(registries_conf("registry.example:443", insecure=False, mirror_docker_io=False))

    assert config["registry"] == [{"location": "registry.example:443", "insecure": False}]


def test_default_mirror_skips_suffixed_suites() -> None:
    deb822 = (
        "Types: deb\n"
        "URIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://sources.example/debian\n"
        "Suites: bookworm\n"
        "\n"
        "# A mirror next to the machine\n"
        "Types: deb\n"
        "URIs: http://mirror.example/debian http://other.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
    )
    sources_list = (
        "deb http://security.example/debian-security bookworm-security main\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://mirror.example/debian bookworm main\n"
    )

    assert _mirror_from_deb822(deb822) == "http://mirror.example/debian"
    assert _mirror_from_sources_list(sources_list) == "http://mirror.example/debian"
    assert (
        _mirror_from_deb822("Types: deb\nURIs: http://x.example/debian\nSuites: bookworm-backports\n") is None
    )


def test_debian_rootfs_reports_debootstrap_failure(tmp_path: Path) -> None:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (Debian package debootstrap)")

    # Nothing listens on the discard port, so debootstrap fails at once.
    with pytest.raises(FarmError) as raised:
        build_debian_rootfs(tmp_path / "rootfs", mirror="http://127.0.0.1:9/debian")

    message = str(raised.value)
    assert "debootstrap --variant=minbase bookworm" in message
    assert "Failed getting release file" in message
    assert "mirror is reachable" in message


def test_debian_image_replaces_unfinished_rootfs(client: RegistryClient, tmp_path: Path) -> None:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (Debian package debootstrap)")
    leftover = tmp_path / "debian-bookworm" / "rootfs" / "leftover"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("")

    # The unfinished root filesystem is deleted, so debootstrap runs and reaches the unreachable mirror.
    with pytest.raises(FarmError, match="Failed getting release file"):
        make_debian_image(client, tmp_path, mirror="http://127.0.0.1:9/debian")

    assert not leftover.exists()
    assert not (tmp_path / "debian-bookworm" / "rootfs.complete").exists()


def test_debian_rootfs_rejects_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "leftover").write_text("")

    with pytest.raises(FarmError, match="is not empty"):
        build_debian_rootfs(tmp_path)


def test_buildah_pulls_busybox_through_the_mirror(
    client: RegistryClient, busybox_reference: str, tmp_path: Path
) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed, so the mirror configuration cannot be tried")

    conf = tmp_path / "registries.conf"
    conf.write_text(registries_conf(client.registry, mirror_docker_io=True))
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo hi > /x\n")
    storage = tmp_path / "buildah"
    buildah = Buildah(storage, conf)

    try:
        buildah.run(
            "bud",
            "--isolation",
            "chroot",
            "-f",
            str(context / "Dockerfile"),
            "-t",
            "mirror-test",
            str(context),
        )

        pushed = client.get_manifest("library/busybox", "latest")
        pulled = buildah.run(
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.FromImageDigest}}",
            "docker.io/library/busybox:latest",
        )
        assert pushed is not None
        assert pulled.strip() == pushed.digest

        buildah.run("from", "--name", "mirror-test-container", "mirror-test")
        assert buildah.run("run", "--isolation", "chroot", "mirror-test-container", "cat", "/x") == "hi\n"
    finally:
        buildah.remove_everything()


class Buildah:
    """Runs buildah with its own storage under a test's temporary directory."""

    def __init__(self, storage: Path, registries: Path) -> None:
        self.storage = storage
        self.environment = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registries)}
        self.global_options = [
            "--root",
            str(storage / "root"),
            "--runroot",
            str(storage / "run"),
            "--storage-driver",
            "vfs",
        ]

    def run(self, *arguments: str) -> str:
        result = subprocess.run(
            ["buildah", *self.global_options, *arguments],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (
            f"buildah {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def remove_everything(self) -> None:
        for arguments in (["rm", "--all"], ["rmi", "--all", "--force"]):
            subprocess.run(
                ["buildah", *self.global_options, *arguments], env=self.environment, capture_output=True
            )
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount_point in sorted((m for m in mounts if m.startswith(str(self.storage) + "/")), reverse=True):
            subprocess.run(["umount", mount_point], capture_output=True)
        shutil.rmtree(self.storage, ignore_errors=True)


@pytest.mark.slow
def test_debian_image_pushed_and_reused(
    client: RegistryClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (Debian package debootstrap)")
    workdir = tmp_path_factory.mktemp("debian-image")
    scratch = tmp_path_factory.mktemp("debian-pull")

    try:
        reference = make_debian_image(client, workdir)
        assert reference == f"{client.registry}/library/debian:bookworm"
        image = pull(client, "library/debian", "bookworm", scratch)

        assert image.config["config"]["Cmd"] == ["bash"]
        assert image.config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(image.layer).hexdigest()]
        members = layer_members(image.layer)
        assert members["etc/debian_version"].isreg()
        assert members["usr/bin/bash"].isreg()
        assert members["bin"].issym(), "bookworm has a merged /usr"
        assert members["bin"].linkname == "usr/bin"
        assert not [name for name in members if name.startswith("var/lib/apt/lists/")]
        assert not [name for name in members if name.endswith(".deb")]
        assert not [name for name in members if name.startswith("dev/")]

        marker_time = (workdir / "debian-bookworm" / "rootfs.complete").stat().st_mtime_ns
        assert make_debian_image(client, workdir) == reference
        assert (workdir / "debian-bookworm" / "rootfs.complete").stat().st_mtime_ns == marker_time
        assert client.get_manifest("library/debian", "bookworm").digest == image.manifest_digest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
