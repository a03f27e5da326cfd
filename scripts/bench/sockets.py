#!/usr/bin/env python3
"""Sockets that misbehave, against one cartorio (scripts/bench.sh --sockets, or alone):

    sockets.py --bin CARTORIO --tmp DIR [--silent N] [--stalled N] [--write-timeout SECS]

1. N silent sockets from this one client (default 20,000, capped at the hard open-file limit
   minus a margin: this process and the server each need one descriptor per socket), opened
   without waiting (non-blocking connects), then a normal manifest GET on a new connection,
   20 times: its latency (target: within 100 ms).
2. 1,000 connections that ask for a 64 MiB blob and stop reading (small receive buffers):
   the server's RSS and open descriptors while they hang, and how long until the write
   timeout drops them (it fires between one and two timeouts after the stall).

Prints a markdown section. Everything runs on 127.0.0.1; the server is killed at exit and its
pid written to DIR/pids (bench.sh's exit trap kills those too).
"""
import argparse
import os
import resource
import re
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import hashlib
import io

ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def log(*a):
    print("[sockets]", *a, file=sys.stderr, flush=True)


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rootfs(path, size):
    """A rootfs tarball holding one incompressible file; returns its sha256 (the layer)."""
    data = os.urandom(size)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("data.bin")
        info.size = size
        info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def get(port, path, timeout=10.0):
    """One GET on a new connection; (status, body bytes, seconds)."""
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nAccept: {ACCEPT}\r\nConnection: close\r\n\r\n".encode())
        parts = []
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            parts.append(d)
        buf = b"".join(parts)
    finally:
        s.close()
    dt = time.perf_counter() - t
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d+)", head)
    return (int(m.group(1)) if m else 0), body, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--silent", type=int, default=20000)
    ap.add_argument("--stalled", type=int, default=1000)
    ap.add_argument("--write-timeout", type=int, default=10)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    margin = 200
    silent_n = min(a.silent, hard - margin)
    stalled_n = min(a.stalled, hard - margin)

    image = os.path.join(a.tmp, "sockets-rootfs.tar")
    size = 64 << 20
    layer = rootfs(image, size)
    size = os.path.getsize(image)  # a rootfs tarball is its own layer: the blob is the file
    errlog = open(os.path.join(a.tmp, "sockets-cartorio.log"), "wb")
    proc = subprocess.Popen([a.bin, "serve", "--listen", "127.0.0.1:0", "--cache-dir", "none",
                             "--write-timeout", f"{a.write_timeout}s", f"bench/sock:v1={image}"],
                            stdout=subprocess.PIPE, stderr=errlog, start_new_session=True)
    with open(os.path.join(a.tmp, "pids"), "a") as f:
        f.write(f"{proc.pid}\n")
    rows = []
    try:
        line = proc.stdout.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError(f"no 'listening on' line: {line!r}")
        port = int(m.group(1))
        manifest = "/v2/bench/sock/manifests/v1"
        st, _, _ = get(port, manifest)
        assert st == 200, st
        # Verify the blob once (a local archive's first read is hashed), so the stalled
        # readers below take the sendfile path a warm pull takes.
        st, body, _ = get(port, f"/v2/bench/sock/blobs/{layer}", timeout=60)
        assert st == 200 and len(body) == size, (st, len(body))
        pid = proc.pid
        base_rss, base_fds = proc_status(pid, "VmRSS"), fds(pid)

        # --- 1: silent sockets -------------------------------------------------------------
        log(f"opening {silent_n} silent sockets (hard open-file limit {hard})")
        quiet = []
        t = time.time()
        for _ in range(silent_n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            quiet.append(s)
        opened = time.time() - t
        time.sleep(2)
        lat = []
        fails = 0
        for _ in range(20):
            try:
                st, _, dt = get(port, manifest, timeout=10)
                if st == 200:
                    lat.append(dt * 1e3)
                else:
                    fails += 1
            except OSError:
                fails += 1
            time.sleep(0.1)
        held_fds = fds(pid)
        for s in quiet:
            s.close()
        quiet = []
        lat.sort()
        p50 = statistics.median(lat) if lat else float("nan")
        worst = lat[-1] if lat else float("nan")
        rows.append((f"manifest GET with {silent_n} silent sockets open, median of 20", f"{p50:.1f} ms",
                     "≤ 100 ms", "PASS" if lat and p50 <= 100 else "FAIL"))
        rows.append((f"manifest GET with {silent_n} silent sockets open, max of 20 ({fails} failed)",
                     f"{worst:.1f} ms", "≤ 100 ms", "PASS" if lat and worst <= 100 and not fails else "FAIL"))
        rows.append(("server fds while the silent sockets were open (the rest wait in the backlog)",
                     f"{held_fds}", "", ""))
        log(f"silent: opened in {opened:.1f} s; p50 {p50:.1f} ms, max {worst:.1f} ms, {fails} failed")
        time.sleep(2)

        # --- 2: stalled readers ------------------------------------------------------------
        log(f"{stalled_n} readers stalling mid-blob (write timeout {a.write_timeout} s)")
        stalled = []
        req = (f"GET /v2/bench/sock/blobs/{layer} HTTP/1.1\r\nHost: b\r\n\r\n").encode()
        for _ in range(stalled_n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(req)
            stalled.append(s)
        t0 = time.time()
        peak_rss, peak_fds = 0, 0
        dropped_at = None
        while time.time() - t0 < 3 * a.write_timeout + 10:
            r, n = proc_status(pid, "VmRSS"), fds(pid)
            peak_rss, peak_fds = max(peak_rss, r), max(peak_fds, n)
            if n <= base_fds + 5 and time.time() - t0 > 1:
                dropped_at = time.time() - t0
                break
            time.sleep(0.25)
        after_rss, after_fds = proc_status(pid, "VmRSS"), fds(pid)
        st, _, dt = get(port, manifest)
        for s in stalled:
            s.close()
        rows.append(("server RSS before / peak with stalled readers / after the timeout",
                     f"{base_rss / 1024:.0f} / {peak_rss / 1024:.0f} / {after_rss / 1024:.0f} MiB", "bounded", ""))
        rows.append(("server fds before / peak / after", f"{base_fds} / {peak_fds} / {after_fds}", "back to before",
                     "PASS" if after_fds <= base_fds + 5 else "FAIL"))
        rows.append((f"stalled readers dropped after (write timeout {a.write_timeout} s)",
                     f"{dropped_at:.1f} s" if dropped_at else "not within the wait",
                     f"≤ {2 * a.write_timeout} s", "PASS" if dropped_at and dropped_at <= 2 * a.write_timeout + 2 else "FAIL"))
        rows.append(("manifest GET right after", f"{st}, {dt * 1e3:.1f} ms", "", ""))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errlog.close()
        os.unlink(image)

    print(f"\n### Misbehaving sockets (one client; hard open-file limit {hard}: "
          f"{silent_n} silent sockets, {stalled_n} stalled readers of a {size >> 20} MiB blob)\n")
    print("| measurement | value | target | |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0 if all(r[3] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
