"""The one error type for mistakes a user can make (paths, formats, names, shapes)."""

import difflib
from collections.abc import Iterable


class SslBenchError(Exception):
    """A user error: the CLI prints its one-line message and exits with code 2."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def whole_sentences(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters after a whole sentence (else after a whole word, marked '...')."""
    if len(text) <= limit:
        return text
    head = text[:limit + 1]
    end = head.rfind(". ")
    if end > 0:
        return head[:end + 1]
    return head[:limit - 4].rsplit(" ", 1)[0] + " ..."
