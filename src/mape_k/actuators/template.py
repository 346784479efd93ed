"""Strict templates for user-defined actions: untrusted values, one at a time, checked.

PURE: no I/O. A template is a string with `{variable}` placeholders (`{{` and `}}` are
literal braces). The variables are

    target, cause, action, severity, policy_id, idempotency_key,
    labels.NAME, annotations.NAME   (of the alert or rule sample behind the cause: untrusted)
    params.NAME                     (the candidate's configured parameters)

Every value must match its variable's pattern (`variables:` of the action, else
`DEFAULT_PATTERN`) as a whole (`re.fullmatch`: a trailing newline does not slip past `$`),
and on top of any pattern it may not hold a control character, start with `-` (it would be
read as an option) or contain a parent-directory (dot-dot) path segment. A value that
fails, a variable that is absent (a label the alert does not carry) or unknown refuses
the action with a one-line reason naming the variable; nothing is ever sent half-rendered.

Where a value lands is escaped for that place: an argv element is one element (never a
shell, never split), a URL gets the value percent-encoded (`/`, `?`, `#` included), a JSON
body gets it as (part of) a JSON string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

DEFAULT_PATTERN = r"^[A-Za-z0-9_.:/@-]{1,253}$"
ROOTS = frozenset({"target", "cause", "action", "severity", "policy_id", "idempotency_key"})
PREFIXES = ("labels.", "annotations.", "params.")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN = 40  # characters of a refused value shown in the reason


class TemplateError(ValueError):
    """A template that cannot be rendered with these values; the message says why."""


@dataclass(frozen=True, slots=True)
class Literal:
    text: str


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str


Part = Literal | Placeholder


def variable_problem(name: str) -> str | None:
    """Why `name` is not a template variable, else None."""
    if name in ROOTS:
        return None
    for prefix in PREFIXES:
        if name.startswith(prefix):
            rest = name.removeprefix(prefix)
            if _NAME.fullmatch(rest):
                return None
            return f"{{{name}}}: {rest!r} is not a label, annotation or parameter name"
    known = ", ".join(sorted(ROOTS))
    return f"{{{name}}} is not a template variable ({known}, labels.X, annotations.X, params.X)"


def parse(template: str) -> tuple[Part, ...]:
    """The parts of `template`; TemplateError on an unbalanced brace or unknown variable."""
    parts: list[Part] = []
    text: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            text.append(char)
            i += 2
            continue
        if char == "}":
            raise TemplateError(f"{template!r}: a lone '}}' (write '}}}}' for a brace)")
        if char == "{":
            end = template.find("}", i)
            if end < 0:
                raise TemplateError(f"{template!r}: '{{' is not closed")
            name = template[i + 1 : end].strip()
            problem = variable_problem(name)
            if problem is not None:
                raise TemplateError(problem)
            if text:
                parts.append(Literal("".join(text)))
                text = []
            parts.append(Placeholder(name))
            i = end + 1
            continue
        text.append(char)
        i += 1
    if text:
        parts.append(Literal("".join(text)))
    return tuple(parts)


def variables(templates: Iterable[str]) -> set[str]:
    """The variables `templates` use (each parsed: TemplateError on a bad one)."""
    return {p.name for t in templates for p in parse(t) if isinstance(p, Placeholder)}


def value_problem(name: str, value: str, pattern: str) -> str | None:
    """Why `value` may not stand for `{name}`, in one line; None when it may."""
    shown = value if len(value) <= _SHOWN else f"{value[:_SHOWN]}... ({len(value)} characters)"
    if _CONTROL.search(value):
        return f"{{{name}}} = {shown!r} holds a control character (a newline?)"
    if value.startswith("-"):
        return f"{{{name}}} = {shown!r} starts with '-' (it would be read as an option)"
    if os.pardir in value.split("/"):
        return f"{{{name}}} = {shown!r} has a parent-directory path segment"
    if re.fullmatch(pattern, value) is None:
        return f"{{{name}}} = {shown!r} does not match {pattern}"
    return None


def render(
    template: str,
    values: Mapping[str, str],
    patterns: Mapping[str, str],
    *,
    escape: Callable[[str], str] = lambda v: v,
) -> str:
    """`template` with each placeholder replaced by its checked, `escape`d value."""
    out: list[str] = []
    for part in parse(template):
        if isinstance(part, Literal):
            out.append(part.text)
            continue
        value = values.get(part.name)
        if value is None:
            raise TemplateError(f"{{{part.name}}} has no value here (the alert does not carry it)")
        problem = value_problem(part.name, value, patterns.get(part.name, DEFAULT_PATTERN))
        if problem is not None:
            raise TemplateError(problem)
        out.append(escape(value))
    return "".join(out)


def render_argv(
    argv: Iterable[str], values: Mapping[str, str], patterns: Mapping[str, str]
) -> list[str]:
    """One argv element per template element: a value never splits or adds an element."""
    return [render(element, values, patterns) for element in argv]


def render_url(url: str, values: Mapping[str, str], patterns: Mapping[str, str]) -> str:
    """A URL with every value percent-encoded (a value cannot add a path, query or host)."""
    return render(url, values, patterns, escape=lambda v: quote(v, safe=""))


def render_json(body: Any, values: Mapping[str, str], patterns: Mapping[str, str]) -> Any:
    """A JSON body template with every string in it rendered (keys are taken as written)."""
    if isinstance(body, str):
        return render(body, values, patterns)
    if isinstance(body, Mapping):
        return {key: render_json(item, values, patterns) for key, item in body.items()}
    if isinstance(body, list | tuple):
        return [render_json(item, values, patterns) for item in body]
    return body


def json_strings(body: Any) -> list[str]:
    """Every string of a JSON body template (to check its variables at load)."""
    if isinstance(body, str):
        return [body]
    if isinstance(body, Mapping):
        return [s for item in body.values() for s in json_strings(item)]
    if isinstance(body, list | tuple):
        return [s for item in body for s in json_strings(item)]
    return []
