#!/usr/bin/env bash
# Adds the host's bash and find to the Nix store, linked against the store glibc of the
# NixOS-like root (testdata/nixroot), as a derivation's builder and the tools a setup hook
# uses. Prints the store path; GCROOT (optional) becomes a GC root for it.
#
# Usage: store-tools.sh NIXROOT_ENV_SH [GCROOT]
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 NIXROOT_ENV_SH [GCROOT]" >&2; exit 2; }
# shellcheck disable=SC1090
. "$1"
hostlib=/lib/x86_64-linux-gnu
stage=$(mktemp -d "${TMPDIR:-/tmp}/store-tools.XXXXXX")
trap 'chmod -R u+w "$stage"; rm -rf "$stage"' EXIT

out=$stage/hook-test-tools
mkdir -p "$out/bin" "$out/lib"
cp -L /bin/bash /usr/bin/find "$out/bin/"
cp -L "$hostlib/libtinfo.so.6" "$out/lib/"
chmod -R u+w "$out"
# find needs libselinux, which the root's store has.
for f in "$out/bin/bash" "$out/bin/find"; do
    patchelf --set-interpreter "$NIXROOT_LD" \
        --set-rpath "\$ORIGIN/../lib:$NIXROOT_LIBSELINUX:$NIXROOT_GLIBC" "$f"
done
patchelf --set-rpath "$NIXROOT_GLIBC" "$out/lib/libtinfo.so.6"

path=$(nix-store --add "$out")
if [ $# -ge 2 ]; then
    nix-store --realise "$path" --add-root "$2" --indirect >/dev/null
fi
echo "$path"
