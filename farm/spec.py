"""What Redis stores about a build and each of its stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class StageSpec:
    """Everything a worker needs to build one stage.

    `id` names the stage within its build (`[entry/]stage[@platform]`),
    and `stage` within its Dockerfile. `dockerfile` is the rendered
    single-stage file; `image` is the registry reference the result is
    pushed to; `step_lines` maps each build step (FROM first) to its line
    in the user's Dockerfile. `descendants` are cancelled when it fails.
    `parent` is the stage it starts `FROM`, when that is a stage.
    `mount_from_line` is the line of its first `RUN --mount ... from=`,
    which only some Buildah releases build correctly. `no_cache` (from
    `farm build --no-cache`) makes the worker build it even when its key
    is already in the registry.
    """

    id: str
    index: int
    key: str
    image: str
    dockerfile: str
    step_lines: list[int]
    needs: list[str]
    dependants: list[str]
    platform: str
    build_args: dict[str, str]
    context_digest: str | None
    source_path: str
    from_line: int
    stage: str = ""
    descendants: list[str] = field(default_factory=list)
    is_target: bool = False
    parent: str | None = None
    mount_from_line: int | None = None
    no_cache: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> StageSpec:
        return cls(**json.loads(text))


@dataclass
class StageResult:
    """What a worker reports for a stage it built or failed to build.

    `cached` is true when no Buildah ran: the stage's key was already in
    the registry.
    """

    worker: str
    digest: str | None = None
    seconds: float = 0.0
    line: int | None = None
    step: str | None = None
    error: str | None = None
    output: str = ""
    cached: bool = False
    push_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> StageResult:
        return cls(**json.loads(text))
