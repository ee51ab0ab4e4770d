"""containers-registries.conf(5) files that point Buildah at the farm's registry."""

from __future__ import annotations


def registries_conf(registry: str, insecure: bool = True, mirror_docker_io: bool = False) -> str:
    """Return registries.conf (version 2) text for the farm's registry.

    `insecure` allows plain HTTP to `registry`; without it Buildah refuses
    to push to or pull from an HTTP registry. `mirror_docker_io` makes the
    registry a mirror of docker.io, so `FROM busybox` is served from
    `<registry>/library/busybox`.
    """
    flag = "true" if insecure else "false"
    lines = [
        'unqualified-search-registries = ["docker.io"]',
        'short-name-mode = "permissive"',
        "",
        "[[registry]]",
        f'location = "{registry}"',
        f"insecure = {flag}",
    ]
    if mirror_docker_io:
        lines += [
            "",
            "[[registry]]",
            'prefix = "docker.io"',
            'location = "docker.io"',
            "",
            "[[registry.mirror]]",
            f'location = "{registry}"',
            f"insecure = {flag}",
        ]
    return "\n".join(lines) + "\n"
