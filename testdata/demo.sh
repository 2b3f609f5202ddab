#!/usr/bin/env bash
# The main job, for real, on a fresh Debian machine: installs the prerequisites, builds
# autopatch, installs a real conda environment from the fixture channel, shows its programs
# failing in a NixOS-like root (only /nix and the environment, no /lib64/ld-linux), runs
# `autopatch fix` on it, and runs the programs again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash testdata/setup.sh
cargo build --release --quiet
bash testdata/nixroot/build.sh target/nixroot >/dev/null

demo=target/demo
rm -rf "$demo"
mkdir -p "$demo"
demo=$(cd "$demo" && pwd)
python3 testdata/conda/install_env.py "$demo/env" "$demo/pkgs" zstd bzip2 openssl tk libsqlite
printf 'puts "tclsh [info patchlevel] runs"\n' >"$demo/hello.tcl"

run() { bash testdata/nixroot/run.sh "$demo" -- "$@"; }
try_all() {
  run "$demo/env/bin/zstd" --version || true
  run "$demo/env/bin/openssl" version || true
  run "$demo/env/bin/tclsh8.6" "$demo/hello.tcl" || true
}

echo "== before: the environment's programs in a NixOS-like root"
try_all
echo "== autopatch fix $demo"
target/release/autopatch fix --cache-dir "$demo/cache" "$demo"
echo "== after"
try_all
