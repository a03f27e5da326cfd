#!/usr/bin/env python3
"""Test images for scripts/bench.sh, generated locally (no downloads, no Docker engine).

    gen_images.py image OUTDIR [--quick]
        OUTDIR/big.tar          legacy docker-archive (the layout `skopeo copy ... docker-archive:`
                                writes: <diffid>.tar layers, <config>.json, manifest.json last),
                                RepoTags bench/big:v1. Layers (uncompressed):
                                  1. one file of incompressible (os.urandom) data: 600 MiB (quick 40 MiB)
                                  2. many small files (1-64 KiB, hex text, ~50% compressible):
                                     300 MiB (quick 20 MiB)
                                  3. 1 MiB text file, 4. a few tiny files
        OUTDIR/big-gz.tar       the same image as an OCI archive with gzip (level 1) layers,
                                ref.name v1
        OUTDIR/www/blobs/sha256/<hex>   the uncompressed layer tars and the config (what nginx
                                serves as plain files; the same bytes cartorio serves as blobs)
    gen_images.py toc SIZE_MIB OUT.tar
        a docker-archive whose one layer is a single zero-filled file, written sparse (holes),
        so a 4 GiB archive is created in about a second; the layer digest is real.
"""
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile

MiB = 1024 * 1024
CHUNK = 4 * MiB


class GenReader:
    """A file-like object producing `size` bytes from `gen(n)`."""

    def __init__(self, size, gen):
        self.left = size
        self.gen = gen

    def read(self, n=-1):
        if n < 0 or n > self.left:
            n = self.left
        n = min(n, CHUNK)
        self.left -= n
        return self.gen(n) if n else b""


def tinfo(name, size=0, mode=0o644, kind=tarfile.REGTYPE):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = mode
    ti.type = kind
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def hex_text(n):
    return os.urandom((n + 1) // 2).hex().encode()[:n]


class HashingWriter:
    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def write_layer(blobdir, fill):
    """Writes a layer tar built by fill(tarfile) into blobdir; returns (hex digest, size)."""
    tmp = os.path.join(blobdir, ".tmp-layer")
    with open(tmp, "wb") as raw:
        hw = HashingWriter(raw)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.GNU_FORMAT, bufsize=CHUNK) as t:
            fill(t)
    hx = hw.h.hexdigest()
    os.rename(tmp, os.path.join(blobdir, hx))
    return hx, hw.n


def layer_random(size):
    def fill(t):
        t.addfile(tinfo("data/", kind=tarfile.DIRTYPE, mode=0o755))
        t.addfile(tinfo("data/random.bin", size), GenReader(size, os.urandom))
    return fill


def layer_small_files(total):
    def fill(t):
        rnd = random.Random(42)
        left, i = total, 0
        while left > 0:
            if i % 256 == 0:
                t.addfile(tinfo(f"files/d{i // 256:04d}/", kind=tarfile.DIRTYPE, mode=0o755))
            n = min(left, rnd.randint(1024, 64 * 1024))
            t.addfile(tinfo(f"files/d{i // 256:04d}/f{i:06d}.txt", n), io.BytesIO(hex_text(n)))
            left -= n + 512
            i += 1
    return fill


def layer_text():
    def fill(t):
        body = b"".join(b"line %08d of a text file in a small layer\n" % i for i in range(25000))
        t.addfile(tinfo("etc/", kind=tarfile.DIRTYPE, mode=0o755))
        t.addfile(tinfo("etc/bench.txt", len(body)), io.BytesIO(body))
    return fill


def layer_tiny():
    def fill(t):
        t.addfile(tinfo("bin/", kind=tarfile.DIRTYPE, mode=0o755))
        s = b"#!/bin/sh\necho bench\n"
        t.addfile(tinfo("bin/run.sh", len(s), 0o755), io.BytesIO(s))
        t.addfile(tinfo("etc/hostname", 6), io.BytesIO(b"bench\n"))
    return fill


def config_json(diff_ids):
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/run.sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d in diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "gen_images.py"} for _ in diff_ids],
    }
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def add_bytes(t, name, data):
    t.addfile(tinfo(name, len(data)), io.BytesIO(data))


def docker_archive(out, blobdir, layers, cfg_hex, tag):
    """Legacy docker-archive: layers, config, then manifest.json and repositories (skopeo's order)."""
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
        for hx, size in layers:
            with open(os.path.join(blobdir, hx), "rb") as f:
                t.addfile(tinfo(hx + ".tar", size, 0o444), f)
        with open(os.path.join(blobdir, cfg_hex), "rb") as f:
            cfg = f.read()
        add_bytes(t, cfg_hex + ".json", cfg)
        manifest = [{"Config": cfg_hex + ".json", "RepoTags": [tag], "Layers": [hx + ".tar" for hx, _ in layers]}]
        add_bytes(t, "manifest.json", json.dumps(manifest).encode())
        name, _, ver = tag.rpartition(":")
        add_bytes(t, "repositories", json.dumps({name: {ver: layers[-1][0]}}).encode())


