"""Model and adapter names in HTTP headers: percent-encoded, the same way everywhere.

Header values are latin-1 bytes; a name may be any printable Unicode. Printable ASCII other than
'%' and ',' (the mixture separator) passes unchanged, so ordinary names read as themselves.
"""

from urllib.parse import quote, unquote

_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")


def encode(name: str) -> str:
    """ValueError for a string that is not valid Unicode (a lone surrogate)."""
    try:
        return quote(name, safe=_SAFE, errors="strict")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode: {name!r}") from e


def decode(value: str) -> str:
    return unquote(value, errors="replace")  # a malformed escape names no model
