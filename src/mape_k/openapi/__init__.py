"""The OpenAPI documents of the daemon's HTTP API and of the Charter simulator, as package data.

The YAML files beside this module are the only copies: they are read with importlib.resources,
so an installed wheel (which has no docs/ folder) serves them too. Each service serves its own
(`add_routes`) at `GET /openapi.json` (parsed once per process, then the same bytes every
time) and `GET /openapi.yaml` (the file as written, comments included).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

import yaml
from aiohttp import web

DAEMON_API = "daemon-api.yaml"
CHARTER_API = "charter-api.yaml"
DOCUMENTS = (DAEMON_API, CHARTER_API)
YAML_CONTENT_TYPE = "application/yaml"  # RFC 9512
JSON_PATH = "/openapi.json"
YAML_PATH = "/openapi.yaml"


@cache
def source(name: str) -> bytes:
    """The document as written (UTF-8 YAML), read from the installed package."""
    if name not in DOCUMENTS:
        raise ValueError(f"no OpenAPI document {name!r}; there are {DOCUMENTS}")
    return files(__name__).joinpath(name).read_bytes()


@cache
def as_json(name: str) -> bytes:
    """The document as JSON (UTF-8); TypeError when the YAML is not one JSON object."""
    parsed = yaml.safe_load(source(name))
    if not isinstance(parsed, dict):
        raise TypeError(f"OpenAPI document {name!r} is not a mapping")
    # No default=: a YAML value JSON cannot hold (an unquoted date, say) is a bug in the file
    # and raises TypeError here, at build_app, instead of being served as a string.
    return json.dumps(parsed, ensure_ascii=False).encode("utf-8")


def document(name: str) -> dict[str, Any]:
    """A fresh parse of the document: the caller may change it."""
    parsed: dict[str, Any] = json.loads(as_json(name))
    return parsed


def add_routes(router: web.UrlDispatcher, name: str, *, allow_head: bool = True) -> None:
    """Serve document `name` at GET /openapi.json and GET /openapi.yaml on `router`.

    Both forms are read here, so a broken packaged document stops build_app, not a request.
    """
    as_json_body = as_json(name)
    as_yaml_body = source(name)

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.Response(body=as_json_body, content_type="application/json", charset="utf-8")

    async def openapi_yaml(_request: web.Request) -> web.Response:
        return web.Response(body=as_yaml_body, content_type=YAML_CONTENT_TYPE, charset="utf-8")

    router.add_get(JSON_PATH, openapi_json, allow_head=allow_head)
    router.add_get(YAML_PATH, openapi_yaml, allow_head=allow_head)


__all__ = [
    "CHARTER_API",
    "DAEMON_API",
    "DOCUMENTS",
    "JSON_PATH",
    "YAML_CONTENT_TYPE",
    "YAML_PATH",
    "add_routes",
    "as_json",
    "document",
    "source",
]
