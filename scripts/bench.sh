#!/usr/bin/env bash
# Benchmarks cartorio against nginx (the same files, sendfile) and Debian's docker-registry
# (the reference Go registry, distribution 2.8) on 127.0.0.1, and prints a markdown report.
#
#   scripts/bench.sh            full run: ~1 GiB image, 3 rounds (about 6 minutes on 2 cores
#                               without remote sources; budget 15-25 minutes with them)
#   scripts/bench.sh --quick    ~64 MiB image, 1 round, TOC test on 64 MiB only (about 20 s plus
#                               the release build);
#                               CI runs it as a smoke test: it asserts nothing about speed,
#                               only that every measurement runs (exit 0)
#   options: --rounds N  (override)   --only 1,3,5  (a subset of the measurements)
#            --out FILE  (also write the report there)
#            --sockets  (also the misbehaving-sockets rows, scripts/bench/sockets.py: a manifest
#                       GET's latency with 20,000 silent sockets open, capped by the hard
#                       open-file limit; RSS and fds with 1,000 readers stalled mid-blob, and
#                       how long until --write-timeout drops them; about a minute)
#
# What it does:
#   * installs what is missing with apt-get (nginx-light, docker-registry, skopeo, umoci,
#     wrk, curl, python3; SKIP_APT=1 never calls apt-get) and builds cartorio with
#     `cargo build --release` (CARGO_TARGET_DIR honoured; CARTORIO_BIN=path skips the build);
#   * generates its images itself, no downloads (scripts/bench/gen_images.py): a
#     docker-archive with a layer of incompressible data (600 MiB), a layer of many small
#     files (300 MiB) and two small layers; the same image as an OCI archive with gzip layers;
#     sparse 64 MiB / 1 GiB / 4 GiB archives for the TOC measurement (deleted afterwards);
#   * runs the measurements (scripts/bench/run.py), alternating the contenders each round,
#     and prints median / min / max per contender, the ratios and the targets:
#       1. warm large-blob GET, 1 and 8 parallel curl streams: cartorio, nginx, docker-registry
#       2. manifest GETs/s and p99 latency, wrk -c32 --latency: cartorio, nginx, docker-registry,
#          and cartorio behind basic auth (--htpasswd, every request with credentials)
#       3. warm whole-image pull (skopeo docker:// -> dir:): cartorio, docker-registry, nginx
#          serving the files under /v2/ paths, and the floor (curl of the blob files)
#       4. cold pull of the docker-archive placed on nginx (cartorio with an http:// source) vs
#          the floor (curl download) vs download + skopeo push into docker-registry + pull
#       5. time to first manifest and bytes read to index 64 MiB / 1 GiB / 4 GiB tarballs
#          (`cartorio inspect --json` bytes_read; nginx's $body_bytes_sent for http sources)
#       6. 20 concurrent cold pulls of one image: upstream bytes and wall time vs one pull
#       7. peak RSS (VmHWM) of every server
#       8. one cold stream of the largest layer from an http:// source vs the sha256 rate of the
#          sha2 crate on one core (examples/sha256_rate), in the same run
#       9. a full skopeo pull of the local docker-archive: bytes under the cache folder and the
#          process's write_bytes (/proc/PID/io): the index only, no layer copy
#      10. decompression in a streaming pass (`cartorio inspect` of the archive gzip'ed and
#          zstd'ed whole) vs `gzip -dc` and `zstd -dc` of the same files
#     Remote-source rows (4, 5 http, 6) run only when `cartorio inspect http://...` works in
#     this build; otherwise they print "skipped: remote sources not available in this build".
#   * everything lives in one temp dir (TMPDIR honoured), removed at exit (KEEP_TMP=1 keeps
#     it, for debugging); every server it started is killed at exit (by pid).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=; ROUNDS=; ONLY=; OUT=; SOCKETS=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=--quick ;;
    --rounds) ROUNDS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --out) OUT=$2; shift ;;
    --sockets) SOCKETS=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n==> %s\n' "$*" >&2; }
