"""Snippets and highlights: where a query's terms occur in a document, for the result list.

A term is a word of the query (letters and digits, lower-cased) that is not a stop word nor a single
letter (the ``d`` of "vitamin D" would light up every "mg/d"). A
document's snippet is the window of ``width`` characters that holds the most distinct terms (ties:
the earliest), widened to word boundaries; highlights are the character spans of the terms that
match a word of the text by prefix (``protein`` matches ``proteins``), in snippet coordinates.
"""

from __future__ import annotations

import functools
import re

WORD = re.compile(r"\w+", re.UNICODE)
STOP_WORDS = frozenset("""a an and are as at be but by do does for from has have how i in is it its of on or that the
their there these this to was were what when where which who why will with""".split())


def query_terms(query: str) -> list[str]:
    """The distinct lower-cased words of ``query`` that are neither stop words nor single letters, in order."""
    terms = []
    for word in WORD.findall(query.lower()):
        if word not in STOP_WORDS and word not in terms and (len(word) > 1 or word.isdigit()):
            terms.append(word)
    return terms


def term_spans(text: str, terms: list[str], min_prefix: int = 3) -> list[tuple[int, int, str]]:
    """(start, end, term) of every word of ``text`` that is a term or starts with one (terms of
    ``min_prefix`` characters or more match as prefixes; shorter ones must match whole words); a word
    that several terms match is credited to the first of them in ``terms``.

    The efficient path of :func:`term_spans_plain` (same output). An ASCII text is searched by one
    regular expression of the terms (:func:`_terms_pattern`) over its lower-cased copy (ASCII
    lower-casing keeps every offset and word boundary); any other text word by word, each word looked
    up in a table of the terms, once whole and once per distinct length of the prefix terms."""
    if not terms:
        return []
    if text.isascii():
        pattern, owners = _terms_pattern(tuple(terms), min_prefix)
        return [(m.start(), m.end(), owners[m.lastindex]) for m in pattern.finditer(text.lower())]
    rank = {}
    for i, term in enumerate(terms):
        rank.setdefault(term, i)
    lengths = sorted({len(t) for t in terms if len(t) >= min_prefix})
    found = []
    for m in WORD.finditer(text):
        word = m.group().lower()
        best = rank.get(word, len(terms))
        for n in lengths:
            if n >= len(word):  # a prefix as long as the word is the word (looked up above)
                break
            best = min(best, rank.get(word[:n], best))
        if best < len(terms):
            found.append((m.start(), m.end(), terms[best]))
    return found


@functools.lru_cache(maxsize=256)
def _terms_pattern(terms: tuple[str, ...], min_prefix: int) -> tuple[re.Pattern, dict[int, str]]:
    """A pattern that matches, at the start of a word, the whole word when it is a term or starts with a
    prefix term; its alternatives are the terms in order, so the first group that matched names the first
    term that matches the word (``owners``: group number -> term)."""
    alternatives, owners = [], {}
    for term in dict.fromkeys(terms):
        owners[len(owners) + 1] = term
        alternatives.append(f"({re.escape(term)})" + (r"\w*" if len(term) >= min_prefix else r"\b"))
    return re.compile(r"\b(?:" + "|".join(alternatives) + ")"), owners


def term_spans_plain(text: str, terms: list[str], min_prefix: int = 3) -> list[tuple[int, int, str]]:
    """The plain reference of :func:`term_spans`: every word compared with every term, in order."""
    found = []
    for m in WORD.finditer(text):
        word = m.group().lower()
        for term in terms:
            if word == term or (len(term) >= min_prefix and word.startswith(term)):
                found.append((m.start(), m.end(), term))
                break
    return found


def leading_snippet(text: str, width: int = 280) -> str:
    """The snippet of a result that is not highlighted: the text's first ``width`` characters, cut at a word
    boundary (what :func:`snippet` gives when no term occurs in the text)."""
    if len(text) <= width:
        return text
    space = text.rfind(" ", 0, width)
    end = space if space > width // 2 else width
    return text[:end] + " …"


def snippet(text: str, terms: list[str], width: int = 280) -> tuple[str, list[tuple[int, int]]]:
    """(snippet, highlight spans in it): see the module docstring."""
    if len(text) <= width:
        return text, [(a, b) for a, b, _ in term_spans(text, terms)]
    spans = term_spans(text, terms)
    start = 0
    best = -1
    for i, (a, _, _) in enumerate(spans):  # windows that start a little before a match
        lo = max(0, a - 40)
        distinct = len({t for s, e, t in spans[i:] if e <= lo + width})
        if distinct > best:
            best, start = distinct, lo
    if start > 0:  # begin at a word boundary
        space = text.rfind(" ", 0, start)
        start = space + 1 if space >= 0 and start - space < 30 else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start + width // 2 else end
    prefix, suffix = ("… " if start > 0 else ""), (" …" if end < len(text) else "")
    shift = len(prefix) - start
    body = prefix + text[start:end] + suffix
    return body, [(a + shift, b + shift) for a, b, _ in spans if a >= start and b <= end]
