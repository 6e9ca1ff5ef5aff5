"""Text analysis for code search: identifier splitting, lowercasing, stopwords.

`analyze(text)` returns two token lists:
- `stream`: the positional sub-token stream (identifiers split on snake_case, camelCase and
  digit boundaries, lowercased, stopwords removed). Phrase and proximity features use it.
- `bag`: the stream plus every compound identifier as one lowercased token (`read_file`,
  `httpresponse`), so an exact identifier matches as a unit and by its parts.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
# Within an underscore-free segment: acronym before a capitalised word, capitalised or
# lowercase word, acronym run, digit run.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

ENGLISH_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    e g ie eg etc via given""".split()
)
# Code tokens that occur in nearly every function and carry no topic.
CODE_STOPWORDS = frozenset(
    """self cls def return returns none true false pass elif else lambda args kwargs
    class method function""".split()
)
STOPWORDS = ENGLISH_STOPWORDS | CODE_STOPWORDS


def split_identifier(token: str) -> list[str]:
    """`getHTTPResponse2` -> ['get', 'http', 'response', '2']; `read_file` -> ['read', 'file']."""
    parts: list[str] = []
    for seg in token.split("_"):
        if seg:
            parts.extend(p.lower() for p in _PART.findall(seg))
    return parts


def analyze(text: str) -> tuple[list[str], list[str]]:
    """(stream, bag) for a text; see the module docstring."""
    stream: list[str] = []
    bag: list[str] = []
    for tok in _TOKEN.findall(text):
        parts = split_identifier(tok)
        kept = [p for p in parts if p not in STOPWORDS and len(p) > 1 or p.isdigit()]
        stream.extend(kept)
        bag.extend(kept)
        low = tok.lower().strip("_")
        if len(parts) > 1 and low and low not in STOPWORDS:
            bag.append(low)
    return stream, bag


def identifiers(text: str) -> list[str]:
    """Raw identifier tokens of a text, in order (for the structural arm's query parser)."""
    return [t for t in _TOKEN.findall(text) if not t[0].isdigit()]
