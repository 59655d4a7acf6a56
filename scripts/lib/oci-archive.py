#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (an OCI image layout in a tar) for `ctr images import`.

    oci-archive.py OUT.tar NAME ENTRYPOINT FILE=PATH_IN_IMAGE...

Each FILE is copied to PATH_IN_IMAGE (mode 0755, owner root); the layer and the archive are
reproducible (sorted entries, mtime 0). NAME (e.g. localhost/wso-pause:1) is written as the
index annotations io.containerd.image.name and org.opencontainers.image.ref.name (the tag).
Used for the test node's pause image (scripts/node-bins.sh); ours, no upstream code.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def tar_bytes(entries):
    """entries: {path: bytes or None (directory)} -> uncompressed tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path in sorted(entries):
            content = entries[path]
            ti = tarfile.TarInfo(path)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "root", "root"
            if content is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.mode, ti.size = 0o755, len(content)
                t.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def main():
    out, name, entrypoint, *files = sys.argv[1:]
    entries = {}
    for spec in files:
        src, dst = spec.split("=", 1)
        dst = dst.lstrip("/")
        parent = os.path.dirname(dst)
        while parent:
            entries[parent] = None
            parent = os.path.dirname(parent)
        entries[dst] = open(src, "rb").read()
    layer = tar_bytes(entries)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_gz = gzip.compress(layer, mtime=0)
    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_desc = dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer_gz))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/lib/oci-archive.py"}],
    }
    config_desc = dict(
        mediaType="application/vnd.oci.image.config.v1+json",
        **blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = dict(
        mediaType="application/vnd.oci.image.manifest.v1+json",
        **blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()),
    )
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
        "blobs": None,
        "blobs/sha256": None,
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(tar_bytes(files))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
