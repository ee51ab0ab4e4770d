"""Build-argument substitution in `FROM` lines and `--from` values.

Supports the forms BuildKit expands there: `$NAME`, `${NAME}`,
`${NAME:-default}`, `${NAME-default}`, `${NAME:+alternative}` and
`${NAME+alternative}`; an escaped `$` stays literal.
"""

from __future__ import annotations

import re

_VARIABLE = re.compile(
    r"\\(?P<escaped>\$)"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+])(?P<word>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


class SubstitutionError(ValueError):
    """A `${...}` expression that cannot be read."""


def substitute(text: str, values: dict[str, str | None]) -> str:
    """Expand variables in `text` from `values`; a missing or None value is empty.

    A name present with value None is declared without a value: `${X-d}`
    then gives the empty string, as in the shell.
    """
    if "${" in text and text.count("${") != len(re.findall(r"\$\{[^}]*\}", text)):
        raise SubstitutionError(f"unterminated ${{...}} in {text!r}")

    def replace(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        value = values.get(name)
        operator = match.group("op")
        if not operator:
            return value or ""
        word = substitute(match.group("word"), values)
        if operator == ":-":
            return value if value else word
        if operator == "-":
            return word if name not in values else (value or "")
        if operator == ":+":
            return word if value else ""
        return word if name in values else ""

    return _VARIABLE.sub(replace, text)
