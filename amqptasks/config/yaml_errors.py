"""PyYAML's syntax errors → a plain sentence and the line to look at (pure).

PyYAML words its errors in parser terms ("expected <block end>, but found '<block mapping start>'"). A user
needs to know what is wrong with the text and how to fix it, and for an unclosed quote or bracket the line
where it was opened, not the end of the file where PyYAML noticed.
"""

from __future__ import annotations

import re

import yaml

_INDENT = (
    "this line's indentation does not match the lines above it: keys of one mapping, and the items of one "
    "list, start in the same column (spaces only)"
)
_CANNOT_START = "'{char}' cannot start a value in YAML: put the value in quotes (\"{char}...\")"

#: (a pattern of PyYAML's problem text, and of its context, or None for any) → the sentence.
_PLAIN: tuple[tuple[str, str | None, str], ...] = (
    (r"found character '\\t'", None, "a tab character: YAML indents with spaces only"),
    (r"found character '(.)' that cannot start any token", None, _CANNOT_START),
    (
        r"expected <block end>, but found '-'",
        None,
        "a list item ('- ...') where a key was expected: indent it under the key it belongs to",
    ),
    (
        r"expected <block end>, but found '<scalar>'",
        None,
        "text after a complete value: quote the whole value, or put it on its own line",
    ),
    (r"expected <block end>", None, _INDENT),
    (
        r"mapping values are not allowed here",
        None,
        "a ':' YAML cannot read here: a value that contains ': ' needs quotes (url: \"a: b\"), and a key must be "
        "indented like the keys beside it",
    ),
    (r"could not find expected ':'", None, "a line that is neither 'key: value' nor a list item: add the ':'"),
    (r"found unexpected end of stream", r"quoted scalar", "a quote opened here is never closed"),
    (r"expected ',' or '\]'", None, "a '[' opened here is never closed (or an item in it needs quotes)"),
    (r"expected ',' or '\}'", None, "a '{' opened here is never closed (or an item in it needs quotes)"),
    (r"", r"scanning an? (alias|anchor)", "'*' and '&' start an alias or anchor in YAML: put the value in quotes"),
    (r"", r"found duplicate anchor", "the same anchor ('&name') is defined twice"),
    (r"found undefined alias", None, "an alias ('*name') with no anchor '&name' before it"),
    (r"did not find expected key", None, _INDENT),
    (r"did not find expected '-' indicator", None, _INDENT),
)
#: Errors noticed far from their cause: the opening quote or bracket (PyYAML's context mark) is the place.
_AT_CONTEXT = re.compile(r"quoted scalar|flow sequence|flow mapping")


def explain(exc: yaml.MarkedYAMLError) -> tuple[yaml.Mark | None, str]:
    """Where to point, and what to say, for one syntax error."""
    problem, context = exc.problem or "", exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    if exc.context_mark is not None and _AT_CONTEXT.search(context):
        mark = exc.context_mark
    for problem_re, context_re, sentence in _PLAIN:
        found = re.search(problem_re, problem)
        if found and (context_re is None or re.search(context_re, context)):
            return mark, sentence.replace("{char}", found.group(1) if found.groups() else "")
    return mark, problem or context or "invalid YAML"
