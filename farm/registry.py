"""A client for the OCI distribution API of the farm's registry.

The farm stores three things there: stage images (`<namespace>/stages:<key>`),
build contexts as blobs (`<namespace>/contexts`), and the tags users ask
for, which are written by copying a stage's manifest (blobs are mounted
across repositories, so no layer moves).

With credentials, every request carries HTTP basic authentication, which
the CNCF registry checks against its htpasswd file; a registry that
sends clients to a token server (`WWW-Authenticate: Bearer`) is not
supported.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from .credentials import Credentials
from .errors import RegistryError, RegistryUnavailable
from .retry import retry_seconds as default_retry_seconds
from .retry import retry_unavailable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry stores it: exact bytes, media type and digest."""

    media_type: str
    content: bytes
    digest: str

    def json(self) -> dict:
        return json.loads(self.content)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def platform_object(platform: str) -> dict[str, str]:
    """Return the OCI `platform` object (os, architecture, variant) of `os/architecture[/variant]`."""
    os_name, _, rest = platform.partition("/")
    architecture, _, variant = rest.partition("/")
    result = {"os": os_name, "architecture": architecture}
    if variant:
        result["variant"] = variant
    return result


def image_index(images: dict[str, Manifest]) -> Manifest:
    """Return an OCI image index listing one image manifest per platform, sorted by platform."""
    entries = [
        {
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": len(manifest.content),
            "platform": platform_object(platform),
        }
        for platform, manifest in sorted(images.items())
    ]
    content = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return Manifest(OCI_INDEX, content, sha256_digest(content))


