"""Image references: `[registry/]repository[:tag][@digest]`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference; `registry` is empty when none was written."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """Return the digest when there is one, else the tag (default `latest`)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name


def parse_reference(text: str) -> ImageReference:
    """Split an image reference into registry, repository, tag and digest.

    The first path component is a registry when it contains a dot or a
    colon or is `localhost`, as in Docker's own reference grammar.
    Raises ValueError for an empty or malformed reference.
    """
    if not text or text != text.strip() or " " in text:
        raise ValueError(f"invalid image reference {text!r}")

    name, _, digest = text.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, remainder = first, rest
    else:
        registry, remainder = "", name

    repository, tag = remainder, None
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = remainder.rsplit(":", 1)

    if not repository or repository != repository.lower() or (digest and ":" not in digest):
        raise ValueError(f"invalid image reference {text!r}")
    return ImageReference(registry, repository, tag or None, digest or None)
