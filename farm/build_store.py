"""A build's state in Redis, and the atomic steps that move it forward.

Stage states go `waiting` -> `queued` -> `running` -> `done` (or `failed`,
or `cancelled` when a stage it depends on failed or the build was
cancelled). A build's status is `running` until `farm build` has written
the tags of every entry whose target was built; then it is `succeeded`,
or `failed` when any entry failed, or `cancelled` after `farm cancel`.
Each transition that touches several keys is one Lua script, so two
workers finishing the last two dependencies of a stage release it exactly
once. The scripts also count stages in `farm:stats` for `farm metrics`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from . import redis_keys as keys
from .spec import StageResult, StageSpec

# A stage's holder is stored as JSON {"worker": id, "instance": token} in
# the global `farm:running` hash. The holder is live while the heartbeat
# profile `farm:worker:<id>` carries the same instance token, so a worker
# restarted under the same id does not keep its predecessor's stages alive.
# NOTE: the scripts read worker profiles by a name built inside the script,
# which Redis Cluster does not allow; the farm uses one Redis node.
_HOLDER_ALIVE = """
local function holder_alive(holder, prefix)
  if not holder then return false end
  local ok, parsed = pcall(cjson.decode, holder)
  if not ok or type(parsed) ~= 'table' or not parsed.worker then return false end
  local profile = redis.call('GET', prefix .. parsed.worker)
  if not profile then return false end
  local ok2, live = pcall(cjson.decode, profile)
  return ok2 and type(live) == 'table' and live.instance == parsed.instance
end
"""

_START = (
    _HOLDER_ALIVE
    + """
local status = redis.call('HGET', KEYS[2], 'status')
local state = redis.call('HGET', KEYS[1], ARGV[1])
if state == 'done' then return 2 end
if status ~= 'running' then return 0 end
if state == 'failed' or state == 'cancelled' then return 0 end
if state == 'running' and holder_alive(redis.call('HGET', KEYS[4], ARGV[3]), ARGV[4]) then return 3 end
local instance = ''
local profile = redis.call('GET', KEYS[5])
if profile then
  local ok, parsed = pcall(cjson.decode, profile)
  if ok and type(parsed) == 'table' and parsed.instance then instance = parsed.instance end
end
redis.call('HSET', KEYS[1], ARGV[1], 'running')
redis.call('HSET', KEYS[4], ARGV[3], cjson.encode({worker = ARGV[2], instance = instance}))
redis.call('HSET', KEYS[6], ARGV[1], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'type', 'started', 'stage', ARGV[1], 'worker', ARGV[2])
return 1
"""
)

# Move a stage whose holder is no longer live back to `queued`, unless it
# finished or another worker took it over since the reaper looked.
_REQUEUE = (
    _HOLDER_ALIVE
    + """
local holder = redis.call('HGET', KEYS[3], ARGV[2])
if holder ~= ARGV[3] then return 0 end
if holder_alive(holder, ARGV[4]) then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'running' then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'queued')
local worker = cjson.decode(holder).worker
redis.call('XADD', KEYS[4], '*', 'type', 'requeued', 'stage', ARGV[1], 'worker', worker)
return 1
"""
)

# Move a stage that this worker holds back to `queued` after it ran out
# of disk space, at most ARGV[5] times per stage (counted in the build's
# hash), so a stage too large for every worker fails in the end.
_REQUEUE_HELD = """
local holder = redis.call('HGET', KEYS[3], ARGV[2])
if not holder then return 0 end
local ok, parsed = pcall(cjson.decode, holder)
if not ok or type(parsed) ~= 'table' or parsed.worker ~= ARGV[3] then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'running' then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
if redis.call('HINCRBY', KEYS[2], 'space-requeues:' .. ARGV[1], 1) > tonumber(ARGV[5]) then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], 'queued')
redis.call('XADD', KEYS[4], '*', 'type', 'requeued', 'stage', ARGV[1], 'worker', ARGV[3], 'reason', ARGV[4])
return 1
"""

# A stage delivered again after it was done is completed again (to release
# its dependants) but counted once.
_COMPLETE = """
local before = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], 'done')
redis.call('HDEL', KEYS[6], ARGV[6])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if before ~= 'done' then
  redis.call('HINCRBY', KEYS[5], ARGV[5] == '1' and 'stages_cached' or 'stages_built', 1)
