#!/usr/bin/env bash
# Rebuild config/example/hello.tar (a plain rootfs tarball, served as a one-layer image)
# from config/example/rootfs/.  Reproducible: fixed owner, mode, mtime and order, so the
# committed hello.tar and its digest only change when rootfs/ does.
#
#   bash config/example/make-example.sh && git diff --exit-code config/example/hello.tar
set -euo pipefail
cd "$(dirname "$0")"
export LC_ALL=C TZ=UTC
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --mode=u+rw,go+r,go-w \
  --format=gnu --blocking-factor=1 -C rootfs -cf hello.tar.new hello.txt
mv hello.tar.new hello.tar
echo "config/example/hello.tar: $(sha256sum hello.tar | cut -d' ' -f1)"
