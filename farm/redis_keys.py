"""The Redis key layout of the farm, in one place.

Per build `<id>`:

| key | type | contents |
| --- | --- | --- |
| `farm:build:<id>` | hash | status, target, tags (JSON), dockerfile, context digest, times, error |
| `farm:build:<id>:specs` | hash | stage id -> stage spec (JSON): rendered Dockerfile, key, image, dependants |
| `farm:build:<id>:states` | hash | stage id -> waiting, queued, running, done, failed or cancelled |
| `farm:build:<id>:pending:<stage>` | set | ids of the stages `<stage>` still waits for |
| `farm:build:<id>:results` | hash | stage id -> result (JSON): worker, digest, seconds, line, output |
| `farm:build:<id>:runs` | hash | stage id -> the worker that started it and when (JSON: worker, started) |
| `farm:build:<id>:events` | stream | progress events, read by `farm build` |
| `farm:build:<id>:log:<stage>` | list | Buildah output lines of the stage, appended while it builds |
| `farm:build:<id>:secrets` | hash | secret id -> value encrypted with FARM_SECRET_KEY (farm/build_secrets.py); expires |

Per content key `<key>`: `farm:stage-lock:<key>` (string, the holder,
expires unless renewed), so concurrent builds build a stage once.

Per worker `<id>`: `farm:worker:<id>` (string, JSON profile with the
process's instance token, expires unless the worker renews it), and
`farm:min-free-disk:<id>` (string, optional: an operator's override of
the worker's `FARM_MIN_FREE_DISK`, read on every disk check). Celery's
own queues are `farm.stages.<platform>` (see `farm.celery_app`).

Across builds: `farm:builds` (sorted set, build id scored by its creation
time, for `farm status`), `farm:stats` (hash of counters since Redis
was created: builds_submitted, builds_cancelled, stages_built,
stages_cached, stages_failed, stages_cancelled; read by `farm metrics`),
and `farm:running` (hash, `<build id>/<stage id>` -> holder as JSON
`{"worker", "instance"}`): the stages being built and by which worker
process, so a live worker re-queues the stages of a dead one.
"""

from __future__ import annotations

PREFIX = "farm"

# Finished builds are kept this long for `farm build` to read, then expire.
BUILD_TTL_SECONDS = 7 * 24 * 3600


def build(build_id: str) -> str:
    return f"{PREFIX}:build:{build_id}"


def specs(build_id: str) -> str:
    return f"{build(build_id)}:specs"


def states(build_id: str) -> str:
    return f"{build(build_id)}:states"


def pending_prefix(build_id: str) -> str:
    return f"{build(build_id)}:pending:"


def pending(build_id: str, stage_id: str) -> str:
    return pending_prefix(build_id) + stage_id


def results(build_id: str) -> str:
    return f"{build(build_id)}:results"


def events(build_id: str) -> str:
    return f"{build(build_id)}:events"


def runs(build_id: str) -> str:
    """Return the hash of which worker started each stage of a build, and when."""
    return f"{build(build_id)}:runs"


def secrets(build_id: str) -> str:
    """Return the hash of a build's encrypted secrets, by secret id."""
    return f"{build(build_id)}:secrets"


def builds() -> str:
    """Return the sorted set of build ids, scored by creation time."""
    return f"{PREFIX}:builds"


def stats() -> str:
    """Return the hash of fleet-wide build and stage counters."""
    return f"{PREFIX}:stats"


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def min_free_disk(worker_id: str) -> str:
    """Return the optional override of one worker's minimum free disk space (`5G`, `10%`)."""
    return f"{PREFIX}:min-free-disk:{worker_id}"


def running() -> str:
    """Return the hash of every stage marked running, with the worker process that holds it."""
    return f"{PREFIX}:running"


def running_field(build_id: str, stage_id: str) -> str:
    return f"{build_id}/{stage_id}"


def worker_pattern() -> str:
    return f"{PREFIX}:worker:*"


def stage_lock(key: str) -> str:
    """Return the lock a worker holds while it builds the stage with content key `key`."""
    return f"{PREFIX}:stage-lock:{key}"


def stage_log(build_id: str, stage_id: str) -> str:
    """Return the list of Buildah output lines of one stage of a build."""
    return f"{build(build_id)}:log:{stage_id}"