class RegistryClient:
    """Blob and manifest operations against one registry (`host:port`)."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = True,
        timeout: float = 30.0,
        retry_seconds: float | None = None,
        ca_file: Path | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.registry = registry
        # Operations other than `ping` are retried with backoff while the
        # registry is unreachable (farm/retry.py).
        self.retry_seconds = default_retry_seconds() if retry_seconds is None else retry_seconds
        scheme = "http" if insecure else "https"
        # The transport retries failed connection attempts only; HTTP errors
        # come back to the caller unchanged.
        # Loading the CA bundle costs tens of milliseconds, so plain HTTP skips it.
        verify: bool | ssl.SSLContext = not insecure
        if ca_file and not insecure:
            verify = ssl.create_default_context(cafile=str(ca_file))
        transport = httpx.HTTPTransport(retries=3, verify=verify, limits=httpx.Limits(max_connections=16))
        auth = httpx.BasicAuth(credentials.username, credentials.password) if credentials else None
        self._http = httpx.Client(
            base_url=f"{scheme}://{registry}", timeout=timeout, transport=transport, auth=auth
        )
        self._manifests: dict[tuple[str, str], Manifest] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ping(self) -> None:
        """Check that the registry answers the distribution API.

        Raises RegistryUnavailable naming the address when it does not, and
        RegistryError when it requires credentials that are missing or wrong.
        """
        response = self._request("GET", "/v2/")
        if response.status_code == 401:
            self._expect(response, (200,), "GET /v2/")
        if response.status_code != 200:
            raise RegistryError(
                f"{self.registry} is not an OCI registry: GET /v2/ returned HTTP {response.status_code}"
            )

    # Blobs

    @retry_unavailable
    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}")
        return response.status_code == 200

    @retry_unavailable
    def push_blob(self, repository: str, path: Path, digest: str | None = None) -> str:
        """Upload the file at `path` as a blob unless it is already there; return its digest."""
        digest = digest or file_digest(path)
        if self.blob_exists(repository, digest):
            return digest

        location = self._start_upload(repository, digest)
        with open(path, "rb") as stream:
            response = self._request(
                "PUT",
                location,
                content=_read_chunks(stream),
                headers={"Content-Type": "application/octet-stream"},
            )
        self._expect(response, (201,), f"upload of blob {digest} to {repository}")
        return digest

    @retry_unavailable
    def push_blob_bytes(self, repository: str, data: bytes) -> str:
        """Upload `data` as a blob unless it is already there; return its digest."""
        digest = sha256_digest(data)
        if self.blob_exists(repository, digest):
            return digest
        location = self._start_upload(repository, digest)
        response = self._request(
            "PUT",
            location,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._expect(response, (201,), f"upload of blob {digest} to {repository}")
        return digest

    @retry_unavailable
    def fetch_blob(self, repository: str, digest: str, destination: Path) -> None:
        """Download a blob to `destination`, checking its digest on the way."""
        hasher = hashlib.sha256()
        partial = destination.with_name(destination.name + ".partial")
        url = f"/v2/{repository}/blobs/{digest}"
        try:
            with self._http.stream("GET", url, follow_redirects=True) as response:
                self._expect(response, (200,), f"download of blob {digest} from {repository}")
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
        except httpx.TransportError as error:
            raise self._unavailable(error) from None

        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise RegistryError(f"blob {digest} from {self.registry}/{repository} has digest {actual}")
        partial.rename(destination)

    @retry_unavailable
    def mount_blob(self, repository: str, digest: str, source_repository: str) -> None:
        """Link an existing blob of `source_repository` into `repository` without copying it."""
        response = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            params={"mount": digest, "from": source_repository},
        )
        if response.status_code == 202:
            # The registry could not mount and opened an upload instead.
            raise RegistryError(
                f"{self.registry} could not mount blob {digest} from {source_repository} into {repository}"
            )
        self._expect(response, (201,), f"mount of blob {digest} into {repository}")

    # Manifests

    @retry_unavailable
    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """Return the digest of `repository:reference` from a HEAD request, or None when absent."""
        response = self._request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_TYPES)}
        )
        if response.status_code == 404:
            return None
        self._expect(response, (200,), f"manifest {repository}:{reference}")
        return response.headers.get("Docker-Content-Digest")

    @retry_unavailable
    def get_manifest(self, repository: str, reference: str) -> Manifest | None:
        """Return the manifest of `repository:reference`, or None when there is none."""
        response = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if response.status_code == 404:
            return None
        self._expect(response, (200,), f"manifest {repository}:{reference}")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        digest = response.headers.get("Docker-Content-Digest") or sha256_digest(response.content)
        return Manifest(media_type, response.content, digest)

    @retry_unavailable
    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """Store `manifest` under `repository:reference` and return its digest."""
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            content=manifest.content,
            headers={"Content-Type": manifest.media_type},
        )
        self._expect(response, (201,), f"push of manifest {repository}:{reference}")
        return response.headers.get("Docker-Content-Digest") or manifest.digest

    def copy_image(self, source_repository: str, reference: str, repository: str, tag: str) -> str:
        """Tag the image `source_repository@reference` as `repository:tag`; return its digest.

        Blobs are mounted across repositories, and an image index is copied
        with every manifest it lists, so nothing is downloaded.
        """
        manifest = self._source_manifest(source_repository, reference)
        self._copy_referenced(source_repository, repository, manifest)
        return self.put_manifest(repository, tag, manifest)

    def _source_manifest(self, repository: str, digest: str) -> Manifest:
        """Return a manifest by digest, remembered: content under a digest never changes."""
        cached = self._manifests.get((repository, digest))
        if cached is not None:
            return cached
        manifest = self.get_manifest(repository, digest)
        if manifest is None:
            raise RegistryError(f"{self.registry}/{repository}@{digest} not found")
        if digest.startswith("sha256:"):
            self._manifests[(repository, digest)] = manifest
        return manifest

    def _copy_referenced(self, source_repository: str, repository: str, manifest: Manifest) -> None:
        document = manifest.json()
        if manifest.media_type in INDEX_TYPES:
            for child in document.get("manifests", []):
                child_manifest = self._source_manifest(source_repository, child["digest"])
                self._copy_referenced(source_repository, repository, child_manifest)
                self.put_manifest(repository, child["digest"], child_manifest)
            return
        for blob in [document["config"], *document.get("layers", [])]:
            self.mount_blob(repository, blob["digest"], source_repository)

    # Internals

    def _start_upload(self, repository: str, digest: str) -> httpx.URL:
        """Open an upload session; return its URL with `digest` added to the registry's own query."""
        response = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        self._expect(response, (202,), f"blob upload to {repository}")
        location = self._http.base_url.join(response.headers["Location"])
        return location.copy_merge_params({"digest": digest})

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise self._unavailable(error) from None

    def _unavailable(self, error: Exception) -> RegistryUnavailable:
        return RegistryUnavailable(
            f"registry {self.registry} is unreachable ({error.__class__.__name__}: {error}); "
            "check FARM_REGISTRY, FARM_REGISTRY_CA_FILE for HTTPS, and that the registry is running"
        )

    def _expect(self, response: httpx.Response, codes: tuple[int, ...], what: str) -> None:
        if response.status_code in codes:
            return
        if response.status_code == 401:
            raise RegistryError(
                f"{what} on {self.registry} was refused: authentication required or the credentials "
                "were rejected; check the registry's entry in the auth file (FARM_REGISTRY_AUTH_FILE, "
                "REGISTRY_AUTH_FILE or ~/.docker/config.json)"
            )
        detail = ""
        if not response.is_stream_consumed:
            try:
                response.read()
            except httpx.HTTPError:
                pass
        if response.is_stream_consumed:
            detail = response.text[:300].strip()
        raise RegistryError(
            f"{what} on {self.registry} failed: HTTP {response.status_code} {detail}".rstrip()
        )


def _read_chunks(stream) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk
