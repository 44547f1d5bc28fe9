"""Which names a gallery holds: a person's name reaches file listings, URLs, terminals and logs, so
it is a short line of visible text and nothing else."""
from __future__ import annotations

import unicodedata

from ..errors import InvalidNameError

MAX_NAME_LENGTH = 200
#: characters a name may not hold: path separators (names end up in URLs and file listings)
SEPARATORS = "/\\"


def identity_name(name: str) -> str:
    """`name` stripped and in Unicode normal form C, or `InvalidNameError` saying what is wrong:
    empty, longer than `MAX_NAME_LENGTH`, a path separator, or a control, format (zero-width,
    bidirectional override), private-use, unassigned or line-separating character."""
    if not isinstance(name, str):
        raise InvalidNameError(f"a name is text, not {type(name).__name__}")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise InvalidNameError("a person needs a non-empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"a name of {len(name)} characters is too long (at most {MAX_NAME_LENGTH})")
    for char in name:
        if char in SEPARATORS:
            raise InvalidNameError(f"a name may not contain {char!r} (a path separator)")
        category = unicodedata.category(char)
        if category[0] in "CZ" and char != " ":  # Cc Cf Co Cn Cs, Zl Zp and spaces other than U+0020
            raise InvalidNameError(f"a name may not contain the invisible or control character "
                                   f"U+{ord(char):04X} ({unicodedata.name(char, category)})")
    return name
