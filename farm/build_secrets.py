"""Build secrets: values a `RUN --mount=type=secret,id=ID` step reads, kept out of Redis in clear.

`farm build --secret id=ID,src=FILE` (or `env=VAR`, as with `docker build`)
reads each value on the producer and encrypts it with Fernet
(AES-128-CBC with an HMAC-SHA256, from the `cryptography` package) under
the key the producer and the workers share (`FARM_SECRET_KEY`). Redis
holds only the ciphertexts, in `farm:build:<id>:secrets`, which expires
after `SECRETS_TTL_SECONDS` and is deleted when the build finishes. A
worker decrypts a value into a file only it can read, passes it to
`buildah bud --secret`, and deletes the file after the stage; Buildah
mounts it at `/run/secrets/ID` for that step alone, so it is not in any
layer.

Secret values are not part of a stage's content key, as with Docker's
cache: a stage built with one value is reused with another.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import redis
from cryptography.fernet import Fernet, InvalidToken

from . import redis_keys as keys
from .errors import FarmError

# Long enough for a build to wait in a busy queue; a stage that starts later
# fails with a message naming the expiry.
SECRETS_TTL_SECONDS = 24 * 3600

_SECRET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BuildSecret:
    """One secret given to a build: its id and value."""

    id: str
    value: bytes = field(repr=False)


def parse_secret(text: str, environ: dict[str, str] | os._Environ | None = None) -> BuildSecret:
    """Read `id=ID,src=FILE` or `id=ID,env=VAR` (docker build's `--secret` form) into a secret."""
    env = os.environ if environ is None else environ
    fields = {}
    for item in text.split(","):
        name, separator, value = item.partition("=")
        if not separator or name.strip() not in ("id", "src", "source", "env", "type"):
            raise FarmError(f"invalid --secret {text!r}: expected id=ID,src=FILE or id=ID,env=VAR")
        fields[name.strip()] = value.strip()

    secret_id = fields.get("id", "")
    if not _SECRET_ID.match(secret_id):
        raise FarmError(f"invalid --secret {text!r}: the id must be letters, digits, '.', '_' or '-'")
    source = fields.get("src") or fields.get("source")
    variable = fields.get("env")
    if bool(source) == bool(variable):
        raise FarmError(f"invalid --secret {text!r}: give exactly one of src=FILE and env=VAR")

    if variable:
        if variable not in env:
            raise FarmError(f"--secret {secret_id}: environment variable {variable} is not set")
        return BuildSecret(secret_id, env[variable].encode())
    try:
        return BuildSecret(secret_id, Path(source).expanduser().read_bytes())
    except OSError as error:
        raise FarmError(f"--secret {secret_id}: cannot read {source}: {error.strerror}") from None


def secret_cipher(key: str | None) -> Fernet:
    """Return the Fernet cipher of FARM_SECRET_KEY; FarmError when the key is missing or invalid."""
    if not key:
        raise FarmError(
            "build secrets need FARM_SECRET_KEY (or FARM_SECRET_KEY_FILE), the key the producer and "
            "the workers share; make one with: python3 -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )
    try:
        return Fernet(key)
    except ValueError:
        # The message must not include the key.
        raise FarmError(
            "invalid FARM_SECRET_KEY: expected 32 bytes in URL-safe base64 (a Fernet key)"
        ) from None


def seal_secrets(secrets: list[BuildSecret], key: str | None) -> dict[str, bytes]:
    """Encrypt each secret; return the ciphertexts by id. Raises FarmError for a repeated id."""
    if not secrets:
        return {}
    cipher = secret_cipher(key)
    sealed = {}
    for secret in secrets:
        if secret.id in sealed:
            raise FarmError(f"--secret id {secret.id!r} is given twice")
        sealed[secret.id] = cipher.encrypt(secret.value)
    return sealed


def store_secrets(client: redis.Redis, build_id: str, sealed: dict[str, bytes]) -> None:
    """Store the build's encrypted secrets with their expiry, in one transaction."""
    if not sealed:
        return
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.secrets(build_id), mapping=sealed)
    pipe.expire(keys.secrets(build_id), SECRETS_TTL_SECONDS)
    pipe.hset(keys.build(build_id), "secrets", " ".join(sorted(sealed)))
    pipe.execute()


def open_secrets(client: redis.Redis, build_id: str, key: str | None) -> dict[str, bytes]:
    """Return the build's secrets, decrypted; FarmError when they cannot be read."""
    expected = client.hget(keys.build(build_id), "secrets")
    if not expected:
        return {}
    sealed = client.hgetall(keys.secrets(build_id))
    if not sealed:
        raise FarmError(
            f"the secrets of build {build_id} expired from Redis ({SECRETS_TTL_SECONDS // 3600} h after "
            "submission) or were deleted; submit the build again"
        )
    cipher = secret_cipher(key)
    opened = {}
    for secret_id, token in sealed.items():
        try:
            opened[secret_id.decode()] = cipher.decrypt(token)
        except InvalidToken:
            raise FarmError(
                f"cannot decrypt secret {secret_id.decode()!r} of build {build_id}: this worker's "
                "FARM_SECRET_KEY differs from the producer's"
            ) from None
    return opened
