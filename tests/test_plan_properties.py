"""Property-based tests: random multi-stage Dockerfiles against the references they contain."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.dockerfile import parse_dockerfile
from farm.errors import DockerfileError
from farm.plan import check_renderable, plan_graph
from farm.stages import split_stages

NAMES = ["base", "build", "tools", "assets", "final"]


def _cased(draw, name: str) -> str:
    flags = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if upper else c for c, upper in zip(name, flags, strict=True))


@st.composite
def dockerfiles(draw):
    """Return (text, expected needs by stage index, stage ids) for a valid random Dockerfile."""
    count = draw(st.integers(min_value=1, max_value=5))
    names = [NAMES[index] if draw(st.booleans()) else None for index in range(count)]
    lines: list[str] = []
    expected: list[list[int]] = []
    for index, name in enumerate(names):
        needs: list[int] = []
        earlier_named = [i for i in range(index) if names[i]]
        if earlier_named and draw(st.booleans()):
            base = draw(st.sampled_from(earlier_named))
            lines.append(f"FROM {_cased(draw, names[base])}" + (f" AS {_cased(draw, name)}" if name else ""))
            needs.append(base)
        else:
            lines.append("FROM busybox" + (f" AS {_cased(draw, name)}" if name else ""))

        for _ in range(draw(st.integers(min_value=0, max_value=4))):
            kind = draw(st.sampled_from(["copy-name", "copy-index", "copy-image", "mount", "heredoc", "run"]))
            if kind == "copy-name" and earlier_named:
                source = draw(st.sampled_from(earlier_named))
                lines.append(f"COPY --from={_cased(draw, names[source])} /a /a")
                needs.append(source)
            elif kind == "copy-index" and index > 0:
                source = draw(st.integers(min_value=0, max_value=index - 1))
                lines.append(f"COPY --from={source} /a /a")
                needs.append(source)
            elif kind == "copy-image":
                lines.append("COPY --from=debian:bookworm /etc/os-release /os-release")
            elif kind == "mount" and earlier_named:
                source = draw(st.sampled_from(earlier_named))
                lines.append(f"RUN --mount=type=bind,from={_cased(draw, names[source])},target=/m true")
                needs.append(source)
            elif kind == "heredoc":
                # The body looks like instructions that read from stages; it must not count.
                lines.extend(["RUN <<EOF", "FROM final", "COPY --from=0 /x /x", "EOF"])
            else:
                lines.append("RUN true")
        unique: list[int] = []
        for need in needs:
            if need not in unique:
                unique.append(need)
        expected.append(unique)
    ids = [name if name else str(index) for index, name in enumerate(names)]
    return "\n".join(lines) + "\n", expected, ids


@settings(max_examples=300, deadline=None)
@given(dockerfiles())
def test_needs_are_the_references(case) -> None:
    text, expected, ids = case
    graph = split_stages(parse_dockerfile(text))
    assert [stage.needs for stage in graph.stages] == expected


@settings(max_examples=300, deadline=None)
@given(dockerfiles(), st.data())
def test_plan_lists_each_needed_stage_once(case, data) -> None:
    text, expected, ids = case
    graph = split_stages(parse_dockerfile(text))
    target = data.draw(st.integers(min_value=0, max_value=len(ids) - 1))

    plan = plan_graph(graph, ids[target])

    planned = [stage.index for stage in plan.stages]
    assert len(planned) == len(set(planned))
    assert planned == sorted(planned)
    needed = {target}
    for index in range(target, -1, -1):
        if index in needed:
            needed.update(expected[index])
    assert set(planned) == needed


LINE_PIECES = [
    "FROM busybox",
    "FROM busybox AS a",
    "FROM A AS b",
    "FROM $X",
    "FROM --platform=$BUILDPLATFORM busybox AS c",
    "ARG X=busybox",
    "ARG",
    "COPY --from=a /x /y",
    "COPY --from=b /x /y",
    "COPY --from=9 /x /y",
    "COPY --from=$X /x /y",
    "COPY <<EOF /dest",
    "COPY <<'EOF' /d/ <<X",
    "ADD --from=a /x /y",
    'RUN --mount=type=bind,"from=a",target=/m true',
    "RUN --mount=from=${X} true",
    "RUN <<EOF",
    "RUN <<-EOF cat",
    "RUN <<EOF\n#!/bin/sh",
    "EOF",
    "\tEOF",
    "RUN echo $X \\",
    "# comment",
    "",
    'SHELL ["/bin/sh", "-c"]',
    "SHELL not json",
    "# escape=`",
    "BOGUS",
    'COPY ["a", "b"',
    "RUN echo 'unbalanced",
]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(LINE_PIECES) | st.text(max_size=30), max_size=12),
    st.sampled_from([None, "a", "b", "0"]),
)
def test_planning_never_crashes(tmp_path: Path, lines: list[str], target: str | None) -> None:
    text = "\n".join(lines) + "\n"
    try:
        graph = split_stages(parse_dockerfile(text, str(tmp_path / "Dockerfile")))
        plan = plan_graph(graph, target)
        check_renderable(plan)
    except DockerfileError as error:
        assert error.path == str(tmp_path / "Dockerfile")
        assert error.line >= 1
