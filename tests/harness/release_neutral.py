"""Kubernetes releases word some admission errors differently; tests that run on more than one release compare
what every release says alike.

- A value a rule refused: 1.31 names its type (`Invalid value: "string": ...`), 1.37 prints it
  (`Invalid value: "169h": ...`, `Invalid value: null: ...`); for an object 1.31 says `Invalid value: "object": `
  where 1.37 says only `Invalid value: `.
- A length limit: 1.31 says `Too long: may not be longer than 256`, 1.37 `Too long: may not be more than 256 bytes`.

The field, the rule's message and the limit still have to match.
"""

import re
from typing import Any

_INVALID_OBJECT = re.compile(r'Invalid value: "object": ')
_INVALID_VALUE = re.compile(r'Invalid value: (?:"(?:[^"\\]|\\.)*"|[^\s:"]+): ')
_TOO_LONG = re.compile(r"Too long: may not be (?:longer|more) than (\d+)(?: bytes)?")


def release_neutral(found: Any) -> Any:
    """``found`` with each release's wording of those two errors replaced by one form (strings inside lists,
    tuples and dicts too)."""
    if isinstance(found, str):
        found = _INVALID_OBJECT.sub("Invalid value: ", found)
        return _TOO_LONG.sub(r"Too long: at most \1", _INVALID_VALUE.sub("Invalid value: <value>: ", found))
    if isinstance(found, tuple):
        return tuple(release_neutral(item) for item in found)
    if isinstance(found, list):
        return [release_neutral(item) for item in found]
    if isinstance(found, dict):
        return {key: release_neutral(value) for key, value in found.items()}
    return found
