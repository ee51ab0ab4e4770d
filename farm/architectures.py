"""CPU architecture names as OCI image configs and platforms spell them."""

from __future__ import annotations

# Python's platform.machine() values mapped to OCI (GOARCH) names.
OCI_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def oci_architecture(machine: str) -> str:
    """Return the OCI name of CPU architecture `machine`, or `machine` itself when unknown."""
    return OCI_ARCHITECTURES.get(machine.lower(), machine.lower())
