"""The packaged OpenAPI documents: valid OpenAPI 3.0, shipped in the wheel, one copy each.

Whether each document matches its service's routes is checked beside the service:
tests/unit/server/test_server_openapi.py (daemon) and tests/unit/test_sim_service.py (Charter).
"""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import OpenAPIV30SpecValidator

from mape_k import openapi

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", openapi.DOCUMENTS)
def test_the_document_is_valid_openapi_3_0(name: str) -> None:
    spec = yaml.safe_load(openapi.source(name))
    errors = [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in OpenAPIV30SpecValidator(spec).iter_errors()
    ]
    assert errors == [], f"{name}:\n" + "\n".join(errors)


@pytest.mark.parametrize("name", openapi.DOCUMENTS)
def test_the_json_form_is_the_yaml_document(name: str) -> None:
    from_package = yaml.safe_load(files("mape_k.openapi").joinpath(name).read_text("utf-8"))
    assert json.loads(openapi.as_json(name)) == from_package
    assert openapi.document(name) == from_package
    assert openapi.document(name) is not openapi.document(name)


@pytest.mark.parametrize("name", openapi.DOCUMENTS)
@pytest.mark.parametrize(
    ("path", "content_type"),
    [(openapi.JSON_PATH, "application/json"), (openapi.YAML_PATH, openapi.YAML_CONTENT_TYPE)],
)
def test_each_served_form_matches_its_own_response_schema(
    name: str, path: str, content_type: str
) -> None:
    """A client (schemathesis, say) parses the answer by its media type, then checks it."""
    spec = openapi.document(name)
    schema = spec["paths"][path]["get"]["responses"]["200"]["content"][content_type]["schema"]
    body = openapi.as_json(name) if path == openapi.JSON_PATH else openapi.source(name)
    parsed = json.loads(body) if path == openapi.JSON_PATH else yaml.safe_load(body)
    errors = [
        f"{e.validator}: {e.validator_value}" for e in OAS30Validator(schema).iter_errors(parsed)
    ]
    assert errors == [], f"{name} {path}"


def test_an_unknown_document_is_refused() -> None:
    with pytest.raises(ValueError, match="no OpenAPI document"):
        openapi.source("../config.py")


def test_the_documents_are_package_data_and_docs_holds_no_copy() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"][
        "setuptools"
    ]["package-data"]["mape_k"]
    for name in openapi.DOCUMENTS:
        assert any(fnmatch(f"openapi/{name}", glob) for glob in package_data), name
    assert sorted((ROOT / "docs").glob("*openapi*")) == []
