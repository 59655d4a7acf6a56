#!/usr/bin/env python3
"""Copies CRD manifests, adding to each version's root schema the fields that the API server
accepts on every object whether the schema lists them or not (apiVersion, kind, metadata), so a
strict JSON schema generated from the CRD (kubeconform's openapi2jsonschema.py with
DENY_ROOT_ADDITIONAL_PROPERTIES) refuses only what the API server would prune or refuse.

    crd_root_fields.py OUT_DIR CRD.yaml...
"""

import os
import sys

import yaml

IMPLICIT = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}


def main(out_dir, paths):
    os.makedirs(out_dir, exist_ok=True)
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            if d.get("kind") != "CustomResourceDefinition":
                continue
            for v in d["spec"]["versions"]:
                schema = v.get("schema", {}).get("openAPIV3Schema")
                if schema is not None:
                    props = schema.setdefault("properties", {})
                    for name, field in IMPLICIT.items():
                        props.setdefault(name, field)
        with open(os.path.join(out_dir, os.path.basename(path)), "w") as f:
            yaml.safe_dump_all(docs, f)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