end
redis.call('XADD', KEYS[4], '*', 'type', 'built', 'stage', ARGV[1], 'data', ARGV[2])
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[4], '*', 'type', 'target-built', 'stage', ARGV[1])
end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return {} end
local released = {}
for i = 7, #ARGV do
  local dependant = ARGV[i]
  local pending = ARGV[3] .. dependant
  redis.call('SREM', pending, ARGV[1])
  if redis.call('SCARD', pending) == 0 then
    local state = redis.call('HGET', KEYS[1], dependant)
    if state == 'waiting' or state == 'queued' then
      redis.call('HSET', KEYS[1], dependant, 'queued')
      redis.call('XADD', KEYS[4], '*', 'type', 'queued', 'stage', dependant)
      table.insert(released, dependant)
    end
  end
end
return released
"""

_FAIL = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'failed' then
  redis.call('HINCRBY', KEYS[5], 'stages_failed', 1)
end
redis.call('HSET', KEYS[1], ARGV[1], 'failed')
redis.call('HDEL', KEYS[6], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[4], '*', 'type', 'failed', 'stage', ARGV[1], 'data', ARGV[2])
local cancelled = {}
for i = 4, #ARGV do
  local state = redis.call('HGET', KEYS[1], ARGV[i])
  if state == 'waiting' or state == 'queued' then
    redis.call('HSET', KEYS[1], ARGV[i], 'cancelled')
    table.insert(cancelled, ARGV[i])
  end
end
if #cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'stages_cancelled', #cancelled) end
redis.call('XADD', KEYS[4], '*', 'type', 'cancelled', 'stage', ARGV[1], 'cancelled', cjson.encode(cancelled))
return cancelled
"""

# Cancel a running build: its status becomes `cancelled` (so START skips
# any of its messages still queued) and every waiting or queued stage is
# cancelled. Running stages stay `running` until their worker has stopped
# Buildah; it sees the status and calls _STOPPED. Returns {found, status,
# cancelled stages (JSON), running stages (JSON)}.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, '', '[]', '[]'} end
if status ~= 'running' then return {1, status, '[]', '[]'} end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled', ARGV[1])
local cancelled = {}
local running = {}
local states = redis.call('HGETALL', KEYS[2])
for i = 1, #states, 2 do
  local stage, state = states[i], states[i + 1]
  if state == 'waiting' or state == 'queued' then
    redis.call('HSET', KEYS[2], stage, 'cancelled')
    table.insert(cancelled, stage)
  elseif state == 'running' then
    table.insert(running, stage)
  end
end
redis.call('HINCRBY', KEYS[4], 'builds_cancelled', 1)
if #cancelled > 0 then redis.call('HINCRBY', KEYS[4], 'stages_cancelled', #cancelled) end
local encoded_cancelled = #cancelled > 0 and cjson.encode(cancelled) or '[]'
local encoded_running = #running > 0 and cjson.encode(running) or '[]'
redis.call('XADD', KEYS[3], '*', 'type', 'build-cancelled', 'cancelled', encoded_cancelled,
  'running', encoded_running)
return {1, 'running', encoded_cancelled, encoded_running}
"""

# A worker stopped a running stage of a cancelled build.
_STOPPED = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'cancelled')
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'stages_cancelled', 1)
redis.call('XADD', KEYS[2], '*', 'type', 'stage-stopped', 'stage', ARGV[1], 'worker', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Event:
    """One progress event of a build, as stored in its Redis stream."""

    id: str
    type: str
    fields: dict[str, str]

    @property
    def stage(self) -> str | None:
        return self.fields.get("stage")


@dataclass(frozen=True)
class CancelOutcome:
    """The result of `BuildStore.cancel`: the build's status before, and the stages it changed."""

    found: bool
    status_before: str
    cancelled: list[str]
    running: list[str]

    @property
    def took_effect(self) -> bool:
        return self.found and self.status_before == "running"


