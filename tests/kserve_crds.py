"""Validates KServe custom resources (ServingRuntime, ClusterServingRuntime, InferenceService) against
KServe's own CustomResourceDefinitions, offline.

Each CRD's openAPIV3Schema becomes a JSON Schema: `nullable` admits null, `x-kubernetes-int-or-string`
admits both, and strictly: objects that list their properties (and do not preserve unknown fields)
refuse others, so a misspelt field is an error, as with the API server's strict field validation.
"""

from __future__ import annotations

import copy
import glob
import os

import jsonschema
import yaml


def _convert(node, strict: bool):
    if isinstance(node, list):
        return [_convert(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _convert(v, strict) for k, v in node.items() if not k.startswith("x-kubernetes-") or k in (
        "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")}
    if node.pop("x-kubernetes-int-or-string", False) and "anyOf" not in node:
        node["type"] = ["integer", "string"]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    node.pop("format", None)
    if node.pop("nullable", False) and "type" in node:
        t = node["type"]
        node["type"] = (t if isinstance(t, list) else [t]) + ["null"]
    if strict and "properties" in node and "additionalProperties" not in node and not preserve:
        node["additionalProperties"] = False
    return node


def load(crd_dir: str, strict: bool = True) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON Schema, for every CRD in `crd_dir`."""
    schemas = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _convert(copy.deepcopy(version["schema"]["openAPIV3Schema"]), strict)
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate(documents, schemas) -> list[str]:
    """Errors of every document whose kind has a schema ("<kind>/<name>: <error>")."""
    errors = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            continue
        name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
        if not doc.get("metadata", {}).get("name"):
            errors.append(f"{name}: metadata.name is required")
        for e in jsonschema.Draft4Validator(schema).iter_errors(doc):
            errors.append(f"{name}: {'.'.join(str(p) for p in e.absolute_path)}: {e.message}")
    return errors
