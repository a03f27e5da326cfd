#!/usr/bin/env bash
# Reliability figures from one command (README "Reliability"):
#
#   scripts/reliability.sh            the full run: >= 1,000,000 cases per fuzz target,
#                                     >= 200 injected upstream faults, 20 kill -9 runs,
#                                     the hostile corpus, 500 clients for 3 minutes (release build)
#   scripts/reliability.sh --quick    the smoke run: the same parts, small counts (debug build,
#                                     shared with scripts/test.sh); about 9 minutes on 2 busy shared
#                                     cores; about 2 minutes after scripts/test.sh, whose debug build it
#                                     shares: .ci/run runs it last
#
# Prints one line per figure and exits non-zero on any failure: a panic, a broken invariant
# of a fuzz target, a wrong byte accepted by a client, a corrupt cache entry, an error under
# load, a hostile archive that is not refused, a pull that does not recover.
#
# Environment: REL_PROFILE=dev (full run on the debug build), FUZZ_SEED (default: fixed for --quick, the date for a full run),
# REL_SEED, and every FUZZ_CASES_* / REL_* knob documented in tests/fuzz/main.rs and
# tests/reliability/*.rs overrides the defaults below.  Needs python3 (the corpus generator).
# Network: 127.0.0.1 only.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

quick=0
[ "${1:-}" = --quick ] && quick=1

if [ $quick = 1 ]; then
  profile=()
  : "${FUZZ_CASES:=20000}"        # per target; a few seconds each
  : "${FUZZ_CASES_TARS:=1500}"
  : "${FUZZ_SEED:=1300}"
  : "${REL_FAULTS:=100}"
  : "${REL_FAULT_LAYER_KIB:=256}"
  : "${REL_DRIP_SECS:=2}"
  : "${REL_CRASH_RUNS:=5}"
  : "${REL_CRASH_LAYER_KIB:=2048}"
  : "${REL_LOAD_CLIENTS:=500}"
  : "${REL_LOAD_SECS:=20}"
  : "${REL_LOAD_LARGE_KIB:=1024}"
else
  profile=(--release)
  # REL_PROFILE=dev: the full counts on a debug build (slower per case, no release build)
  [ "${REL_PROFILE:-}" = dev ] && profile=()
  : "${FUZZ_CASES:=1000000}"
  : "${FUZZ_SEED:=$(date -u +%Y%m%d)000000}"
  : "${REL_FAULTS:=250}"
  : "${REL_FAULT_PERCENT:=50}"
  : "${REL_FAULT_PARALLEL:=8}"
  : "${REL_FAULT_LAYER_KIB:=2048}"
  : "${REL_DRIP_SECS:=3}"
  : "${REL_CRASH_RUNS:=20}"
  : "${REL_CRASH_LAYER_KIB:=8192}"
  : "${REL_LOAD_CLIENTS:=500}"
  : "${REL_LOAD_SECS:=180}"
  : "${REL_LOAD_LARGE_KIB:=8192}"
fi
[ -n "${REL_FAULT_PERCENT:-}" ] && export REL_FAULT_PERCENT
[ -n "${REL_FAULT_PARALLEL:-}" ] && export REL_FAULT_PARALLEL
export FUZZ_CASES FUZZ_SEED REL_FAULTS REL_FAULT_LAYER_KIB REL_DRIP_SECS REL_CRASH_RUNS \
  REL_CRASH_LAYER_KIB REL_LOAD_CLIENTS REL_LOAD_SECS REL_LOAD_LARGE_KIB
[ -n "${FUZZ_CASES_TARS:-}" ] && export FUZZ_CASES_TARS

# 500 clients and a server with as many connections, plus cache files.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log=$(mktemp "${TMPDIR:-/tmp}/reliability.XXXXXX")
trap 'rm -f "$log"' EXIT
started=$(date +%s)
echo "==> reliability run ($([ $quick = 1 ] && echo quick || echo full)), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

echo "==> building" >&2
cargo build --locked "${profile[@]}" --bin cartorio >&2 || exit 1
cargo test --locked "${profile[@]}" --test fuzz --test reliability --no-run >&2 || exit 1

status=0
run() { # name, cargo test args...
  local name=$1; shift
  local t0=$(date +%s)
  echo "==> $name" >&2
  if cargo test --locked "${profile[@]}" "$@" -- --nocapture --test-threads 2 >"$log.$name" 2>&1; then
    echo "    ok ($(( $(date +%s) - t0 )) s)" >&2
  else
    echo "    FAILED ($(( $(date +%s) - t0 )) s); the end of its output:" >&2
    tail -40 "$log.$name" >&2
    status=1
  fi
  grep -h '^FIGURE\|^  known:' "$log.$name" >>"$log"
  rm -f "$log.$name"
}

run fuzz --test fuzz
run faults --test reliability faults::
run crash --test reliability crash::
run corpus --test reliability corpus::
run load --test reliability load::

echo
echo "Reliability figures ($([ $quick = 1 ] && echo 'scripts/reliability.sh --quick' || echo scripts/reliability.sh), $(( $(date +%s) - started )) s):"
sed 's/^FIGURE /  /' "$log"
if [ $status = 0 ]; then
  echo "reliability: all parts passed"
else
  echo "reliability: FAILED (see above)"
fi
exit $status
