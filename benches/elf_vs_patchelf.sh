#!/usr/bin/env bash
# Wall time of `autopatch elf` against patchelf on a ~100 MB shared library, for an interpreter
# and run path edit that fits in place and one that grows the file; prints autopatch/patchelf.
# Uses hyperfine when installed (apt-get install hyperfine), else a timing loop.
#
# Usage: benches/elf_vs_patchelf.sh [RUNS]
set -euo pipefail

RUNS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$ROOT/target/bench-elf
LIB=$DIR/big.so
WORK=$DIR/work-sh.so
for tool in gcc patchelf python3; do
    command -v "$tool" >/dev/null || { echo "elf_vs_patchelf.sh: $tool not found" >&2; exit 1; }
done

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
AUTOPATCH=$ROOT/target/release/autopatch

# The same library benches/elf.rs builds and caches.
if [ ! -e "$LIB" ]; then
    mkdir -p "$DIR"
    cat >"$DIR/big.c" <<'EOF'
const char interp[] __attribute__((section(".interp"))) = "/lib64/ld-linux-x86-64.so.2";
const char big[100 << 20] = {1};
const char *data(void) { return big; }
EOF
    gcc -shared -fPIC -o "$LIB.tmp" "$DIR/big.c" \
        -Wl,-rpath,/opt/original/run/path/of/a/library/that/is/long/enough
    mv "$LIB.tmp" "$LIB"
fi

FITS_I=/nix/store/glibc/lib/ld.so
FITS_R=/nix/store/env/lib
GROW_I=/nix/store/$(printf 'g%.0s' {1..200})-glibc-2.40/lib/ld-linux-x86-64.so.2
GROW_R=/nix/store/$(printf 'r%.0s' {1..700})-env/lib

# cmd TOOL CASE: the edit command.
cmd() {
    local interp rpath
    if [ "$2" = fits ]; then interp=$FITS_I rpath=$FITS_R; else interp=$GROW_I rpath=$GROW_R; fi
    case $1 in
        autopatch) echo "$AUTOPATCH elf --set-interpreter $interp --set-rpath $rpath $WORK" ;;
        patchelf) echo "patchelf --set-interpreter $interp --set-rpath $rpath $WORK" ;;
    esac
}

# mean_seconds TOOL CASE: mean wall time of the edit over RUNS fresh copies.
mean_seconds() {
    local command
    command=$(cmd "$1" "$2")
    if command -v hyperfine >/dev/null; then
        hyperfine --runs "$RUNS" --warmup 1 --prepare "cp $LIB $WORK" \
            --export-json "$DIR/$1-$2.json" --style none "$command" >/dev/null
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' \
            "$DIR/$1-$2.json"
    else
        local total=0 start end
        for _ in $(seq "$RUNS"); do
            cp "$LIB" "$WORK"
            start=$(date +%s%N)
            $command
            end=$(date +%s%N)
            total=$((total + end - start))
        done
        python3 -c 'import sys; print(int(sys.argv[1]) / int(sys.argv[2]) / 1e9)' "$total" "$RUNS"
    fi
}

printf '%-6s %14s %14s %10s\n' edit autopatch_s patchelf_s ratio
for case in fits grows; do
    a=$(mean_seconds autopatch "$case")
    p=$(mean_seconds patchelf "$case")
    python3 -c 'import sys; a, p = float(sys.argv[2]), float(sys.argv[3]); print(f"{sys.argv[1]:<6} {a:14.4f} {p:14.4f} {a / p:10.2f}")' \
        "$case" "$a" "$p"
done
rm -f "$WORK"
