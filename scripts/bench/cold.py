#!/usr/bin/env python3
"""Measurement 8 of scripts/bench.sh on its own, for A/B runs of cartorio builds: one cold
stream of the largest layer of a docker-archive served by nginx (sendfile) through a fresh
`cartorio proxy` with an http:// source and a fresh disk cache, against the sha256 rate of
the crate cartorio uses (examples/sha256_rate), all in one run. The binaries alternate
round by round, so a busy machine hurts them alike.

    cold.py --images DIR --bin A [--bin B ...] --sha256-bin PATH [--rounds N] [--tmp DIR]

DIR is what `gen_images.py image DIR` writes (big.tar and images.json are used). Prints
MiB/s per round and the median per binary, with the ratio to the median sha256 rate.
`--perf FILE` runs `perf record -g` (or `perf --perf-args`) on the last binary's cartorio
process during one extra curl (FILE gets the perf.data, or perf stat's output).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

MiB = 1024 * 1024
ACCEPT = ("application/vnd.oci.image.manifest.v1+json,"
          "application/vnd.docker.distribution.manifest.v2+json")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    import socket
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def start_nginx(tmp, www):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
user root root;
daemon off;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path {tmp}/nginx-body; proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fcgi; uwsgi_temp_path {tmp}/nginx-uwsgi; scgi_temp_path {tmp}/nginx-scgi;
  types {{ }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-e", f"{tmp}/nginx-error.log"])
    wait_port(port, p, "nginx")
    return p, port


def start_proxy(binary, tmp, url):
    d = tempfile.mkdtemp(dir=tmp, prefix="proxy-")
    cfg = os.path.join(d, "images.toml")
    port = free_port()
    with open(cfg, "w") as f:
        f.write(f'[[image]]\nname = "bench/cold"\nsource = "{url}"\ntags = ["v1"]\n\n'
                f'[cache]\ndir = "{d}/cache"\nmemory = "64MiB"\n')
    log = open(os.path.join(d, "log"), "wb")
    p = subprocess.Popen([binary, "proxy", "--config", cfg, "--listen", f"127.0.0.1:{port}"],
                         stdout=log, stderr=log)
    wait_port(port, p, binary)
    return p, port, d


def proc_cpu(pids):
    """CPU seconds (user + system) used so far by these processes and their threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--sha256-bin", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--perf", default=None)
    ap.add_argument("--perf-args", default="record -g",
                    help="what perf runs on the process (e.g. 'stat -e syscalls:sys_enter_pwrite64')")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cartorio-cold.", dir=a.tmp)
    info = json.load(open(os.path.join(a.images, "images.json")))
    layer = max(info["layers"], key=lambda l: l["size"])
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    os.link(os.path.join(a.images, "big.tar"), os.path.join(www, "big.tar")) \
        if os.stat(a.images).st_dev == os.stat(www).st_dev \
        else os.symlink(os.path.abspath(os.path.join(a.images, "big.tar")), os.path.join(www, "big.tar"))
    nginx, nport = start_nginx(tmp, www)
    url = f"http://127.0.0.1:{nport}/big.tar"
    rates = {b: [] for b in a.bin}
    cpus = {b: [] for b in a.bin}
    nginx_pids = [nginx.pid] + children_of(nginx.pid)
    sha = []
    try:
        # warm the tarball into the page cache
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
        for rnd in range(a.rounds):
            order = a.bin if rnd % 2 == 0 else list(reversed(a.bin))
            for b in order:
                p, port, d = start_proxy(b, tmp, url)
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/bench/cold/manifests/v1",
                                                 headers={"Accept": ACCEPT})
                    urllib.request.urlopen(req, timeout=120).read()
                    c0 = (proc_cpu([p.pid]), proc_cpu(nginx_pids), os.times())
                    t = time.perf_counter()
                    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                                          f"http://127.0.0.1:{port}/v2/bench/cold/blobs/{layer['digest']}"],
                                         check=True, stdout=subprocess.PIPE, timeout=600).stdout
                    dt = time.perf_counter() - t
                    c1 = (proc_cpu([p.pid]), proc_cpu(nginx_pids), os.times())
                    with open(f"/proc/{p.pid}/status") as f:
                        hwm = next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0) / 1024
                    curl_cpu = (c1[2].children_user + c1[2].children_system
                                - c0[2].children_user - c0[2].children_system)
                    cpu = (c1[0] - c0[0], c1[1] - c0[1], curl_cpu)
                    r = int(out) / MiB / dt
                    rates[b].append(r)
                    cpus[b].append(cpu)
                    print(f"round {rnd} {b}: {r:.0f} MiB/s in {dt:.2f} s; CPU s: cartorio {cpu[0]:.2f}, "
                          f"nginx {cpu[1]:.2f}, curl {cpu[2]:.2f}; cartorio peak RSS {hwm:.0f} MiB", flush=True)
                finally:
                    stop(p)
                    shutil.rmtree(d, ignore_errors=True)
            s = float(subprocess.run([a.sha256_bin, "1024"], check=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL).stdout.decode().strip())
            sha.append(s)
            print(f"round {rnd} sha256: {s:.0f} MiB/s", flush=True)
        if a.perf:
            b = a.bin[-1]
            p, port, d = start_proxy(b, tmp, url)
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/bench/cold/manifests/v1",
                                             headers={"Accept": ACCEPT})
                urllib.request.urlopen(req, timeout=120).read()
                target = [] if "-a" in a.perf_args.split() else ["-p", str(p.pid)]
                rec = subprocess.Popen(["perf", *a.perf_args.split(), "-o", a.perf, *target],
                                       stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                subprocess.run(["curl", "-sf", "-o", "/dev/null",
                                f"http://127.0.0.1:{port}/v2/bench/cold/blobs/{layer['digest']}"], check=True)
                rec.send_signal(signal.SIGINT)
                rec.wait()
            finally:
                stop(p)
                shutil.rmtree(d, ignore_errors=True)
    finally:
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    ms = statistics.median(sha)
    print(f"\nsha256 (one core): median {ms:.0f} MiB/s ({', '.join('%.0f' % x for x in sha)})")
    for b, rs in rates.items():
        m = statistics.median(rs)
        print(f"{b}: median {m:.0f} MiB/s = {m / ms:.2f}x sha256 ({', '.join('%.0f' % x for x in rs)})")
        med = [statistics.median(c[i] for c in cpus[b]) for i in range(3)]
        print(f"  median CPU s per stream: cartorio {med[0]:.2f}, nginx {med[1]:.2f}, curl {med[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
