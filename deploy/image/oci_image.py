#!/usr/bin/env python3
"""Writes cartorio's OCI image archive (an OCI layout as a tar) from a staged rootfs.

Called by build.sh; standard library only. Everything that ends up in the archive is a function of
the inputs: entries sorted by name, every mtime = SOURCE_DATE_EPOCH, numeric owners without user
names, no PAX headers carrying host data, gzip without a file name or timestamp. The same inputs
give the same bytes, so the same commit gives the same manifest digest.

usage: oci_image.py ROOTFS OUT --epoch N --version V --revision R --source URL
       [--owner PATH=UID ...] [--tag TAG]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import time


def tarinfo(name, kind, mode, mtime, uid=0, gid=0, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = mtime
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.size = size
    ti.linkname = linkname
    return ti


def rootfs_layer(root, epoch, owners):
    """The rootfs as an uncompressed tar (bytes), entries sorted, parents before children."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(dirpath, n), root))
    paths.sort()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in paths:
            full = os.path.join(root, rel)
            st = os.lstat(full)
            uid = gid = owners.get(rel, 0)
            # Permission bits only; setuid and friends never come from the staging tree.
            mode = stat.S_IMODE(st.st_mode) & 0o1777
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(tarinfo(rel + "/", tarfile.DIRTYPE, mode, epoch, uid, gid))
            elif stat.S_ISLNK(st.st_mode):
                tar.addfile(tarinfo(rel, tarfile.SYMTYPE, 0o777, epoch, uid, gid,
                                    linkname=os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    tar.addfile(tarinfo(rel, tarfile.REGTYPE, mode, epoch, uid, gid,
                                        size=st.st_size), f)
            else:
                sys.exit(f"oci_image.py: {rel}: not a file, folder or symlink")
    return buf.getvalue()


def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{d}"] = data
    return {"digest": f"sha256:{d}", "size": len(data)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rootfs")
    ap.add_argument("out")
    ap.add_argument("--epoch", type=int, required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--revision", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--owner", action="append", default=[], help="PATH=UID (uid = gid)")
    a = ap.parse_args()
    owners = {}
    for o in a.owner:
        p, _, uid = o.partition("=")
        owners[p.strip("/")] = int(uid)

    layer_tar = rootfs_layer(a.rootfs, a.epoch, owners)
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as z:
        z.write(layer_tar)
    layer_gz = gz.getvalue()

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.epoch))
    labels = {
        "org.opencontainers.image.source": a.source,
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.revision": a.revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.title": "cartorio",
        "org.opencontainers.image.description":
            "A read-only OCI registry that serves container images straight out of tarballs",
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    config = {
        "created": created,
        "architecture": a.arch,
        "os": "linux",
        "config": {
            "User": "65532:65532",
            "Env": [
                "PATH=/",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                # The default cache folder becomes /var/cache/cartorio.
                "XDG_CACHE_HOME=/var/cache",
                "HOME=/home/nonroot",
            ],
            "Entrypoint": ["/cartorio"],
            "Cmd": ["proxy", "--config", "/etc/cartorio/images.toml"],
            "WorkingDir": "/",
            "ExposedPorts": {"5000/tcp": {}},
            "Volumes": {"/var/cache/cartorio": {}},
            "Labels": labels,
        },
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        "history": [{"created": created, "created_by": "deploy/image/build.sh"}],
    }
    layout = {}
    config_desc = blob(layout, canonical(config))
    layer_desc = blob(layout, layer_gz)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        "annotations": {k: v for k, v in labels.items()},
    }
    manifest_desc = blob(layout, canonical(manifest))
    annotations = {"org.opencontainers.image.ref.name": a.tag or a.version}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest_desc,
            "platform": {"architecture": a.arch, "os": "linux"},
            "annotations": annotations,
        }],
    }
    layout["oci-layout"] = canonical({"imageLayoutVersion": "1.0.0"})
    layout["index.json"] = canonical(index)

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("blobs/", "blobs/sha256/"):
            tar.addfile(tarinfo(d, tarfile.DIRTYPE, 0o755, a.epoch))
        for name in sorted(layout):
            data = layout[name]
            tar.addfile(tarinfo(name, tarfile.REGTYPE, 0o644, a.epoch, size=len(data)),
                        io.BytesIO(data))
    os.replace(tmp, a.out)
    print(f"layer: {layer_desc['digest']} {len(layer_gz)} bytes gzip "
          f"({len(layer_tar)} bytes uncompressed)", file=sys.stderr)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
