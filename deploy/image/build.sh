#!/usr/bin/env bash
# cartorio's own container image, without a Docker engine:
#
#   cargo build --release && deploy/image/build.sh [OUT]
#
# writes an OCI image archive (an OCI layout as a tar; default target/cartorio-image.oci.tar) and
# prints its manifest digest as the last line.  The image holds:
#   /cartorio                          the binary (stripped), ENTRYPOINT ["/cartorio"]
#   /lib*/…                            the shared libraries `ldd` lists (glibc, libgcc_s, the loader)
#   /etc/ssl/certs/ca-certificates.crt the build host's CA bundle (Debian's ca-certificates)
#   /etc/passwd, /etc/group            root and nonroot (65532); the image runs as 65532:65532
#   /etc/nsswitch.conf                 hosts: files dns
#   /var/cache/cartorio                empty, owned by 65532 (the default cache folder)
#   /etc/cartorio/                     empty: mount images.toml here
#   /tmp                               1777
# CMD ["proxy","--config","/etc/cartorio/images.toml"], labels org.opencontainers.image.{source,
# version,revision,created,…}.
#
# Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the commit time of HEAD, or 0
# outside git), entries are sorted, owners numeric, gzip carries no name or time.  The same
# commit built on the same distribution (same glibc and CA bundle) gives the same digest.
#
# Environment:
#   CARTORIO_BIN        the binary to package (default target/release/cartorio; the tests pass
#                       their debug build, which is stripped the same way)
#   SOURCE_DATE_EPOCH   see above
#   IMAGE_SOURCE        org.opencontainers.image.source (default: git remote origin, else the
#                       repository path)
#   IMAGE_TAG           the tag recorded in the archive (default: the version, e.g. 0.1.0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/cartorio-image.oci.tar}
bin=${CARTORIO_BIN:-$repo/target/release/cartorio}
[ -x "$bin" ] || { echo "build.sh: $bin not found; run: cargo build --release" >&2; exit 1; }
for tool in python3 strip ldd; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is required" >&2; exit 1; }
done
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "build.sh: $certs missing (apt-get install ca-certificates)" >&2; exit 1; }

git_() { git -C "$repo" "$@" 2>/dev/null; }
epoch=${SOURCE_DATE_EPOCH:-$(git_ log -1 --format=%ct || echo 0)}
revision=$(git_ rev-parse HEAD || echo unknown)
source_url=${IMAGE_SOURCE:-$(git_ config --get remote.origin.url || echo "$repo")}
version=$("$bin" --version | awk '{print $2}')
[ -n "$version" ] || { echo "build.sh: $bin --version printed no version" >&2; exit 1; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/cartorio-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/rootfs
mkdir -p "$root"/{etc/ssl/certs,etc/cartorio,var/cache/cartorio,home/nonroot,tmp}
strip -o "$root/cartorio" "$bin"
chmod 0755 "$root/cartorio"

# Shared libraries, at the paths the loader will look for them (the binary's interpreter
# included), as regular files.
ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
  chmod 0755 "$root$lib"
done

cp -L "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod -R u=rwX,go=rX "$root"
chmod 1777 "$root/tmp"
mkdir -p "$(dirname "$out")"

python3 "$here/oci_image.py" "$root" "$out" \
  --epoch "$epoch" --version "$version" --revision "$revision" --source "$source_url" \
  ${IMAGE_TAG:+--tag "$IMAGE_TAG"} \
  --owner var/cache/cartorio=65532 --owner home/nonroot=65532
