"""``-k EXPR``: pytest-style selection by case id substrings and tags.

``EXPR`` is made of words joined with ``and``, ``or``, ``not`` and parentheses. A word
matches a case when it is a substring of the case id (case-insensitive) or equals one of its
tags or its kind.
"""
from __future__ import annotations

import re
from typing import Callable

from runner.errors import UsageError
from runner.records import Case

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def compile_keyword(expr: str) -> Callable[[Case], bool]:
    tokens = [t for t in _TOKEN.findall(expr) if t]
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        return tok

    def parse_or():
        left = parse_and()
        while peek() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda c: a(c) or b(c))(left, right)
        return left

    def parse_and():
        left = parse_not()
        while peek() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda c: a(c) and b(c))(left, right)
        return left

    def parse_not():
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda c: not inner(c)
        return parse_atom()

    def parse_atom():
        tok = peek()
        if tok is None:
            raise UsageError(f"-k {expr!r}: expression ends too early")
        if tok == "(":
            take()
            inner = parse_or()
            if peek() != ")":
                raise UsageError(f"-k {expr!r}: missing ')'")
            take()
            return inner
        if tok in (")", "and", "or"):
            raise UsageError(f"-k {expr!r}: unexpected '{tok}'")
        word = take().lower()
        return lambda c: word in c.id.lower() or word in (t.lower() for t in c.tags) or word == c.kind.lower()

    if not tokens:
        return lambda c: True
    fn = parse_or()
    if pos != len(tokens):
        raise UsageError(f"-k {expr!r}: unexpected '{tokens[pos]}'")
    return fn