class StartDecision:
    """The action `BuildStore.start` returns to a worker for a stage it received."""

    SKIP = 0
    BUILD = 1
    ALREADY_DONE = 2
    # Another worker, still live, is building the stage: a second delivery
    # of its message (for example after Redis's visibility timeout) must
    # not start it twice.
    HELD = 3


@dataclass(frozen=True)
class RunningStage:
    """A stage marked running, and the worker process that builds it."""

    build_id: str
    stage_id: str
    holder: str

    @property
    def worker(self) -> str:
        return json.loads(self.holder).get("worker", "?")


class BuildStore:
    """Reads and moves forward the state of builds in one Redis database."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._start = client.register_script(_START)
        self._complete = client.register_script(_COMPLETE)
        self._fail = client.register_script(_FAIL)
        self._cancel = client.register_script(_CANCEL)
        self._stopped = client.register_script(_STOPPED)
        self._requeue = client.register_script(_REQUEUE)
        self._requeue_held = client.register_script(_REQUEUE_HELD)

    def create(
        self,
        build_id: str,
        record: dict[str, str],
        specs: list[StageSpec],
        cached: dict[str, StageResult] | None = None,
    ) -> list[str]:
        """Store a new build in one transaction; return the ids of the stages to queue now.

        Cached stages are stored as done, with their results, and their
        events come first, so a follower sees them like any finished stage.
        """
        cached = cached or {}
        roots = [spec.id for spec in specs if spec.id not in cached and all(n in cached for n in spec.needs)]
        states = {
            spec.id: "done" if spec.id in cached else "queued" if spec.id in roots else "waiting"
            for spec in specs
        }
        created = time.time()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.build(build_id), mapping={**record, "status": "running", "created": str(created)})
        pipe.zadd(keys.builds(), {build_id: created})
        pipe.zremrangebyscore(keys.builds(), "-inf", created - keys.BUILD_TTL_SECONDS)
        pipe.hincrby(keys.stats(), "builds_submitted", 1)
        if cached:
            pipe.hincrby(keys.stats(), "stages_cached", len(cached))
        pipe.hset(keys.specs(build_id), mapping={spec.id: spec.to_json() for spec in specs})
        pipe.hset(keys.states(build_id), mapping=states)
        if cached:
            pipe.hset(
                keys.results(build_id), mapping={node: result.to_json() for node, result in cached.items()}
            )
        for spec in specs:
            waiting_for = [need for need in spec.needs if need not in cached]
            if waiting_for and spec.id not in cached:
                pipe.sadd(keys.pending(build_id, spec.id), *waiting_for)
        for spec in specs:
            if spec.id in cached:
                pipe.xadd(
                    keys.events(build_id),
                    {"type": "cached", "stage": spec.id, "data": cached[spec.id].to_json()},
                )
                if spec.is_target:
                    pipe.xadd(keys.events(build_id), {"type": "target-built", "stage": spec.id})
        for stage_id in roots:
            pipe.xadd(keys.events(build_id), {"type": "queued", "stage": stage_id})
        pipe.execute()
        return roots

    def spec(self, build_id: str, stage_id: str) -> StageSpec | None:
        text = self.redis.hget(keys.specs(build_id), stage_id)
        return StageSpec.from_json(text) if text else None

    def specs(self, build_id: str) -> dict[str, StageSpec]:
        raw = self.redis.hgetall(keys.specs(build_id))
        return {k.decode(): StageSpec.from_json(v) for k, v in raw.items()}

    def specs_of(self, build_id: str, stage_ids: list[str]) -> dict[str, StageSpec]:
        """Return the specs of some stages of a build, skipping ids it does not have.

        Cheaper than `specs` on the dispatch path: each spec lists its
        descendants, so the specs of a chain together grow with the square
        of its length.
        """
        raw = self.redis.hmget(keys.specs(build_id), stage_ids) if stage_ids else []
        return {
            stage_id: StageSpec.from_json(text) for stage_id, text in zip(stage_ids, raw, strict=True) if text
        }

    def record(self, build_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(keys.build(build_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def states(self, build_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(keys.states(build_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def result(self, build_id: str, stage_id: str) -> StageResult | None:
        text = self.redis.hget(keys.results(build_id), stage_id)
        return StageResult.from_json(text) if text else None

    def runs(self, build_id: str) -> dict[str, dict]:
        """Return, per started stage, the worker that started it and when (epoch seconds)."""
        raw = self.redis.hgetall(keys.runs(build_id))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def start(self, build_id: str, stage_id: str, worker_id: str) -> int:
        """Mark a stage running on `worker_id`; return a `StartDecision` value.

        The holder recorded is the worker's current process, identified by
        the instance token of its heartbeat profile.
        """
        run = json.dumps({"worker": worker_id, "started": time.time()})
        return int(
            self._start(
                keys=[
                    keys.states(build_id),
                    keys.build(build_id),
                    keys.events(build_id),
                    keys.running(),
                    keys.worker(worker_id),
                    keys.runs(build_id),
                ],
                args=[stage_id, worker_id, keys.running_field(build_id, stage_id), keys.worker(""), run],
            )
        )

    def complete(self, build_id: str, spec: StageSpec, result: StageResult) -> list[str]:
        """Mark a stage done; return the dependants it released, now `queued`.

        Retried while Redis restarts: a stage built but never recorded
        would stay `running` under a live worker.
        """
        released = _retry_connection(
            self._complete,
            keys=_finish_keys(build_id),
            args=[
                spec.id,
                result.to_json(),
                keys.pending_prefix(build_id),
                "1" if spec.is_target else "0",
                "1" if result.cached else "0",
                keys.running_field(build_id, spec.id),
                *spec.dependants,
            ],
        )
        return [stage.decode() for stage in released]

    def fail(self, build_id: str, spec: StageSpec, result: StageResult) -> list[str]:
        """Mark a stage failed and cancel its descendants; return the stages cancelled (retried like `complete`)."""
        cancelled = _retry_connection(
            self._fail,
            keys=_finish_keys(build_id),
            args=[spec.id, result.to_json(), keys.running_field(build_id, spec.id), *spec.descendants],
        )
        return [stage.decode() for stage in cancelled]

    def cancel(self, build_id: str) -> CancelOutcome:
        """Cancel a running build and its waiting and queued stages, in one script."""
        found, status, cancelled, running = self._cancel(
            keys=[keys.build(build_id), keys.states(build_id), keys.events(build_id), keys.stats()],
            args=[str(time.time())],
        )
        return CancelOutcome(
            found=bool(found),
            status_before=status.decode() if isinstance(status, bytes) else str(status),
            cancelled=json.loads(cancelled),
            running=json.loads(running),
        )

    def stage_stopped(self, build_id: str, stage_id: str, worker_id: str) -> bool:
        """Mark a running stage of a cancelled build cancelled; return whether it was running."""
        return bool(
            self._stopped(
                keys=[keys.states(build_id), keys.events(build_id), keys.stats(), keys.running()],
                args=[stage_id, worker_id, keys.running_field(build_id, stage_id)],
            )
        )

    def status(self, build_id: str) -> str | None:
        """Return the build's status (running, succeeded, failed, cancelled), or None if unknown."""
        value = self.redis.hget(keys.build(build_id), "status")
        return value.decode() if value else None

    def expire(self, build_id: str) -> None:
        """Let a finished build's keys expire after `BUILD_TTL_SECONDS`; delete its secrets now."""
        pipe = self.redis.pipeline(transaction=False)
        self._expire_keys(pipe, build_id)
        pipe.execute()

    def running_stages(self) -> list[RunningStage]:
        """Return every stage marked running, in any build, with its holder."""
        stages = []
        for field, holder in self.redis.hgetall(keys.running()).items():
            build_id, _, stage_id = field.decode().partition("/")
            stages.append(RunningStage(build_id, stage_id, holder.decode()))
        return stages

    def requeue_orphan(self, stage: RunningStage) -> bool:
        """Move `stage` back to `queued` if its holder is not live; return whether it moved.

        The caller sends the stage's message again when this returns True.
        """
        moved = self._requeue(
            keys=[
                keys.states(stage.build_id),
                keys.build(stage.build_id),
                keys.running(),
                keys.events(stage.build_id),
            ],
            args=[
                stage.stage_id,
                keys.running_field(stage.build_id, stage.stage_id),
                stage.holder,
                keys.worker(""),
            ],
        )
        return bool(moved)

    def requeue_held(self, build_id: str, stage_id: str, worker_id: str, reason: str, limit: int) -> bool:
        """Move a stage `worker_id` holds back to `queued`, at most `limit` times; return whether it moved.

        The caller sends the stage's message again when this returns True,
        and fails the stage otherwise.
        """
        moved = self._requeue_held(
            keys=[keys.states(build_id), keys.build(build_id), keys.running(), keys.events(build_id)],
            args=[stage_id, keys.running_field(build_id, stage_id), worker_id, reason, limit],
        )
        return bool(moved)

    def finish(self, build_id: str, status: str, **fields: str) -> None:
        """Record the end of a build, delete its secrets and let its other keys expire."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.build(build_id), mapping={"status": status, "finished": str(time.time()), **fields})
        pipe.xadd(keys.events(build_id), {"type": status, **fields})
        self._expire_keys(pipe, build_id)
        pipe.execute()

    def emit(self, build_id: str, event_type: str, **fields: str) -> None:
        self.redis.xadd(keys.events(build_id), {"type": event_type, **fields})

    def events(self, build_id: str, after: str = "0", block_ms: int = 1000) -> Iterator[Event]:
        """Yield the build's events after `after`, waiting up to `block_ms` for new ones."""
        reply = self.redis.xread({keys.events(build_id): after}, block=block_ms, count=100)
        for _stream, entries in reply or []:
            for event_id, raw in entries:
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                yield Event(event_id.decode(), fields.get("type", ""), fields)

    def _expire_keys(self, pipe: redis.client.Pipeline, build_id: str) -> None:
        """Queue on `pipe` the expiry of a build's keys and the deletion of its secrets."""
        for key in self._build_keys(build_id):
            pipe.expire(key, keys.BUILD_TTL_SECONDS)
        pipe.delete(keys.secrets(build_id))

    def _build_keys(self, build_id: str) -> list[str]:
        names = [
            keys.build(build_id),
            keys.specs(build_id),
            keys.states(build_id),
            keys.results(build_id),
            keys.events(build_id),
            keys.runs(build_id),
        ]
        names += [key.decode() for key in self.redis.scan_iter(match=keys.pending_prefix(build_id) + "*")]
        names += [key.decode() for key in self.redis.scan_iter(match=keys.stage_log(build_id, "*"))]
        return names


# How long a worker keeps trying to record a finished stage while Redis is away.
_RECORD_RETRY_SECONDS = 300


def _retry_connection(script, **arguments):
    """Run a Lua script, again with backoff while Redis is unreachable (running one twice is harmless)."""
    retrying = Retrying(
        retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)),
        wait=wait_exponential(multiplier=0.5, max=5),
        stop=stop_after_delay(_RECORD_RETRY_SECONDS),
        reraise=True,
    )
    return retrying(script, **arguments)


def _finish_keys(build_id: str) -> list[str]:
    """Return the keys the COMPLETE and FAIL scripts take, in their order."""
    return [
        keys.states(build_id),
        keys.build(build_id),
        keys.results(build_id),
        keys.events(build_id),
        keys.stats(),
        keys.running(),
    ]


def decode_data(event: Event) -> dict:
    """Return the JSON `data` field of an event, or an empty dict."""
    data = event.fields.get("data")
    return json.loads(data) if data else {}
