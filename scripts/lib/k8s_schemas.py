#!/usr/bin/env python3
"""Standalone Kubernetes JSON schemas for kubeconform, from the kubernetes-validate wheel.

The wheel's strict schemas (one file per kind, e.g. deployment-apps-v1.json) point into a
shared _definitions.json with `$ref: /api/_definitions.json#/$defs/...`, which kubeconform cannot
follow from a local directory. For every kind that the given manifests use, this writes
OUT/<name> holding the kind's schema plus, under `$defs`, every definition it reaches (so
recursive types such as JSONSchemaProps stay references), with each `$ref` rewritten to
`#/$defs/...`.

    k8s_schemas.py SCHEMA_DIR OUT_DIR MANIFEST.yaml...

Kinds the wheel does not know (custom resources) are left to the CRD schemas.
"""

import json
import os
import sys

import yaml

PREFIX = "/api/_definitions.json#/$defs/"


def schema_file(api_version, kind):
    """kubernetes-validate's (and kubeconform's) file name of a kind."""
    group, _, version = api_version.rpartition("/")
    parts = [kind.lower()]
    if group:
        parts.append(group.split(".")[0])
    parts.append(version)
    return "-".join(parts) + ".json"


def refs(node):
    """Every `$ref` below node."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def retarget(ref):
    """A `$ref` into _definitions.json as one into `#/$defs` (a property named `$ref`, as in
    JSONSchemaProps, is a schema and is rewritten like any other)."""
    if isinstance(ref, str):
        return "#/$defs/" + ref[len(PREFIX):] if ref.startswith(PREFIX) else ref
    return rewrite(ref)


def rewrite(node):
    """node with every `$ref` pointing into `#/$defs`."""
    if isinstance(node, dict):
        return {k: retarget(v) if k == "$ref" else rewrite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite(v) for v in node]
    return node


def closure(schema, definitions):
    """Names of all definitions reachable from schema."""
    seen, todo = set(), list(refs(schema))
    while todo:
        ref = todo.pop()
        name = ref[len(PREFIX):] if ref.startswith(PREFIX) else ref.removeprefix("#/$defs/")
        if name in seen:
            continue
        if name not in definitions:
            sys.exit(f"unresolved $ref {ref}")
        seen.add(name)
        todo.extend(refs(definitions[name]))
    return seen


def standalone(schema, definitions):
    out = rewrite({k: v for k, v in schema.items() if k != "$id"})
    out["$defs"] = {n: rewrite(definitions[n]) for n in sorted(closure(schema, definitions))}
    return out


def kinds_in(paths):
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                    yield doc["apiVersion"], doc["kind"]


def main(schema_dir, out_dir, manifests):
    with open(os.path.join(schema_dir, "_definitions.json")) as f:
        definitions = json.load(f)["$defs"]
    os.makedirs(out_dir, exist_ok=True)
    for api_version, kind in sorted(set(kinds_in(manifests))):
        name = schema_file(api_version, kind)
        src = os.path.join(schema_dir, name)
        if not os.path.isfile(src):
            continue
        with open(src) as f:
            schema = json.load(f)
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(standalone(schema, definitions), f)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
