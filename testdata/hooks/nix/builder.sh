# shellcheck shell=bash disable=SC2154 # out, prebuilt, hook, harness: the derivation's attributes
# Builder of hello.nix: installs the prebuilt files as a vendor's package would be, then runs
# the setup hook through stdenv's fixup (fixup.sh).
set -euo pipefail

mkdir -p "$out/bin" "$out/lib"
for f in bin/hello lib/libuse.so; do
    cat "$prebuilt/app/$f" >"$out/$f"
done
chmod +x "$out/bin/hello"
HOOK=$hook bash "$harness/fixup.sh"