START=$(date +%s)

# --- tools ------------------------------------------------------------------------------------
declare -A TOOLS=(
  [nginx-light]=nginx [docker-registry]=docker-registry [skopeo]=skopeo [umoci]=umoci
  [wrk]=wrk [curl]=curl [python3]=python3 [apache2-utils]=htpasswd [zstd]=zstd
)
missing=()
for pkg in "${!TOOLS[@]}"; do
  command -v "${TOOLS[$pkg]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${TOOLS[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${SKIP_APT:-}" = 1 ] || ! command -v apt-get >/dev/null; then
    echo "bench.sh: missing tools: ${missing[*]} (apt-get unavailable or SKIP_APT=1)" >&2; exit 1
  fi
  step "apt-get install ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin
# Debian starts a system docker-registry and nginx on install; we run our own instances only.

# --- cartorio ---------------------------------------------------------------------------------
if [ -n "${CARTORIO_BIN:-}" ]; then
  BIN=$CARTORIO_BIN
else
  step "cargo build --release"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/cartorio
  # the sha256 rate of the hasher cartorio uses (measurement 8's ceiling)
  cargo build --release --quiet --example sha256_rate
  SHA256_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/sha256_rate
fi
[ -x "$BIN" ] || { echo "bench.sh: $BIN is not executable" >&2; exit 1; }

# --- temp dir and cleanup ---------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cartorio-bench.XXXXXX")
cleanup() {
  if [ -f "$TMP/pids" ]; then
    while read -r pid; do
      kill "$pid" 2>/dev/null || true
    done < "$TMP/pids"
    sleep 0.3
    while read -r pid; do
      kill -9 "$pid" 2>/dev/null || true
    done < "$TMP/pids"
  fi
  if [ "${KEEP_TMP:-}" = 1 ]; then echo "bench.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- images -----------------------------------------------------------------------------------
step "generating test images in $TMP/images ${QUICK:+(quick)}"
python3 scripts/bench/gen_images.py image "$TMP/images" $QUICK

# --- measurements -----------------------------------------------------------------------------
step "measuring"
ARGS=(--tmp "$TMP" --bin "$BIN" --images "$TMP/images")
[ -n "$QUICK" ] && ARGS+=(--quick)
[ -n "$ROUNDS" ] && ARGS+=(--rounds "$ROUNDS")
[ -n "$ONLY" ] && ARGS+=(--only "$ONLY")
[ -n "${SHA256_BIN:-}" ] && ARGS+=(--sha256-bin "$SHA256_BIN")
# in the background, so that a signal runs the trap at once (bash defers traps while it
# waits for a foreground command); the trap kills run.py and then every server it started
rc=0
python3 scripts/bench/run.py "${ARGS[@]}" > "$TMP/report.md" &
echo $! >> "$TMP/pids"
wait $! || rc=$?
# compressed tarballs: sidecar / seek points rows (scripts/bench/seek.py; needs zstd and nginx)
if [ -z "$ONLY" ] && command -v zstd >/dev/null; then
  step "compressed tarballs: sidecars and seek points"
  { printf '\n### Compressed tarballs over HTTP (nginx), no disk cache\n\n'
    python3 scripts/bench/seek.py --bin "$BIN" --tmp "$TMP" ${QUICK:+--size-mib 64}
  } >> "$TMP/report.md" || echo "bench.sh: seek rows failed" >&2
fi
if [ -n "$SOCKETS" ]; then
  step "misbehaving sockets"
  python3 scripts/bench/sockets.py --bin "$BIN" --tmp "$TMP" >> "$TMP/report.md" \
    || echo "bench.sh: socket rows failed or missed a target" >&2
fi
cat "$TMP/report.md"
[ -n "$OUT" ] && cp "$TMP/report.md" "$OUT"
echo "bench.sh: done in $(( $(date +%s) - START )) s (exit $rc)" >&2
exit $rc
