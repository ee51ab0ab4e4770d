"""Reading Dockerfiles: instructions, stages, references and the errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.dockerfile import parse_dockerfile, read_dockerfile
from farm.errors import DockerfileError, FarmError
from farm.plan import plan_dockerfile
from farm.stages import split_stages


def _plan(tmp_path: Path, text: str, **options):
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return plan_dockerfile(path, **options)


def _error(tmp_path: Path, text: str, **options) -> DockerfileError:
    with pytest.raises(DockerfileError) as caught:
        _plan(tmp_path, text, **options)
    return caught.value


def test_missing_dockerfile_names_path(tmp_path: Path) -> None:
    with pytest.raises(FarmError, match=f"Dockerfile not found: {tmp_path}/nope"):
        read_dockerfile(tmp_path / "nope")


def test_no_from_is_refused(tmp_path: Path) -> None:
    error = _error(tmp_path, "ARG A=1\n\n")
    assert "no FROM instruction" in str(error)
    assert str(error).startswith(f"{tmp_path}/Dockerfile:1:")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    assert "no FROM" in str(_error(tmp_path, ""))


def test_instruction_before_from(tmp_path: Path) -> None:
    error = _error(tmp_path, "RUN true\nFROM busybox\n")
    assert error.line == 1
    assert "before the first FROM" in str(error)


def test_unknown_instruction_names_line(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox\nRUN true\nBOGUS thing\n")
    assert error.line == 3
    assert "unknown instruction BOGUS" in str(error)


def test_heredoc_body_is_not_instructions() -> None:
    source = parse_dockerfile("FROM busybox\nRUN <<EOF\nFROM is text\nBOGUS too\nEOF\nRUN true\n")
    keywords = [instruction.keyword for instruction in source.instructions]
    assert keywords == ["FROM", "RUN", "RUN"]
    heredoc = source.instructions[1].heredocs[0]
    assert heredoc.body == "FROM is text\nBOGUS too\n"
    assert source.instructions[2].line == 6


def test_several_heredocs_and_quoted_delimiters() -> None:
    text = "FROM busybox\nCOPY <<ONE <<'TWO' /dest/\none\nONE\ntwo $X\nTWO\n"
    instruction = parse_dockerfile(text).instructions[1]
    assert [h.delimiter for h in instruction.heredocs] == ["ONE", "TWO"]
    assert instruction.heredocs[1].quoted
    assert instruction.end_line == 6


def test_heredoc_with_tab_stripping() -> None:
    text = "FROM busybox\nRUN <<-EOT\n\techo hi\n\tEOT\nRUN true\n"
    source = parse_dockerfile(text)
    assert source.instructions[1].heredocs[0].strip_tabs
    assert [i.keyword for i in source.instructions] == ["FROM", "RUN", "RUN"]


def test_unterminated_heredoc(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox\nRUN <<EOF\necho hi\n")
    assert error.line == 2
    assert "unterminated heredoc" in str(error)


def test_continuation_across_blank_and_comment_lines() -> None:
    source = parse_dockerfile("FROM busybox\nRUN echo one \\\n\n# note\n    && echo two\nRUN true\n")
    assert source.instructions[1].arguments == "echo one     && echo two"
    assert source.instructions[2].line == 6


def test_escape_directive_backtick() -> None:
    source = parse_dockerfile("# escape=`\nFROM busybox\nRUN echo a `\n  b\n")
    assert source.escape == "`"
    assert source.instructions[1].arguments == "echo a   b"


def test_global_args_and_build_args_in_from(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "ARG IMG=busybox\nARG TAG\nFROM ${IMG}:${TAG:-1.0}\n", build_args={"TAG": "2"})
    assert plan.stages[0].base == "busybox:2"


def test_stage_arg_not_seen_by_later_from(tmp_path: Path) -> None:
    text = "FROM busybox AS one\nARG IMG=debian\nFROM ${IMG:-alpine}\n"
    plan = _plan(tmp_path, text)
    assert plan.target.base == "alpine"


def test_empty_base_after_substitution(tmp_path: Path) -> None:
    error = _error(tmp_path, "ARG IMG\nFROM $IMG\n")
    assert error.line == 2
    assert "empty" in str(error)


def test_copy_from_index_out_of_range(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox\nCOPY --from=3 /a /b\n")
    assert error.line == 2
    assert "invalid stage index" in str(error)


def test_copy_from_own_index(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox\nFROM busybox\nCOPY --from=1 /a /b\n")
    assert error.line == 3
    assert "not an earlier stage" in str(error)


def test_stage_reading_itself(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox AS me\nCOPY --from=me /a /b\n")
    assert "reads from itself" in str(error)


def test_unknown_target(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox AS one\n", target="two")
    assert "target stage 'two' not found" in str(error)


def test_mount_from_stage(tmp_path: Path) -> None:
    text = (
        "FROM busybox AS deps\n"
        "FROM busybox AS other\n"
        "FROM busybox\n"
        "RUN --mount=type=bind,from=other,target=/o true\n"
        "COPY --from=deps /a /a\n"
    )
    plan = _plan(tmp_path, text)
    assert plan.needs_ids(plan.target) == ["other", "deps"]


def test_platform_is_an_attribute_not_the_base(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "FROM --platform=linux/arm64 busybox AS b\n")
    assert plan.target.base == "busybox"
    assert plan.target.platform == "linux/arm64"


def test_duplicate_stage_name(tmp_path: Path) -> None:
    error = _error(tmp_path, "FROM busybox AS a\nFROM busybox AS A\n")
    assert error.line == 2
    assert "duplicate stage name" in str(error)


def test_split_keeps_global_args_apart() -> None:
    graph = split_stages(parse_dockerfile("ARG A=1\nFROM busybox\nARG A\nRUN echo $A\n"))
    assert [i.keyword for i in graph.global_args] == ["ARG"]
    assert [i.keyword for i in graph.stages[0].instructions] == ["ARG", "RUN"]
