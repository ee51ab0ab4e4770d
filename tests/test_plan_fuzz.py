"""Mutated corpus Dockerfiles through `farm plan --json`: a plan or a clean `PATH:LINE` error, never a crash.

Every corpus Dockerfile is mutated many times with a fixed seed (lines
deleted, duplicated, swapped or cut, random and invalid UTF-8 bytes,
keywords in another case, stray heredoc openers, quotes and
backslashes, very long lines, unusual line separators), and each result is planned in-process.
"""

from __future__ import annotations

import json
import random
import re
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.batch import BuildEntry
from farm.cli import main
from farm.config import Settings
from farm.context import pack_context
from farm.dockerfile import parse_dockerfile
from farm.errors import DockerfileError, FarmError
from farm.graph import StageGraphBuilder
from farm.inline_images import inline_layer, plan_inline_images
from farm.plan import check_renderable, plan_dockerfile, plan_graph
from farm.registry import RegistryClient
from farm.stages import default_platform, split_stages
from farm.submit import BuildUnit

CORPUS = Path(__file__).parent / "corpus"
DOCKERFILES = sorted(CORPUS.glob("*/Dockerfile"))
MUTATIONS_PER_FILE = 15
SEED = 20240611
ERROR_WITH_LINE = re.compile(r"^farm: error: .+:\d+: ", re.MULTILINE)
KEYWORDS = re.compile(rb"^(\s*)([A-Za-z]+)", re.MULTILINE)


def _delete_line(lines: list[bytes], rng: random.Random) -> None:
    if lines:
        del lines[rng.randrange(len(lines))]


def _duplicate_line(lines: list[bytes], rng: random.Random) -> None:
    if lines:
        index = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[index])


def _swap_lines(lines: list[bytes], rng: random.Random) -> None:
    if len(lines) > 1:
        first, second = rng.sample(range(len(lines)), 2)
        lines[first], lines[second] = lines[second], lines[first]


def _cut_line(lines: list[bytes], rng: random.Random) -> None:
    if lines:
        index = rng.randrange(len(lines))
        lines[index] = lines[index][: rng.randrange(len(lines[index]) + 1)]


def _insert_bytes(lines: list[bytes], rng: random.Random) -> None:
    # Mostly characters that mean something to the parser; raw bytes are often invalid UTF-8.
    if rng.random() < 0.75:
        noise = bytes(rng.choice(b"$ {}:-+=\\\"'<>#[],/\tAZaz09_`") for _ in range(rng.randrange(1, 12)))
    else:
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
    index = rng.randrange(len(lines) + 1)
    if lines and index < len(lines) and rng.random() < 0.5:
        position = rng.randrange(len(lines[index]) + 1)
        lines[index] = lines[index][:position] + noise + lines[index][position:]
    else:
        lines.insert(index, noise)


def _invalid_utf8(lines: list[bytes], rng: random.Random) -> None:
    sequence = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    index = rng.randrange(len(lines) + 1)
    lines.insert(index, b"RUN echo " + sequence)


def _flip_keyword_case(lines: list[bytes], rng: random.Random) -> None:
    if lines:
        index = rng.randrange(len(lines))
        lines[index] = KEYWORDS.sub(lambda match: match.group(1) + match.group(2).swapcase(), lines[index])


def _heredoc_opener(lines: list[bytes], rng: random.Random) -> None:
    opener = rng.choice([b" <<EOF", b" <<-EOF", b" <<'EOF'", b' <<"EOF', b" <<", b" <<EOF <<END"])
    if lines and rng.random() < 0.7:
        index = rng.randrange(len(lines))
        lines[index] += opener
    else:
        lines.insert(rng.randrange(len(lines) + 1), b"RUN" + opener)


def _unbalanced_quote(lines: list[bytes], rng: random.Random) -> None:
    if lines:
        index = rng.randrange(len(lines))
        position = rng.randrange(len(lines[index]) + 1)
        quote = rng.choice([b'"', b"'", b"[", b'["', b"{"])
        lines[index] = lines[index][:position] + quote + lines[index][position:]


def _backslash_at_end(lines: list[bytes], rng: random.Random) -> None:
    if lines:
        index = rng.randrange(len(lines))
        lines[index] += rng.choice([b"\\", b" \\", b"`", b"\\\\"])


def _long_line(lines: list[bytes], rng: random.Random) -> None:
    filler = rng.choice([b"a", b"$A", b"${A:-", b"\\\n", b"--from=x "]) * rng.randrange(5000, 20000)
    lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"RUN ", b"FROM ", b"ARG A=", b"COPY "]) + filler)


def _line_separator(lines: list[bytes], rng: random.Random) -> None:
    # str.splitlines() ends a line at each of these, so code that mixes it with splitting at \n miscounts lines.
    separator = rng.choice([b"\r", b"\r\n", b"\x0b", b"\x0c", b"\x1c", b"\xc2\x85", b"\xe2\x80\xa8", b"\x00"])
    if lines:
        index = rng.randrange(len(lines))
        position = rng.randrange(len(lines[index]) + 1)
        lines[index] = lines[index][:position] + separator + lines[index][position:]


