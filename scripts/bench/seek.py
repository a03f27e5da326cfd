#!/usr/bin/env python3
"""Compressed tarballs over HTTP (nginx): bytes and time to the first manifest with and without
a sidecar, and a cold blob at the end of the archive with and without seek points.

    python3 scripts/bench/seek.py --bin target/release/cartorio --tmp DIR [--size-mib 1024]

Generates a docker-archive of SIZE MiB (one big layer of random bytes, then a 16 MiB last
layer), compresses it with `gzip -1` and `zstd -3`, writes sidecars with `cartorio index`
(and a copy of each without its seek points), serves the folder with nginx and runs
`cartorio serve --cache-dir none` on each variant. Prints a markdown table. No assertions.
"""
import argparse, hashlib, json, os, shutil, socket, struct, subprocess, sys, tarfile, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--tmp", required=True)
ap.add_argument("--size-mib", type=int, default=1024)
a = ap.parse_args()
T = a.tmp
www = os.path.join(T, "seek-www")
os.makedirs(www, exist_ok=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def hdr(name, n):
    ti = tarfile.TarInfo(name); ti.size = n; ti.mode = 0o644; ti.mtime = 0
    return ti.tobuf(format=tarfile.USTAR_FORMAT)


def pad(n):
    return b"\0" * ((512 - n % 512) % 512)


def make_archive(path, big_mib):
    # layer 1: random bytes (incompressible, like a layer of binaries); layer 2: text.
    layers = []
    with open(path, "wb") as f:
        for name, gen, n in (("big", lambda k: os.urandom(k), big_mib << 20),
                             ("last", lambda k: (b"the last layer of the archive\n" * (k // 30 + 1))[:k], 16 << 20)):
            h = hashlib.sha256()
            f.write(hdr(f"{name}/layer.tar", n))
            left = n
            while left:
                c = gen(min(left, 4 << 20)); h.update(c); f.write(c); left -= len(c)
            f.write(pad(n))
            layers.append(("sha256:" + h.hexdigest(), f"{name}/layer.tar"))
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]}}).encode()
        cfg = hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": cfg + ".json", "RepoTags": ["bench/seek:v1"],
                                "Layers": [p for _, p in layers]}]).encode()
        for name, data in ((cfg + ".json", config), ("manifest.json", manifest)):
            f.write(hdr(name, len(data))); f.write(data); f.write(pad(len(data)))
        f.write(b"\0" * 1024)
    return layers


def strip_points(src, dst):
    b = open(src, "rb").read()
    json_len, points_len = struct.unpack_from("<QQ", b, 12)
    out = b[:12] + struct.pack("<QQ", json_len, 0) + b[28:60] + hashlib.sha256(b"").digest() + b[92:92 + json_len]
    open(dst, "wb").write(out)
    return points_len


tar = os.path.join(T, "seek.tar")
layers = make_archive(tar, a.size_mib - 16)
subprocess.run(f"gzip -1 -n -c {tar} > {www}/a.tar.gz", shell=True, check=True)
subprocess.run(["zstd", "-q", "-3", "-T2", "-f", "-o", f"{www}/a.tar.zst", tar], check=True)
os.remove(tar)

port = free_port()
log = os.path.join(T, "seek-nginx-access.log")
conf = os.path.join(T, "seek-nginx.conf")
with open(conf, "w") as f:
    f.write(f"""user root root; daemon off; worker_processes 1; pid {T}/seek-nginx.pid;
error_log {T}/seek-nginx-error.log warn; events {{ worker_connections 256; }}
http {{ log_format bytes '$request_uri $status $body_bytes_sent'; access_log {log} bytes;
  sendfile on; client_body_temp_path {T}/snb; proxy_temp_path {T}/snp; fastcgi_temp_path {T}/snf;
  uwsgi_temp_path {T}/snu; scgi_temp_path {T}/sns; types {{ }} default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {www}; }} }}
""")
nginx = subprocess.Popen(["nginx", "-c", conf, "-e", f"{T}/seek-nginx-error.log"])
time.sleep(0.5)


def nginx_bytes(offset, path):
    time.sleep(0.2)
    n = 0
    with open(log) as f:
        for line in f.readlines()[offset:]:
            p = line.split()
            if len(p) == 3 and p[0] == path:
                n += int(p[2])
    return n


def log_lines():
    try:
        with open(log) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


def run_variant(ext, sidecar):
    """sidecar: None (no sidecar), 'points' or 'nopoints'."""
    name = f"a.tar.{ext}"
    sc = os.path.join(www, name + ".cartorio-index")
    if os.path.exists(sc):
        os.remove(sc)
    if sidecar:
        shutil.copy(os.path.join(T, f"{name}.{sidecar}"), sc)
    start_lines = log_lines()
    t0 = time.monotonic()
    p = subprocess.Popen([a.bin, "serve", "--listen", "127.0.0.1:0", "--cache-dir", "none",
                          f"bench/seek:v1=http://127.0.0.1:{port}/{name}"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = p.stdout.readline().split()[-1]
    req = urllib.request.Request(f"http://{addr}/v2/bench/seek/manifests/v1",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req).read()
    t_manifest = time.monotonic() - t0
    b_manifest = nginx_bytes(start_lines, f"/{name}") + nginx_bytes(start_lines, f"/{name}.cartorio-index")
    mid = log_lines()
    t1 = time.monotonic()
    body = urllib.request.urlopen(f"http://{addr}/v2/bench/seek/blobs/{layers[-1][0]}").read()
    t_blob = time.monotonic() - t1
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layers[-1][0]
    b_blob = nginx_bytes(mid, f"/{name}") + nginx_bytes(mid, f"/{name}.cartorio-index")
    p.terminate(); p.wait()
    return t_manifest, b_manifest, t_blob, b_blob


rows = []
for ext in ("gz", "zst"):
    name = f"a.tar.{ext}"
    out = subprocess.run([a.bin, "index", os.path.join(www, name), "-o", os.path.join(T, f"{name}.points")],
                         check=True, capture_output=True, text=True).stdout.strip()
    pts = strip_points(os.path.join(T, f"{name}.points"), os.path.join(T, f"{name}.nopoints"))
    size = os.path.getsize(os.path.join(www, name))
    sc_size = os.path.getsize(os.path.join(T, f"{name}.points"))
    for label, sc in (("no sidecar (one pass)", None), ("sidecar without points", "nopoints"),
                      ("sidecar with points", "points")):
        tm, bm, tb, bb = run_variant(ext, sc)
        rows.append((f".tar.{ext} ({size / 2**20:.0f} MiB; sidecar {sc_size / 2**10:.0f} KiB, "
                     f"points {pts / 2**10:.0f} KiB)", label, tm, bm, tb, bb))
nginx.terminate(); nginx.wait()

print("| archive | index from | first manifest: time | first manifest: bytes read | "
      "cold last layer (16 MiB), no disk cache: time | its bytes read |")
print("|---|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2] * 1000:.0f} ms | {r[3] / 2**10:.0f} KiB | "
          f"{r[4] * 1000:.0f} ms | {r[5] / 2**20:.1f} MiB |")
