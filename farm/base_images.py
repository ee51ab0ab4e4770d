"""Base images made offline and pushed to the farm's registry.

Dockerfiles usually start from Docker Hub images such as `busybox` or
`debian:bookworm`. A farm without internet access cannot pull them, so
this module builds equivalent images locally (busybox from the
busybox-static package, debian with debootstrap from the machine's apt
mirror) and pushes them where a docker.io mirror is looked up:
`<registry>/library/<name>:<tag>`. With the configuration from
`registries_conf`, Buildah then resolves `FROM busybox` to the farm's
registry and unmodified Dockerfiles build.

Images are written directly as OCI artifacts: one reproducible gzip tar
layer, an image config and a manifest. The busybox image can also hold
other platforms (from Debian's busybox-static package of that
architecture), listed in an OCI image index, so `buildah bud --platform
linux/arm64` pulls the arm64 variant of `FROM busybox`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform as _platform
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import BinaryIO

import structlog

from .architectures import OCI_ARCHITECTURES
from .errors import FarmError
from .registry import (
    OCI_MANIFEST,
    Manifest,
    RegistryClient,
    file_digest,
    image_index,
    platform_object,
    sha256_digest,
)

log = structlog.get_logger(__name__)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"

BUSYBOX_BINARY = Path("/bin/busybox")
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_REPOSITORY = "library/busybox"
DEBIAN_REPOSITORY = "library/debian"

# Every entry of a layer gets this modification time, so that packing the
# same files again gives the same bytes.
LAYER_MTIME = 0

# OCI platforms mapped to Debian architectures (for `apt-get download
# PACKAGE:ARCH`) and to the names of qemu-user-static's emulators.
_DEBIAN_ARCHITECTURES = {
    "linux/amd64": "amd64",
    "linux/arm64": "arm64",
    "linux/arm/v7": "armhf",
    "linux/386": "i386",
    "linux/ppc64le": "ppc64el",
    "linux/s390x": "s390x",
}
_QEMU_EMULATORS = {
    "linux/amd64": "qemu-x86_64-static",
    "linux/arm64": "qemu-aarch64-static",
    "linux/arm/v7": "qemu-arm-static",
    "linux/386": "qemu-i386-static",
    "linux/ppc64le": "qemu-ppc64le-static",
    "linux/s390x": "qemu-s390x-static",
}

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"

_COMPLETE_MARKER = "rootfs.complete"
_OUTPUT_TAIL_LINES = 20


def build_busybox_rootfs(
    destination: Path, binary: Path = BUSYBOX_BINARY, platform: str | None = None
) -> None:
    """Create a busybox root filesystem in the empty or missing directory `destination`.

    The binary comes from the busybox-static package, so it needs no shared
    libraries. Every applet is a symbolic link to /bin/busybox, as in Docker
    Hub's busybox image. A `binary` for another `platform` than this
    machine's is asked for its applets through qemu-user-static.
    """
    if not binary.is_file():
        raise FarmError(
            f"{binary} not found. Install the busybox-static package (apt-get install busybox-static)."
        )
    _require_empty(destination)

    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp"):
        (destination / directory).mkdir(parents=True, exist_ok=True)
    for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc"):
        (destination / directory).chmod(0o755)
    destination.chmod(0o755)
    (destination / "root").chmod(0o700)
    (destination / "tmp").chmod(0o1777)

    copy = destination / "bin" / "busybox"
    shutil.copyfile(binary, copy)
    copy.chmod(0o755)

    for applet in _busybox_applets(binary, platform):
        link = destination / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")

    _write_text(destination / "etc" / "passwd", _PASSWD, 0o644)
    _write_text(destination / "etc" / "group", _GROUP, 0o644)


def build_debian_rootfs(destination: Path, suite: str = "bookworm", mirror: str | None = None) -> None:
    """Install a minimal Debian `suite` into `destination` with debootstrap.

    `mirror` defaults to the machine's apt mirror (see `default_debian_mirror`),
    because that is the one a machine without internet can reach. Package
    caches and apt lists are removed afterwards, as in Docker Hub's image, so
    builds must run `apt-get update` first. Device nodes in /dev are removed too,
    because container runtimes mount their own /dev and rootless storage
    cannot create device nodes when it unpacks a layer.
    """
    if shutil.which("debootstrap") is None:
        raise FarmError(
            "debootstrap not found. Install the debootstrap package (apt-get install debootstrap)."
        )
    _require_empty(destination)
    mirror = mirror or default_debian_mirror()

    command = ["debootstrap", "--variant=minbase", suite, str(destination), mirror]
    log.info("debootstrap started", suite=suite, mirror=mirror, destination=str(destination))
    started = time.monotonic()
    _run_debootstrap(command, destination)
    log.info("debootstrap finished", suite=suite, seconds=round(time.monotonic() - started, 1))

    _clear_directory(destination / "var" / "cache" / "apt" / "archives", pattern="*.deb")
    _clear_directory(destination / "var" / "lib" / "apt" / "lists")
    _clear_directory(destination / "dev")

    # debootstrap copied these from the host, and container runtimes bind-mount their own.
    for name in ("hostname", "resolv.conf"):
        path = destination / "etc" / name
        if path.is_file() and not path.is_symlink():
            _write_text(path, "", 0o644)


def default_debian_mirror() -> str:
    """Return the Debian mirror of the machine's apt configuration.

    The first deb822 source in /etc/apt/sources.list.d/*.sources that lists a
    plain suite (such as `bookworm`, not `bookworm-security`) wins, then the
    first such `deb` line of /etc/apt/sources.list, then deb.debian.org.
    """
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        mirror = _mirror_from_deb822(_read_text(sources))
        if mirror:
            return mirror
    mirror = _mirror_from_sources_list(_read_text(Path("/etc/apt/sources.list")))
    return mirror or DEFAULT_DEBIAN_MIRROR


def pack_layer(rootfs: Path, destination: Path, *, root_owned: bool = False) -> tuple[str, str]:
    """Write the contents of `rootfs` to `destination` as a gzip tar layer.

    Returns (digest of the gzip file, diff_id), where the diff_id is the
    digest of the uncompressed tar that OCI image configs list. Entries are
    sorted by name and carry a fixed mtime and no user or group names, and
    the gzip header has no name or time, so the same files give the same
    digest. The compressed bytes also depend on the zlib version, which the
    diff_id does not. Symbolic links are stored as links, never followed.
    Owners are kept unless `root_owned`, which makes every entry 0:0.
    Sockets are skipped, because tar cannot store them.
    """
    log.info("pack started", rootfs=str(rootfs), layer=str(destination))
    started = time.monotonic()
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")

    with open(partial, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as compressed:
            hashing = _HashingWriter(compressed)
            with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                entries = _add_tree(archive, rootfs, "", root_owned)
    partial.rename(destination)

    digest = file_digest(destination)
    diff_id = "sha256:" + hashing.hexdigest()
    log.info(
        "pack finished",
        layer=str(destination),
        digest=digest,
        entries=entries,
        bytes=destination.stat().st_size,
        seconds=round(time.monotonic() - started, 1),
    )
    return digest, diff_id


def push_image(
    client: RegistryClient,
    repository: str,
    tag: str,
    layer: Path,
    layer_digest: str,
    diff_id: str,
    cmd: list[str],
    platform: str | None = None,
) -> str:
    """Push a one-layer image as `repository:tag` and return its manifest digest.

    The config names `platform` (default: this machine's). The layer blob
    goes first and the manifest last, because a registry rejects a manifest
    whose blobs it does not have.
    """
    log.info("push started", registry=client.registry, repository=repository, tag=tag, platform=platform)
    manifest = _push_blobs(client, repository, layer, layer_digest, diff_id, cmd, platform)
    digest = client.put_manifest(repository, tag, manifest)
    log.info("push finished", registry=client.registry, repository=repository, tag=tag, digest=digest)
    return digest


def push_index(client: RegistryClient, repository: str, tag: str, images: dict[str, Manifest]) -> str:
    """Push the per-platform `images` by digest and an OCI image index of them as `repository:tag`.

    Returns the digest of the index.
    """
    for platform, manifest in sorted(images.items()):
        client.put_manifest(repository, manifest.digest, manifest)
        log.info("push finished", repository=repository, platform=platform, digest=manifest.digest)
    index = image_index(images)
    digest = client.put_manifest(repository, tag, index)
    log.info("index pushed", repository=repository, tag=tag, digest=digest, platforms=sorted(images))
    return digest


def image_config(diff_id: str, cmd: list[str], platform: str | None = None) -> bytes:
    """Return the OCI image config of a one-layer image for `platform` (default: this machine's).

    It has no creation time, so the same layer always gives the same config digest.
    """
    config = {
        **platform_object(platform or host_platform()),
        "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"farm.base_images: rootfs with CMD {json.dumps(cmd)}"}],
    }
    return _canonical_json(config)


def host_architecture() -> str:
    """Return the OCI name (`amd64`, `arm64`, ...) of this machine's CPU architecture."""
    machine = _platform.machine().lower()
    try:
        return OCI_ARCHITECTURES[machine]
    except KeyError:
        raise FarmError(f"no OCI architecture name is known for CPU architecture {machine!r}") from None


def host_platform() -> str:
    """Return this machine's platform in OCI form, such as `linux/amd64`."""
    return f"linux/{host_architecture()}"


def make_busybox_image(client: RegistryClient, workdir: Path, platforms: list[str] | None = None) -> str:
    """Build the busybox image and push it as `library/busybox:latest`.

    Without `platforms` the image is this machine's, built in
    `workdir/busybox`. Otherwise each platform's image is built in
    `workdir/busybox-<platform>` from Debian's busybox-static package of
    that architecture (see `busybox_binary`). The tag is then that image
    for one platform, or an OCI image index listing them for several.
    Returns the pushed reference, `<registry>/library/busybox:latest`.
    """
    reference = f"{client.registry}/{BUSYBOX_REPOSITORY}:latest"
    if not platforms:
        layer, digest, diff_id = _busybox_layer(workdir / "busybox", BUSYBOX_BINARY, None)
        push_image(client, BUSYBOX_REPOSITORY, "latest", layer, digest, diff_id, ["sh"])
        return reference

    # An unsupported platform fails before anything is built or pushed.
    for requested in platforms:
        if requested != host_platform():
            _debian_architecture(requested)

    images = {}
    for requested in dict.fromkeys(platforms):
        binary = busybox_binary(requested, workdir)
        base = workdir / ("busybox-" + requested.replace("/", "-"))
        layer, digest, diff_id = _busybox_layer(base, binary, requested)
        images[requested] = _push_blobs(client, BUSYBOX_REPOSITORY, layer, digest, diff_id, ["sh"], requested)

    if len(images) == 1:
        client.put_manifest(BUSYBOX_REPOSITORY, "latest", next(iter(images.values())))
    else:
        push_index(client, BUSYBOX_REPOSITORY, "latest", images)
    return reference


def busybox_binary(platform: str, workdir: Path) -> Path:
    """Return a static busybox binary for `platform`.

    This machine's platform uses /bin/busybox. Another one downloads
    Debian's busybox-static package of that architecture with `apt-get
    download` (the machine's apt mirror, so no internet beyond it) and
    unpacks it below `workdir`, where the next call finds it.
    """
    if platform == host_platform():
        return BUSYBOX_BINARY
    architecture = _debian_architecture(platform)
    directory = workdir / f"{BUSYBOX_PACKAGE}-{architecture}"
    binary = directory / "root" / "bin" / "busybox"
    if binary.is_file():
        return binary

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    package = f"{BUSYBOX_PACKAGE}:{architecture}"
    # Downloading as root into a directory that apt's sandbox user cannot
    # write makes apt warn; this directory is ours, so skip the sandbox.
    _run_or_raise(
        ["apt-get", "download", "-o", "APT::Sandbox::User=root", package],
        cwd=directory,
        hint=f"Enable the architecture first: dpkg --add-architecture {architecture} && apt-get update",
    )
    debs = sorted(directory.glob(f"{BUSYBOX_PACKAGE}_*_{architecture}.deb"))
    if not debs:
        raise FarmError(f"apt-get download {package} wrote no .deb file into {directory}")
    _run_or_raise(["dpkg-deb", "-x", str(debs[-1]), str(directory / "root")], hint="Check the package file.")
    if not binary.is_file():
        raise FarmError(f"{debs[-1]} has no bin/busybox")
    return binary


def make_debian_image(
    client: RegistryClient, workdir: Path, suite: str = "bookworm", mirror: str | None = None
) -> str:
    """Build Debian `suite` in `workdir/debian-<suite>` and push it as `library/debian:<suite>`.

    A root filesystem that a previous call finished for the same mirror is
    reused, so only the first call pays for debootstrap. Returns the pushed
    reference, `<registry>/library/debian:<suite>`.
    """
    base = workdir / f"debian-{suite}"
    rootfs = base / "rootfs"
    marker = base / _COMPLETE_MARKER
    mirror = mirror or default_debian_mirror()
    expected = {"suite": suite, "mirror": mirror}

    if _read_marker(marker) == expected and rootfs.is_dir():
        log.info("debootstrap skipped", suite=suite, rootfs=str(rootfs))
    else:
        marker.unlink(missing_ok=True)
        _remove_tree(rootfs)
        build_debian_rootfs(rootfs, suite, mirror)
        marker.write_text(json.dumps(expected) + "\n")

    layer = base / "layer.tar.gz"
    digest, diff_id = pack_layer(rootfs, layer)

    push_image(client, DEBIAN_REPOSITORY, suite, layer, digest, diff_id, ["bash"])
    return f"{client.registry}/{DEBIAN_REPOSITORY}:{suite}"


def _busybox_layer(base: Path, binary: Path, platform: str | None) -> tuple[Path, str, str]:
    """Build a busybox root filesystem in `base/rootfs` and pack it; return (layer, digest, diff_id)."""
    rootfs = base / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    build_busybox_rootfs(rootfs, binary, platform)

    layer = base / "layer.tar.gz"
    digest, diff_id = pack_layer(rootfs, layer, root_owned=True)
    return layer, digest, diff_id


def _push_blobs(
    client: RegistryClient,
    repository: str,
    layer: Path,
    layer_digest: str,
    diff_id: str,
    cmd: list[str],
    platform: str | None,
) -> Manifest:
    """Push the layer and config of a one-layer image and return its manifest, not yet pushed."""
    client.push_blob(repository, layer, layer_digest)

    config = image_config(diff_id, cmd, platform)
    config_digest = client.push_blob_bytes(repository, config)

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer.stat().st_size}],
    }
    content = _canonical_json(manifest)
    return Manifest(OCI_MANIFEST, content, sha256_digest(content))


def _debian_architecture(platform: str) -> str:
    try:
        return _DEBIAN_ARCHITECTURES[platform]
    except KeyError:
        known = ", ".join(sorted(_DEBIAN_ARCHITECTURES))
        raise FarmError(
            f"unsupported platform {platform!r} for the busybox image; supported: {known}"
        ) from None


def _run_or_raise(command: list[str], hint: str, cwd: Path | None = None) -> None:
    try:
        result = _run(command, cwd)
    except OSError as error:
        raise FarmError(f"cannot run {' '.join(command)}: {error}") from None
    if result.returncode != 0:
        raise FarmError(
            f"{' '.join(command)} failed with exit code {result.returncode}: {_tail(result.stdout)}\n{hint}"
        )


class _HashingWriter:
    """A write-only stream that hashes what passes through it to `target`."""

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        return self._target.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _add_tree(archive: tarfile.TarFile, directory: Path, prefix: str, root_owned: bool) -> int:
    """Add the entries under `directory`, sorted by name, and return how many were added."""
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: os.fsencode(entry.name))

    added = 0
    for entry in entries:
        arcname = prefix + entry.name
        info = archive.gettarinfo(entry.path, arcname)
        if info is None:
            log.warning("pack skipped entry", path=entry.path, reason="sockets cannot be stored in tar")
            continue
        _normalize(info, root_owned)

        if info.isreg():
            with open(entry.path, "rb") as stream:
                archive.addfile(info, stream)
        else:
            archive.addfile(info)
        added += 1

        if info.isdir():
            added += _add_tree(archive, Path(entry.path), arcname + "/", root_owned)
    return added


def _normalize(info: tarfile.TarInfo, root_owned: bool) -> None:
    info.mtime = LAYER_MTIME
    info.uname = ""
    info.gname = ""
    if root_owned:
        info.uid = 0
        info.gid = 0


def _busybox_applets(binary: Path, platform: str | None) -> list[str]:
    command = [str(binary), "--list-full"]
    if platform and platform != host_platform():
        # Running the emulator directly works whether or not binfmt_misc has an entry for it.
        command.insert(0, _emulator(platform))
    try:
        result = _run(command)
    except OSError as error:
        raise FarmError(f"cannot run {' '.join(command)}: {error}") from None
    if result.returncode != 0:
        raise FarmError(
            f"{' '.join(command)} failed with exit code {result.returncode}: "
            f"{_tail(result.stdout)}\nCheck that the busybox-static package is installed intact."
        )
    return sorted(line.strip().lstrip("/") for line in result.stdout.splitlines() if line.strip())


def _emulator(platform: str) -> str:
    name = _QEMU_EMULATORS.get(platform)
    path = shutil.which(name) if name else None
    if path is None:
        raise FarmError(
            f"no emulator for {platform} found ({name or 'unknown platform'} is not on PATH). "
            "Install the qemu-user-static package (apt-get install qemu-user-static)."
        )
    return path


def _run_debootstrap(command: list[str], destination: Path) -> None:
    try:
        result = _run(command)
    except OSError as error:
        raise FarmError(f"cannot run {' '.join(command)}: {error}") from None
    if result.returncode == 0:
        return

    raise FarmError(
        f"{' '.join(command)} failed with exit code {result.returncode}. "
        f"Last output lines:\n{_tail(result.stdout)}\n"
        f"Details are in {destination / 'debootstrap' / 'debootstrap.log'} if it exists. "
        "Check that the mirror is reachable and carries the suite, "
        "and that this runs as root (debootstrap mounts /proc and creates device nodes)."
    )


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        check=False,
    )


def _tail(output: str) -> str:
    lines = output.rstrip().splitlines()[-_OUTPUT_TAIL_LINES:]
    return "\n".join(lines) if lines else "(no output)"


def _mirror_from_deb822(text: str) -> str | None:
    for paragraph in text.split("\n\n"):
        fields = _deb822_fields(paragraph)
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        uris = fields.get("uris", "").split()
        if uris and _has_plain_suite(fields.get("suites", "").split()):
            return uris[0]
    return None


def _deb822_fields(paragraph: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = None
    for line in paragraph.splitlines():
        if line.startswith("#"):
            continue
        if line[:1].isspace() and name is not None:
            fields[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        if colon:
            name = key.strip().lower()
            fields[name] = value.strip()
    return fields


def _mirror_from_sources_list(text: str) -> str | None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and _has_plain_suite(words[1:2]):
            return words[0]
    return None


def _has_plain_suite(suites: list[str]) -> bool:
    return any(suite and "-" not in suite and "/" not in suite for suite in suites)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _require_empty(destination: Path) -> None:
    if destination.exists() and any(destination.iterdir()):
        raise FarmError(
            f"{destination} is not empty. Remove it or choose another directory for the root filesystem."
        )
    destination.mkdir(parents=True, exist_ok=True)


def _clear_directory(directory: Path, pattern: str = "*") -> None:
    if not directory.is_dir():
        return
    for path in directory.glob(pattern):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _remove_tree(path: Path) -> None:
    """Delete `path` after unmounting what an interrupted debootstrap left mounted in it.

    shutil.rmtree would otherwise descend into a mounted /proc or /sys.
    """
    if not path.exists():
        return
    for mount_point in _mount_points_under(path):
        result = _run(["umount", mount_point])
        if result.returncode != 0:
            raise FarmError(
                f"cannot unmount {mount_point} left by an earlier debootstrap: {_tail(result.stdout)}\n"
                f"Unmount it by hand, then delete {path}."
            )
    shutil.rmtree(path)


def _mount_points_under(path: Path) -> list[str]:
    """Return the mount points below `path`, deepest first."""
    root = str(path.resolve())
    found = []
    for line in _read_text(Path("/proc/self/mounts")).splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        # /proc/self/mounts writes spaces and similar characters as octal escapes.
        mount_point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[1])
        if mount_point == root or mount_point.startswith(root + "/"):
            found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def _write_text(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def _canonical_json(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