MUTATORS: list[Callable[[list[bytes], random.Random], None]] = [
    _delete_line,
    _duplicate_line,
    _swap_lines,
    _cut_line,
    _insert_bytes,
    _invalid_utf8,
    _flip_keyword_case,
    _heredoc_opener,
    _unbalanced_quote,
    _backslash_at_end,
    _long_line,
    _line_separator,
]


def mutate(text: bytes, rng: random.Random) -> bytes:
    """Return `text` with one to three random mutations applied."""
    lines = text.split(b"\n")
    for _ in range(rng.randint(1, 3)):
        rng.choice(MUTATORS)(lines, rng)
    return b"\n".join(lines)


def _cases() -> list[tuple[Path, int, bytes]]:
    rng = random.Random(SEED)
    return [
        (dockerfile, number, mutate(dockerfile.read_bytes(), rng))
        for dockerfile in DOCKERFILES
        for number in range(MUTATIONS_PER_FILE)
    ]


def _check_plan(path: Path, capsys: pytest.CaptureFixture[str]) -> str | None:
    """Plan `path` in-process; return what is wrong with the outcome, or None when it is a plan or a clean error."""
    try:
        status = main(["plan", "--json", "-f", str(path), str(path.parent)])
    except BaseException:  # noqa: BLE001 - any escape from main is the crash this test looks for
        capsys.readouterr()
        return f"crashed:\n{traceback.format_exc()}"
    captured = capsys.readouterr()

    if "Traceback" in captured.err:
        return f"printed a traceback:\n{captured.err}"
    if status == 0:
        try:
            json.loads(captured.out)
        except ValueError:
            return f"exit 0 without a JSON plan:\n{captured.out[:2000]}"
        return _check_keying(path)
    if status != 1:
        return f"exit {status}:\n{captured.err}"
    if ERROR_WITH_LINE.search(captured.err) or str(path) in captured.err:
        return None
    return f"error without PATH:LINE or the file:\n{captured.err}"


def _check_keying(path: Path) -> str | None:
    """Key and render a planned Dockerfile as `farm build` does before it queues; return a crash, or None.

    The settings name a registry on a closed port that no base image
    refers to, so no request is made. A request would fail as a FarmError.
    """
    settings = Settings(registry="127.0.0.1:9")
    entry = BuildEntry(name="fuzz", context=path.parent, dockerfile=path)
    try:
        plan = plan_dockerfile(path)
        unit = BuildUnit(entry, default_platform(), plan)
        for image in plan_inline_images(plan):
            inline_layer(image)
        context = pack_context(path.parent, path.parent / "context.tar.gz")
        with RegistryClient(settings.registry, insecure=True) as registry:
            StageGraphBuilder(settings, registry, naming=lambda unit, stage_id: stage_id).add(unit, context)
    except DockerfileError as error:
        return None if error.path == str(path) else f"error names another file: {error}"
    except FarmError as error:
        return None if str(path) in str(error) else f"error without the file: {error}"
    except BaseException:  # noqa: BLE001 - any other exception is a crash of `farm build`
        return f"keying crashed:\n{traceback.format_exc()}"
    finally:
        (path.parent / "context.tar.gz").unlink(missing_ok=True)
    return None


def test_mutated_corpus_plans_or_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _cases()
    assert len(cases) >= 300
    problems = []
    for source, number, text in cases:
        path = tmp_path / f"{source.parent.name}-{number}" / "Dockerfile"
        path.parent.mkdir()
        path.write_bytes(text)
        problem = _check_plan(path, capsys)
        if problem:
            problems.append(f"{source.parent.name} mutation {number} ({path}): {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} mutated Dockerfiles:\n\n" + "\n\n".join(
        problems[:10]
    )


TOKENS = [
    "FROM ",
    "from ",
    "busybox",
    " AS ",
    "base",
    "RUN ",
    "COPY ",
    "ADD ",
    "ARG ",
    "ENV ",
    "--from=",
    "base",
    "0",
    "1",
    "--mount=type=bind,from=",
    ",target=/m ",
    "--platform=",
    "$A",
    "${A}",
    "${A:-x}",
    "${",
    "A=",
    "<<EOF",
    "<<-EOF",
    "<<'EOF'",
    "EOF",
    '"',
    "'",
    "[",
    "]",
    "\\",
    "`",
    "#",
    "# escape=`",
    "# syntax=x",
    "\n",
    "\n",
    "\n",
    " ",
    "\t",
    "\r\n",
    "#!/bin/sh",
    "/a",
    "/b",
    "\x00",
    "\u2028",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_token_sequences_plan_or_clean_error(text: str) -> None:
    path = "fuzz/Dockerfile"
    try:
        graph = split_stages(parse_dockerfile(text, path))
        plan = plan_graph(graph)
        check_renderable(plan)
    except DockerfileError as error:
        assert error.path == path
        assert 1 <= error.line <= text.count("\n") + 2