def gzip_file(src, dst):
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst + ".tmp", "wb") as raw:
        hw = HashingWriter(raw)
        with gzip.GzipFile(fileobj=hw, mode="wb", compresslevel=1, mtime=0) as g:
            while True:
                b = fi.read(CHUNK)
                if not b:
                    break
                g.write(b)
    hx = hw.h.hexdigest()
    os.rename(dst + ".tmp", os.path.join(os.path.dirname(dst), hx))
    return hx, hw.n


def oci_archive_gz(out, work, blobdir, layers, cfg_hex, cfg_size, ref):
    gzdir = os.path.join(work, "gzblobs")
    os.makedirs(gzdir, exist_ok=True)
    gz = [gzip_file(os.path.join(blobdir, hx), os.path.join(gzdir, "x")) for hx, _ in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + cfg_hex, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + hx, "size": n} for hx, n in gz],
    }
    mb = json.dumps(manifest, separators=(",", ":")).encode()
    mhex = hashlib.sha256(mb).hexdigest()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest["mediaType"], "digest": "sha256:" + mhex, "size": len(mb),
                            "annotations": {"org.opencontainers.image.ref.name": ref}}]}
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
        add_bytes(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes(t, "index.json", json.dumps(index).encode())
        for hx, n in gz:
            with open(os.path.join(gzdir, hx), "rb") as f:
                t.addfile(tinfo("blobs/sha256/" + hx, n, 0o444), f)
        with open(os.path.join(blobdir, cfg_hex), "rb") as f:
            t.addfile(tinfo("blobs/sha256/" + cfg_hex, cfg_size, 0o444), f)
        add_bytes(t, "blobs/sha256/" + mhex, mb)
    for hx, _ in gz:
        os.unlink(os.path.join(gzdir, hx))


def cmd_image(outdir, quick):
    blobdir = os.path.join(outdir, "www", "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)
    rnd, small = (40 * MiB, 20 * MiB) if quick else (600 * MiB, 300 * MiB)
    layers = [write_layer(blobdir, f) for f in (layer_random(rnd), layer_small_files(small), layer_text(), layer_tiny())]
    cfg = config_json([hx for hx, _ in layers])
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    with open(os.path.join(blobdir, cfg_hex), "wb") as f:
        f.write(cfg)
    docker_archive(os.path.join(outdir, "big.tar"), blobdir, layers, cfg_hex, "bench/big:v1")
    oci_archive_gz(os.path.join(outdir, "big-gz.tar"), outdir, blobdir, layers, cfg_hex, len(cfg), "v1")
    info = {"layers": [{"digest": "sha256:" + hx, "size": n} for hx, n in layers],
            "config": "sha256:" + cfg_hex,
            "tar_size": os.path.getsize(os.path.join(outdir, "big.tar")),
            "gz_size": os.path.getsize(os.path.join(outdir, "big-gz.tar"))}
    with open(os.path.join(outdir, "images.json"), "w") as f:
        json.dump(info, f, indent=1)


def cmd_toc(size_mib, out):
    """docker-archive with one layer holding one zero-filled file, written sparse."""
    size = size_mib * MiB
    inner_hdr = tinfo("zero.bin", size).tobuf(tarfile.GNU_FORMAT)
    layer_size = len(inner_hdr) + size + 1024  # header, data (a multiple of 512), end of archive
    h = hashlib.sha256(inner_hdr)
    zeros = bytes(CHUNK)
    left = size + 1024
    while left:
        n = min(left, CHUNK)
        h.update(zeros[:n])
        left -= n
    hx = h.hexdigest()
    cfg = config_json([hx])
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    with open(out, "wb") as f:
        f.write(tinfo(hx + ".tar", layer_size, 0o444).tobuf(tarfile.GNU_FORMAT))
        f.write(inner_hdr)
        f.seek(size + 1024, os.SEEK_CUR)  # a hole: zero data + the layer's end-of-archive blocks
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as t:
            add_bytes(t, cfg_hex + ".json", cfg)
            manifest = [{"Config": cfg_hex + ".json", "RepoTags": ["bench/toc:v1"], "Layers": [hx + ".tar"]}]
            add_bytes(t, "manifest.json", json.dumps(manifest).encode())


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "image":
        cmd_image(sys.argv[2], "--quick" in sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "toc":
        cmd_toc(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
