"""Read the `--flag=value` words at the start of an instruction, as BuildKit does.

BuildKit takes flags from the words before the first word that does not
start with `--`; a value may be quoted (`--from="build"`). A `RUN --mount`
value is a CSV record of `key=value` fields whose keys are case-insensitive.
"""

from __future__ import annotations

import csv
import re
import shlex
from dataclasses import dataclass

# One flag word: `--name`, then an optional value in which quoted parts may
# contain blanks.
_FLAG_WORD = re.compile(r"""\s*(--(?:[^\s"']|"[^"]*"|'[^']*')+)""")


@dataclass(frozen=True)
class Flag:
    """One leading flag: its name, its value with quotes removed, and the text as written."""

    name: str
    value: str | None
    text: str


@dataclass(frozen=True)
class LeadingFlags:
    """The flags at the start of an instruction's arguments and the rest of the arguments."""

    flags: list[Flag]
    rest: str

    def value(self, name: str) -> str | None:
        """Return the value of the last flag called `name`, or None."""
        found = None
        for flag in self.flags:
            if flag.name == name:
                found = flag.value
        return found

    def values(self, name: str) -> list[str]:
        return [flag.value for flag in self.flags if flag.name == name and flag.value is not None]


def leading_flags(arguments: str) -> LeadingFlags:
    """Split `arguments` into its leading flags and the rest."""
    flags: list[Flag] = []
    position = 0
    while match := _FLAG_WORD.match(arguments, position):
        text = match.group(1)
        try:
            (unquoted,) = shlex.split(text)
        except ValueError:
            unquoted = text
        name, separator, value = unquoted[2:].partition("=")
        flags.append(Flag(name.lower(), value if separator else None, text))
        position = match.end()
    return LeadingFlags(flags, arguments[position:].strip())


def mount_fields(value: str) -> list[tuple[str, str | None]]:
    """Return the `(key, value)` fields of a `--mount` value; keys are lower-cased.

    A field without `=` (such as `ro`) has the value None. Raises ValueError
    for a value that is not one CSV record.
    """
    rows = list(csv.reader([value]))
    if len(rows) != 1:
        raise ValueError(f"invalid --mount value {value!r}")
    fields = []
    for field in rows[0]:
        key, separator, field_value = field.partition("=")
        fields.append((key.strip().lower(), field_value if separator else None))
    return fields


def format_mount(fields: list[tuple[str, str | None]]) -> str:
    """Return a `--mount` value for `fields`, quoting a field only where CSV needs it."""
    parts = []
    for key, value in fields:
        field = key if value is None else f"{key}={value}"
        if any(character in field for character in ',"\n'):
            field = '"' + field.replace('"', '""') + '"'
        parts.append(field)
    return ",".join(parts)
