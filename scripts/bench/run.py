#!/usr/bin/env python3
"""The measurements of scripts/bench.sh (see its header). Called by bench.sh:

    run.py --tmp DIR --bin CARTORIO --images DIR [--quick] [--rounds N] [--only 1,2,...]

Every server is started here, its pid written to DIR/pids (bench.sh's exit trap kills
those pids), and stopped here. All load goes to 127.0.0.1. Prints a markdown report.
"""
import argparse
import base64
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json")
MiB = 1024 * 1024
GiB = 1024 * MiB


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early (rc={proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {timeout}s")


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_seconds(pids):
    """User + system CPU of the processes (all their threads) so far."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


# The memory-cache bound every cartorio in the bench runs with (the default).
MEMORY_CACHE_MIB = 64

class Server:
    """A server process; its pid goes to TMP/pids for bench.sh's exit trap."""

    all = []
    peak = {}  # role -> max VmHWM (KiB) seen at stop

    def __init__(self, role, argv, tmp, port=None, stdout_port=False, env=None):
        self.role = role
        self.errlog = open(os.path.join(tmp, f"{role}-{len(Server.all)}.log"), "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if stdout_port else subprocess.DEVNULL,
                                     stderr=self.errlog, env=env, start_new_session=True)
        with open(os.path.join(tmp, "pids"), "a") as f:
            f.write(f"{self.proc.pid}\n")
        Server.all.append(self)
        self.port = port
        if stdout_port:
            line = self.proc.stdout.readline().decode()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if not m:
                raise RuntimeError(f"{role}: no 'listening on' line (got {line!r}); see {self.errlog.name}")
            self.port = int(m.group(1))
        else:
            try:
                wait_port(port, self.proc)
            except RuntimeError as e:
                self.errlog.flush()
                with open(self.errlog.name, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"{role}: {e}; its stderr: {tail}") from None

    def pids(self):
        # nginx: master plus workers (what the service costs in total)
        return [self.proc.pid] + children(self.proc.pid)

    def hwm_kib(self):
        return sum(vm_hwm_kib(p) for p in self.pids())

    def stop(self):
        if self.proc.poll() is None:
            Server.peak[self.role] = max(Server.peak.get(self.role, 0), self.hwm_kib())
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def timed(argv, **kw):
    t = time.perf_counter()
    run(argv, **kw)
    return time.perf_counter() - t


def http_get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read(), r.headers.get("Content-Type", "")


# --- results -----------------------------------------------------------------------------------
class Results:
    def __init__(self):
        self.rows = {}  # (section, metric) -> {contender: [values]}
        self.units = {}
        self.order = []
        self.ratios = []  # (section, label, value, target text, met: bool|None)
        self.notes = []

    def add(self, section, metric, contender, value, unit):
        key = (section, metric)
        if key not in self.rows:
            self.rows[key] = {}
            self.order.append(key)
        self.rows[key].setdefault(contender, []).append(value)
        self.units[key] = unit
        log(f"{section} {metric} {contender}: {value:.4g} {unit}")

    def med(self, section, metric, contender):
        v = self.rows.get((section, metric), {}).get(contender)
        return statistics.median(v) if v else None

    def ratio(self, section, label, num, den, target=None, ok=None):
        """num/den are (metric, contender) pairs of `section`; ok(ratio) -> bool."""
        a, b = self.med(section, *num), self.med(section, *den)
        if a is None or b is None or b == 0:
            self.ratios.append((section, label, None, target, None))
            return
        r = a / b
        self.ratios.append((section, label, r, target, ok(r) if ok else None))

    def check(self, section, label, value, target, ok):
        self.ratios.append((section, label, value, target, ok))

    def table(self):
        out = ["| # | metric | contender | median | min | max | n | unit |",
               "|---|---|---|---:|---:|---:|---:|---|"]
        for key in self.order:
            sec, metric = key
            for c, v in self.rows[key].items():
                out.append(f"| {sec} | {metric} | {c} | {fmt(statistics.median(v))} | {fmt(min(v))} | "
                           f"{fmt(max(v))} | {len(v)} | {self.units[key]} |")
        out += ["", "| # | ratio / check (medians) | value | target | met? |", "|---|---|---:|---|---|"]
        for sec, label, r, target, ok in self.ratios:
            val = "n/a" if r is None else fmt(r)
            met = "—" if ok is None else ("MET" if ok else "MISSED")
            out.append(f"| {sec} | {label} | {val} | {target or ''} | {met} |")
        return "\n".join(out)


def fmt(x):
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    return str(x)


# --- the bench ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = a.tmp
        self.bin = a.bin
        self.img = a.images
        self.www = os.path.join(a.images, "www")
        self.rounds = a.rounds
        self.r = Results()
        with open(os.path.join(a.images, "images.json")) as f:
            self.info = json.load(f)
        self.big = os.path.join(self.img, "big.tar")
        self.biggz = os.path.join(self.img, "big-gz.tar")
        self.access_log = os.path.join(self.tmp, "nginx-access.log")
        self.remote = False

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def order(self, contenders, rnd):
        """Alternate who goes first from round to round."""
        k = rnd % len(contenders)
        return contenders[k:] + contenders[:k]

    # servers
    def start_cartorio_serve(self, *args, role="cartorio"):
        # Its own cache folder under the run's temp dir (never ~/.cache), with the
        # default memory bound the RSS target is stated against.
        cache = self.path(f"cache-serve-{time.monotonic_ns()}")
        return Server(role, [self.bin, "serve", "--listen", "127.0.0.1:0", "--cache-dir", cache,
                             "--cache-memory", f"{MEMORY_CACHE_MIB}MiB", *args], self.tmp, stdout_port=True)

    def start_cartorio_proxy(self, source, name, role):
        d = self.path(f"proxy-{time.monotonic_ns()}")
        os.makedirs(d)
        cfg = os.path.join(d, "images.toml")
        with open(cfg, "w") as f:
            f.write(f'listen = "127.0.0.1:0"\n\n[[image]]\nname = "{name}"\nsource = "{source}"\n'
                    f'tags = ["v1"]\n\n[cache]\ndir = "{d}/cache"\nmemory = "{MEMORY_CACHE_MIB}MiB"\n')
        return Server(role, [self.bin, "proxy", "--config", cfg, "--listen", "127.0.0.1:0"], self.tmp,
                      stdout_port=True)

    def start_registry(self, role="docker-registry"):
        port = free_port()
        d = self.path(f"registry-{port}")
        os.makedirs(d)
        cfg = os.path.join(d, "config.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {d}/storage\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
        return Server(role, ["docker-registry", "serve", cfg], self.tmp, port=port)

    def start_nginx(self, manifest_type):
        port = free_port()
        conf = self.path("nginx.conf")
        t = self.tmp
        with open(conf, "w") as f:
            f.write(f"""
user root root;
daemon off;
worker_processes 2;
pid {t}/nginx.pid;
error_log {t}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format bytes '$request_uri $status $body_bytes_sent';
  access_log {self.access_log} bytes;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path {t}/nginx-body; proxy_temp_path {t}/nginx-proxy;
  fastcgi_temp_path {t}/nginx-fcgi; uwsgi_temp_path {t}/nginx-uwsgi; scgi_temp_path {t}/nginx-scgi;
  types {{ }}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {self.www};
    # just enough of the registry API for a skopeo pull of files on disk; a line per
    # request in a log of its own, as cartorio writes one per request by default (the
    # `bytes` log above counts the tarball reads only)
    location = /v2/ {{ access_log {t}/nginx-registry.log; default_type application/json; return 200 '{{}}'; }}
    location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{{64}})$" {{ access_log {t}/nginx-registry.log; alias {self.www}/blobs/sha256/$1; }}
    location ~ ^/v2/.+/manifests/([A-Za-z0-9._-]+)$ {{
      access_log {t}/nginx-registry.log;
      default_type {manifest_type};
      alias {self.www}/manifests/$1;
    }}
    location /blobs/ {{ access_log off; }}
  }}
}}
""")
        return Server("nginx", ["nginx", "-c", conf, "-e", f"{t}/nginx-error.log"], self.tmp, port=port)

    def nginx_bytes_since(self, offset, path_prefix):
        time.sleep(0.2)  # nginx writes the log line after the response
        total = 0
        with open(self.access_log) as f:
            f.seek(offset)
            for line in f:
                p = line.split()
                if len(p) == 3 and p[0].startswith(path_prefix):
                    total += int(p[2])
        return total

    def log_offset(self):
        return os.path.getsize(self.access_log) if os.path.exists(self.access_log) else 0

    def pull(self, port, ref, dest):
        shutil.rmtree(dest, ignore_errors=True)
        t = timed(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://127.0.0.1:{port}/{ref}",
                   f"dir:{dest}"], timeout=900)
        shutil.rmtree(dest, ignore_errors=True)
        return t

    # --- setup -----------------------------------------------------------------------------
    def setup(self):
        self.cart = self.start_cartorio_serve(f"bench/big:v1={self.big}", f"bench/gz:v1={self.biggz}")
        cu = f"http://127.0.0.1:{self.cart.port}"
        body, ctype = http_get(f"{cu}/v2/bench/big/manifests/v1", ACCEPT)
        self.manifest = json.loads(body)
        os.makedirs(os.path.join(self.www, "manifests"), exist_ok=True)
        with open(os.path.join(self.www, "manifests", "v1"), "wb") as f:
            f.write(body)
        self.manifest_type = ctype.split(";")[0] or self.manifest.get("mediaType")
        blobs = [self.manifest["config"]] + self.manifest["layers"]
        for b in blobs:
            p = os.path.join(self.www, "blobs", "sha256", b["digest"].split(":")[1])
            if not os.path.exists(p) or os.path.getsize(p) != b["size"]:
                raise RuntimeError(f"cartorio's manifest names {b['digest']}, not among the generated files")
        self.blobs = blobs
        self.big_layer = max(self.manifest["layers"], key=lambda l: l["size"])
        self.nginx = self.start_nginx(self.manifest_type)
        self.reg = self.start_registry()
        log("pushing the image into docker-registry (skopeo copy docker-archive: -> docker://)")
        t = timed(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"docker-archive:{self.big}",
                   f"docker://127.0.0.1:{self.reg.port}/bench/big:v1"], timeout=900)
        self.r.notes.append(f"skopeo push of the docker-archive into docker-registry: {t:.1f} s "
                            "(layers are gzip-compressed on the way in, so docker-registry serves gzip blobs)")
        body, _ = http_get(f"http://127.0.0.1:{self.reg.port}/v2/bench/big/manifests/v1", ACCEPT)
        rm = json.loads(body)
        self.reg_big_layer = max(rm["layers"], key=lambda l: l["size"])
        # remote sources: does this build read http:// archives?
        url = f"http://127.0.0.1:{self.nginx.port}/big.tar"
        os.link(self.big, os.path.join(self.www, "big.tar"))
        p = subprocess.run([self.bin, "inspect", url, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.remote = p.returncode == 0
        if not self.remote:
            msg = p.stderr.decode().strip().splitlines()[-1:] or [""]
            self.r.notes.append(f"remote sources: `cartorio inspect {url}` failed ({msg[0]}) -> "
                                "skipped: remote sources not available in this build")
        # warm-up: every contender serves every blob once (page cache, lazy indexes)
        for port, ref in ((self.cart.port, "bench/big:v1"), (self.reg.port, "bench/big:v1"),
                          (self.nginx.port, "bench/big:v1"), (self.cart.port, "bench/gz:v1")):
            self.pull(port, ref, self.path("warmup"))
        # The images were just written (GBs, plus docker-registry's copy): write them back now,
        # not during the measurements, where writeback would compete for the 2 cores and
        # leave the contenders' files in different states (dirty / under writeback / clean).
        os.sync()

    def member_offset(self, hex_digest, size):
        """Where the data of the docker-archive member holding the layer starts in big.tar."""
        import tarfile
        with tarfile.open(self.big) as t:
            for m in t:
                if m.size == size and hex_digest in m.name:
                    return m.offset_data
        return None

    # --- 1 ---------------------------------------------------------------------------------
    def m1_blob(self):
        sec = "1"
        d = self.big_layer["digest"]
        cu = f"http://127.0.0.1:{self.cart.port}/v2/bench/big/blobs/{d}"
        urls = {  # contender -> curl arguments
            "cartorio": [cu],
            "nginx (sendfile)": [f"http://127.0.0.1:{self.nginx.port}/blobs/sha256/{d.split(':')[1]}"],
            "docker-registry": [f"http://127.0.0.1:{self.reg.port}/v2/bench/big/blobs/"
                                f"{self.reg_big_layer['digest']}"],
            # a range of a blob cartorio has already verified is not hashed again: this row
            # shows what the copy loop costs without sha256 (all but the first byte)
            "cartorio, Range: bytes=1- (verified, no hashing)": ["-r", "1-", cu],
        }
        # The like-for-like reference: nginx sending the same bytes from the same tarball (a
        # Range of big.tar), as cartorio serves them in place. A tarball's page cache is laid
        # out by how it was written (tar writes small records: small folios, several times the
        # page-cache lookups per byte of a file written in large writes), so the tarball costs
        # any server more than the separate blob file nginx serves in the row above.
        at = self.member_offset(d.split(":")[1], self.big_layer["size"])
        if at is not None:
            urls["nginx (sendfile), the same bytes from the tarball"] = [
                "-r", f"{at}-{at + self.big_layer['size'] - 1}", f"http://127.0.0.1:{self.nginx.port}/big.tar"]
        self.r.notes.append(f"1: blob = the largest layer ({self.big_layer['size'] / MiB:.0f} MiB uncompressed "
                            f"random data; docker-registry's is its gzip form, "
                            f"{self.reg_big_layer['size'] / MiB:.0f} MiB); curl -o /dev/null; "
                            "8 streams = 8 curls at once, aggregate throughput")
        servers = {"cartorio": self.cart, "nginx (sendfile)": self.nginx, "docker-registry": self.reg,
                   "cartorio, Range: bytes=1- (verified, no hashing)": self.cart,
                   "nginx (sendfile), the same bytes from the tarball": self.nginx}
        for rnd in range(self.rounds):
            for c in self.order(list(urls), rnd):
                pids = servers[c].pids()
                for n in (1, 8):
                    # one stream of 600 MiB lasts a few tenths of a second: a sample is three in a
                    # row, so that a stray scheduling hiccup does not decide the row
                    reps = 3 if n == 1 else 1
                    cpu0, t = cpu_seconds(pids), time.perf_counter()
                    total = 0
                    for _ in range(reps):
                        procs = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                                                   *urls[c]], stdout=subprocess.PIPE) for _ in range(n)]
                        for p in procs:
                            out, _ = p.communicate(timeout=600)
                            if p.returncode != 0:
                                raise RuntimeError(f"curl {urls[c]} failed")
                            total += int(out)
                    dt, cpu = time.perf_counter() - t, cpu_seconds(pids) - cpu0
                    m = f"warm blob GET, {n} stream{'s' if n > 1 else ''}"
                    self.r.add(sec, m, c, total / MiB / dt, "MiB/s")
                    # what the server itself spends (its threads' user + system time): the clients
                    # (curl copying every byte out of the socket) share the 2 cores and dominate
                    # wall time, so this is the row that isolates the server's data path
                    self.r.add(sec, f"{m}: server CPU per GiB sent", c, cpu * 1000 / (total / GiB), "ms")
        for n in (1, 8):
            m = f"warm blob GET, {n} stream{'s' if n > 1 else ''}"
            for other in ("nginx (sendfile)", "docker-registry"):
                self.r.ratio(sec, f"{m}: cartorio / {other}", (m, "cartorio"), (m, other), "≥ 1.0",
                             lambda x: x >= 1.0)
            self.r.ratio(sec, f"{m}: cartorio Range, no hashing / nginx (sendfile)",
                         (m, "cartorio, Range: bytes=1- (verified, no hashing)"), (m, "nginx (sendfile)"))
            tarball = "nginx (sendfile), the same bytes from the tarball"
            if tarball in urls:
                self.r.ratio(sec, f"{m}: cartorio / {tarball}", (m, "cartorio"), (m, tarball), "≥ 1.0",
                             lambda x: x >= 1.0)
                self.r.ratio(sec, f"{m}: server CPU per GiB, cartorio / {tarball}",
                             (f"{m}: server CPU per GiB sent", "cartorio"),
                             (f"{m}: server CPU per GiB sent", tarball), "≤ 1.0", lambda x: x <= 1.0)
            self.r.ratio(sec, f"{m}: server CPU per GiB, cartorio / nginx (sendfile)",
                         (f"{m}: server CPU per GiB sent", "cartorio"),
                         (f"{m}: server CPU per GiB sent", "nginx (sendfile)"), "≤ 1.0", lambda x: x <= 1.0)

    # --- 2 ---------------------------------------------------------------------------------
    def m2_manifest(self):
        sec = "2"
        dur = "3s" if self.a.quick else "10s"
        urls = {
            "cartorio": f"http://127.0.0.1:{self.cart.port}/v2/bench/big/manifests/v1",
            "nginx (static file)": f"http://127.0.0.1:{self.nginx.port}/v2/bench/big/manifests/v1",
            "docker-registry": f"http://127.0.0.1:{self.reg.port}/v2/bench/big/manifests/v1",
        }
        # The same image behind basic auth (htpasswd -B): bcrypt on the first request of a
        # credential, the verification cache after (issue 9: >= 0.8x of auth off).
        authed = None
        if shutil.which("htpasswd"):
            pw = self.path("bench.htpasswd")
            run(["htpasswd", "-B", "-b", "-c", pw, "bench", "bench-secret"])
            authed = self.start_cartorio_serve(f"bench/big:v1={self.big}", "--htpasswd", pw,
                                               role="cartorio, basic auth")
            urls["cartorio, basic auth"] = f"http://127.0.0.1:{authed.port}/v2/bench/big/manifests/v1"
        creds = "Authorization: Basic " + base64.b64encode(b"bench:bench-secret").decode()
        self.r.notes.append(f"2: wrk -t2 -c32 -d{dur} --latency -H 'Accept: {ACCEPT}' (wrk shares the 2 cores "
                            "with the server under test); 'basic auth': the same cartorio with --htpasswd, "
                            "every request with the user's credentials")
        for rnd in range(self.rounds):
            for c in self.order(list(urls), rnd):
                extra = ["-H", creds] if c == "cartorio, basic auth" else []
                out = run(["wrk", "-t2", "-c32", f"-d{dur}", "--latency", "-H", f"Accept: {ACCEPT}", *extra,
                           urls[c]], timeout=120).stdout.decode()
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
                p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
                errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                if errs:
                    self.r.notes.append(f"2: {c}: {errs.group(1)} non-2xx responses in round {rnd + 1}")
                self.r.add(sec, "manifest GET req/s (32 conns)", c, rps, "req/s")
                self.r.add(sec, "manifest GET p99 latency", c, p99, "ms")
        m = "manifest GET req/s (32 conns)"
        self.r.ratio(sec, "req/s cartorio / nginx", (m, "cartorio"), (m, "nginx (static file)"), "≥ 1.0",
                     lambda x: x >= 1.0)
        self.r.ratio(sec, "req/s cartorio / docker-registry", (m, "cartorio"), (m, "docker-registry"))
        if authed:
            self.r.ratio(sec, "req/s cartorio with basic auth / without", (m, "cartorio, basic auth"),
                         (m, "cartorio"), "≥ 0.8", lambda x: x >= 0.8)
            authed.stop()
        m = "manifest GET p99 latency"
        self.r.ratio(sec, "p99 cartorio / nginx", (m, "cartorio"), (m, "nginx (static file)"), "≤ 1.0",
                     lambda x: x <= 1.0)

    # --- 3 ---------------------------------------------------------------------------------
    def floor_curl_blobs(self, dest):
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        t = time.perf_counter()
        base = f"http://127.0.0.1:{self.nginx.port}/blobs/sha256/"
        argv = ["curl", "-sf"]
        for b in self.blobs:
            hx = b["digest"].split(":")[1]
            argv += ["-o", os.path.join(dest, hx), base + hx]
        run(argv, timeout=600)
        dt = time.perf_counter() - t
        shutil.rmtree(dest, ignore_errors=True)
        return dt

    def m3_pull(self):
        sec = "3"
        m = "warm whole-image pull (skopeo docker:// -> dir:)"
        cont = {
            "cartorio": lambda d: self.pull(self.cart.port, "bench/big:v1", d),
            "docker-registry": lambda d: self.pull(self.reg.port, "bench/big:v1", d),
            "nginx as a registry (files)": lambda d: self.pull(self.nginx.port, "bench/big:v1", d),
            "floor: curl the blob files from nginx": self.floor_curl_blobs,
            "cartorio, gzip OCI archive": lambda d: self.pull(self.cart.port, "bench/gz:v1", d),
        }
        self.r.notes.append("3: 'nginx as a registry' = nginx serving the same manifest and blob files under "
                            "/v2/ paths (no registry logic), pulled by the same skopeo command")
        for rnd in range(self.rounds):
            for c in self.order(list(cont), rnd):
                self.r.add(sec, m, c, cont[c](self.path("pull")), "s")
        self.r.ratio(sec, "pull cartorio / nginx as a registry", (m, "cartorio"),
                     (m, "nginx as a registry (files)"), "≤ 1.05", lambda x: x <= 1.05)
        self.r.ratio(sec, "pull cartorio / docker-registry", (m, "cartorio"), (m, "docker-registry"))
        self.r.ratio(sec, "pull cartorio / floor (curl from nginx)", (m, "cartorio"),
                     (m, "floor: curl the blob files from nginx"))

    # --- 4 ---------------------------------------------------------------------------------
    def m4_cold(self):
        sec = "4"
        m = "cold pull of the docker-archive on nginx"
        url = f"http://127.0.0.1:{self.nginx.port}/big.tar"
        size = os.path.getsize(self.big)
        contenders = ["cartorio (source = http URL)", "chain: curl + skopeo push + skopeo pull"]
        for rnd in range(self.rounds):
            for c in self.order(contenders, rnd):
                if c.startswith("cartorio"):
                    if not self.remote:
                        continue
                    off = self.log_offset()
                    t = time.perf_counter()
                    s = self.start_cartorio_proxy(url, "bench/cold", "cartorio (http source)")
                    self.pull(s.port, "bench/cold:v1", self.path("pull"))
                    dt = time.perf_counter() - t
                    s.stop()
                    self.r.add(sec, m, c, dt, "s")
                    self.r.add(sec, "upstream bytes / tarball size", c,
                               self.nginx_bytes_since(off, "/big.tar") / size, "×")
                else:
                    dl = self.path("download.tar")
                    t0 = time.perf_counter()
                    run(["curl", "-sf", "-o", dl, url], timeout=600)
                    t1 = time.perf_counter()
                    reg = self.start_registry("docker-registry (chain)")
                    run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"docker-archive:{dl}",
                         f"docker://127.0.0.1:{reg.port}/bench/chain:v1"], timeout=900)
                    self.pull(reg.port, "bench/chain:v1", self.path("pull"))
                    t2 = time.perf_counter()
                    reg.stop()
                    os.unlink(dl)
                    shutil.rmtree(self.path(f"registry-{reg.port}"), ignore_errors=True)
                    self.r.add(sec, m, c, t2 - t0, "s")
                    self.r.add(sec, m, "floor: curl download of the tarball", t1 - t0, "s")
        if not self.remote:
            self.r.notes.append("4: cartorio cold pull skipped: remote sources not available in this build")
        w = "warm whole-image pull (skopeo docker:// -> dir:)"
        cold, warm = self.r.med(sec, m, contenders[0]), self.r.med("3", w, "cartorio")
        self.r.check(sec, "cold pull / warm pull (section 3), cartorio",
                     cold / warm if cold and warm else None, "≤ 1.15", (cold / warm <= 1.15) if cold and warm else None)
        self.r.ratio(sec, "cold pull cartorio / chain", (m, contenders[0]), (m, contenders[1]), "≤ 0.3",
                     lambda x: x <= 0.3)
        self.r.ratio(sec, "cold pull cartorio / floor (download)", (m, contenders[0]),
                     (m, "floor: curl download of the tarball"))

    # --- 5 ---------------------------------------------------------------------------------
    def m5_toc(self):
        sec = "5"
        sizes = [64] if self.a.quick else [64, 1024, 4096]
        worst_bytes, worst_ms = 0, 0.0
        for size in sizes:
            name = f"toc-{size}.tar"
            p = os.path.join(self.www, name)
            run([sys.executable, os.path.join(os.path.dirname(__file__), "gen_images.py"), "toc", str(size), p])
            label = f"{size} MiB" if size < 1024 else f"{size // 1024} GiB"
            url = f"http://127.0.0.1:{self.nginx.port}/{name}"
            for rnd in range(self.rounds):
                t = time.perf_counter()
                out = run([self.bin, "inspect", p, "--json"], timeout=120).stdout
                dt = (time.perf_counter() - t) * 1e3
                br = json.loads(out)["bytes_read"]
                self.r.add(sec, f"inspect --json wall, {label} tar", "cartorio (file)", dt, "ms")
                self.r.add(sec, f"bytes read to index, {label} tar", "cartorio (file)", br / 1024, "KiB")
                worst_bytes, worst_ms = max(worst_bytes, br), max(worst_ms, dt)
                # time to first manifest through the server: spawn -> manifest body received
                t = time.perf_counter()
                s = self.start_cartorio_serve(f"toc={p}", role="cartorio (toc)")
                t1 = time.perf_counter()
                http_get(f"http://127.0.0.1:{s.port}/v2/toc/manifests/v1", ACCEPT)
                t2 = time.perf_counter()
                s.stop()
                self.r.add(sec, f"first manifest GET, {label} tar", "cartorio (file)", (t2 - t1) * 1e3, "ms")
                self.r.add(sec, f"spawn -> first manifest, {label} tar", "cartorio (file)", (t2 - t) * 1e3, "ms")
                worst_ms = max(worst_ms, (t2 - t1) * 1e3)
                if self.remote:
                    off = self.log_offset()
                    t = time.perf_counter()
                    out = run([self.bin, "inspect", url, "--json"], timeout=120).stdout
                    dt = (time.perf_counter() - t) * 1e3
                    up = self.nginx_bytes_since(off, "/" + name)
                    self.r.add(sec, f"inspect --json wall, {label} tar", "cartorio (http)", dt, "ms")
                    self.r.add(sec, f"bytes read to index, {label} tar", "cartorio (http)",
                               json.loads(out)["bytes_read"] / 1024, "KiB")
                    self.r.add(sec, f"upstream bytes (nginx log), {label} tar", "cartorio (http)", up / 1024, "KiB")
                    worst_bytes, worst_ms = max(worst_bytes, up), max(worst_ms, dt)
            os.unlink(p)
        if not self.remote:
            self.r.notes.append("5: http sources skipped: remote sources not available in this build")
        self.r.check(sec, "max bytes read before the first manifest (KiB)", worst_bytes / 1024, "≤ 1024",
                     worst_bytes <= MiB)
        self.r.check(sec, "max time to first manifest (ms; inspect wall incl. process start, or first GET)",
                     worst_ms, "≤ 50", worst_ms <= 50)

    # --- 6 ---------------------------------------------------------------------------------
    def m6_concurrent(self):
        sec = "6"
        if not self.remote:
            self.r.notes.append("6: skipped: remote sources not available in this build")
            return
        url = f"http://127.0.0.1:{self.nginx.port}/big.tar"
        size = os.path.getsize(self.big)
        n = 20
        for rnd in range(self.rounds):
            for c in self.order(["1 pull", f"{n} pulls"], rnd):
                k = 1 if c == "1 pull" else n
                off = self.log_offset()
                s = self.start_cartorio_proxy(url, "bench/cold", "cartorio (http source)")
                t = time.perf_counter()
                procs = [subprocess.Popen(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                           f"docker://127.0.0.1:{s.port}/bench/cold:v1",
                                           f"dir:{self.path(f'c{i}')}"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE) for i in range(k)]
                fails = 0
                for p in procs:
                    p.communicate(timeout=1800)
                    fails += p.returncode != 0
                dt = time.perf_counter() - t
                s.stop()
                for i in range(k):
                    shutil.rmtree(self.path(f"c{i}"), ignore_errors=True)
                if fails:
                    self.r.notes.append(f"6: {fails} of {k} pulls failed in round {rnd + 1}")
                self.r.add(sec, "cold pulls, wall", c, dt, "s")
                self.r.add(sec, "cold pulls, upstream bytes / tarball", c,
                           self.nginx_bytes_since(off, "/big.tar") / size, "×")
        self.r.ratio(sec, f"upstream bytes {n} pulls / 1 pull", ("cold pulls, upstream bytes / tarball", f"{n} pulls"),
                     ("cold pulls, upstream bytes / tarball", "1 pull"), "≤ 1.05", lambda x: x <= 1.05)
        self.r.ratio(sec, f"wall {n} pulls / 1 pull", ("cold pulls, wall", f"{n} pulls"),
                     ("cold pulls, wall", "1 pull"), "≤ 1.3", lambda x: x <= 1.3)

    # --- 8 ---------------------------------------------------------------------------------
    def m8_cold_stream(self):
        """One cold stream of the largest layer through cartorio from an http:// source (a
        fresh server and cache each round), against the sha256 rate of the crate cartorio
        uses, measured in the same run (examples/sha256_rate)."""
        sec = "8"
        if not self.remote:
            self.r.notes.append("8: skipped: remote sources not available in this build")
            return
        url = f"http://127.0.0.1:{self.nginx.port}/big.tar"
        d = self.big_layer["digest"]
        m = "cold blob GET, 1 stream (http source, fresh cache)"
        for rnd in range(self.rounds):
            s = self.start_cartorio_proxy(url, "bench/cold", "cartorio (http source)")
            http_get(f"http://127.0.0.1:{s.port}/v2/bench/cold/manifests/v1", ACCEPT)
            cpu0, t = cpu_seconds(s.pids()), time.perf_counter()
            out = run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                       f"http://127.0.0.1:{s.port}/v2/bench/cold/blobs/{d}"], timeout=600).stdout
            dt, cpu = time.perf_counter() - t, cpu_seconds(s.pids()) - cpu0
            s.stop()
            self.r.add(sec, m, "cartorio", int(out) / MiB / dt, "MiB/s")
            # cartorio's own CPU (all threads: receive, sha256, temp-file write, send): on 2 cores
            # shared with nginx and curl, this bounds the stream more than the hash does
            self.r.add(sec, f"{m}: cartorio CPU per GiB", "cartorio", cpu * 1000 / (int(out) / GiB), "ms")
            if self.a.sha256_bin:
                rate = float(run([self.a.sha256_bin, "1024"], timeout=120).stdout.decode().strip())
                self.r.add(sec, m, "sha256 (sha2 crate, one core)", rate, "MiB/s")
        if self.a.sha256_bin:
            self.r.ratio(sec, "cold stream / sha256 rate", (m, "cartorio"), (m, "sha256 (sha2 crate, one core)"),
                         "≥ 0.8", lambda x: x >= 0.8)
        else:
            self.r.notes.append("8: sha256 rate not measured (no --sha256-bin: CARTORIO_BIN given)")

    # --- 9 ---------------------------------------------------------------------------------
    def m9_local_writes(self):
        """A full skopeo pull of the local docker-archive from a fresh cartorio: bytes left
        under its cache folder and bytes the process wrote (/proc/PID/io write_bytes)."""
        sec = "9"
        for rnd in range(self.rounds):
            cache = self.path(f"cache-local-{rnd}")
            s = Server("cartorio (local pull)", [self.bin, "serve", "--listen", "127.0.0.1:0", "--cache-dir", cache,
                                                 f"bench/big:v1={self.big}"], self.tmp, stdout_port=True)
            def io_write():
                with open(f"/proc/{s.proc.pid}/io") as f:
                    return next(int(l.split()[1]) for l in f if l.startswith("write_bytes:"))
            w0 = io_write()
            self.pull(s.port, "bench/big:v1", self.path("pull"))
            w1 = io_write()
            on_disk = 0
            for root, _, files in os.walk(cache):
                on_disk += sum(os.path.getsize(os.path.join(root, f)) for f in files)
            s.stop()
            shutil.rmtree(cache, ignore_errors=True)
            self.r.add(sec, "local pull: bytes under the cache folder", "cartorio", on_disk / 1024, "KiB")
            self.r.add(sec, "local pull: process write_bytes (/proc/PID/io)", "cartorio", (w1 - w0) / 1024, "KiB")
        worst = max(self.r.rows[(sec, "local pull: bytes under the cache folder")]["cartorio"])
        self.r.check(sec, "cache bytes written by a local pull (KiB; index only)", worst, "≤ 1024",
                     worst <= 1024)

    # --- 10 --------------------------------------------------------------------------------
    def m10_decompress(self):
        """Decompression in a streaming pass: `cartorio inspect` of the docker-archive
        compressed whole (gzip -6, zstd -3), which decompresses, walks the tar and hashes
        both streams, against `gzip -dc` and `zstd -dc` of the same files."""
        sec = "10"
        gz, zst = self.path("big.tar.gz"), self.path("big.tar.zst")
        run(["sh", "-c", f"gzip -6 -c {self.big} > {gz}"], timeout=900)
        run(["zstd", "-q", "-3", "-f", self.big, "-o", zst], timeout=900)
        size = os.path.getsize(self.big) / MiB
        m = "decompress a whole-archive tarball (MiB/s of tar)"
        for rnd in range(self.rounds):
            for c, argv in self.order([
                    ("cartorio inspect, gzip", [self.bin, "inspect", gz, "--json"]),
                    ("gzip -dc", ["sh", "-c", f"gzip -dc {gz} > /dev/null"]),
                    ("cartorio inspect, zstd", [self.bin, "inspect", zst, "--json"]),
                    ("zstd -dc", ["sh", "-c", f"zstd -qdc {zst} > /dev/null"])], rnd):
                self.r.add(sec, m, c, size / timed(argv, timeout=900), "MiB/s")
        self.r.ratio(sec, "cartorio gzip pass / gzip -dc", (m, "cartorio inspect, gzip"), (m, "gzip -dc"))
        self.r.ratio(sec, "cartorio zstd pass / zstd -dc", (m, "cartorio inspect, zstd"), (m, "zstd -dc"))
        os.unlink(gz)
        os.unlink(zst)

    # --- 7 ---------------------------------------------------------------------------------
    def m7_rss(self):
        for s in Server.all:
            s.stop()
        for role, kib in sorted(Server.peak.items()):
            self.r.add("7", "peak RSS (VmHWM; nginx: master + workers)", role, kib / 1024, "MiB")
        cart = max((v for k, v in Server.peak.items() if k.startswith("cartorio")), default=0) / 1024
        self.r.check("7", "cartorio peak RSS (MiB), any process", cart,
                     f"≤ 48 + memory-cache bound ({MEMORY_CACHE_MIB} MiB)", cart <= 48 + MEMORY_CACHE_MIB)

    def main(self):
        t0 = time.time()
        steps = {"1": self.m1_blob, "2": self.m2_manifest, "3": self.m3_pull, "4": self.m4_cold,
                 "5": self.m5_toc, "6": self.m6_concurrent, "8": self.m8_cold_stream,
                 "9": self.m9_local_writes, "10": self.m10_decompress}
        try:
            self.setup()
            for k, f in steps.items():
                if self.a.only and k not in self.a.only:
                    continue
                log(f"--- measurement {k} ---")
                try:
                    f()
                except Exception as e:  # report and go on: one broken contender shouldn't hide the rest
                    self.r.notes.append(f"{k}: FAILED: {e}")
                    log(f"measurement {k} failed: {e}")
                    self.failed = True
        finally:
            self.m7_rss()
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"\n## cartorio benchmark ({'quick' if self.a.quick else 'full'}, {self.rounds} round(s))\n")
        print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
        print(f"- nproc: {os.cpu_count()}, CPU: {cpu}, kernel: {platform.release()}")
        print(f"- image: docker-archive {self.info['tar_size'] / MiB:.0f} MiB "
              f"(layers {', '.join('%.1f' % (l['size'] / MiB) for l in self.info['layers'])} MiB), "
              f"gzip OCI archive {self.info['gz_size'] / MiB:.0f} MiB")
        print(f"- tools: {tool_versions()}")
        print(f"- run time: {time.time() - t0:.0f} s\n")
        print(self.r.table())
        if self.r.notes:
            print("\nNotes:\n" + "\n".join(f"- {n}" for n in self.r.notes))
        return 1 if getattr(self, "failed", False) else 0


def tool_versions():
    out = []
    for argv in (["skopeo", "--version"], ["nginx", "-v"], ["docker-registry", "--version"], ["wrk", "-v"]):
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
            line = p.stdout.decode().strip().splitlines()[0]
            out.append(line)
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return "; ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", default="")
    ap.add_argument("--sha256-bin", default="")
    a = ap.parse_args()
    a.only = [x for x in a.only.split(",") if x]
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    sys.exit(Bench(a).main())


if __name__ == "__main__":
    main()
