#!/usr/bin/env bash
# Builds the seed corpus of the fuzz targets: small real ELF files of several shapes, gcc-built
# and the host's, written to fuzz/corpus/read_edit/ and fuzz/corpus/plan_write/; and
# fuzz/world/, where plan_write runs its fixes (none of it committed).
#
# Usage: fuzz/seeds.sh
# Then:  cd fuzz && cargo +nightly fuzz run TARGET corpus/TARGET -- -max_total_time=300
#        (or on stable: RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET corpus/TARGET -s none)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/corpus/read_edit
mkdir -p "$OUT" "$HERE/corpus/plan_write"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

cat >lib.c <<'EOF'
const char *greet(void) { return "hello"; }
EOF
cat >main.c <<'EOF'
#include <stdio.h>
const char *greet(void);
int main(void) { puts(greet()); return 0; }
EOF
echo 'GREET_1.0 { global: greet; local: *; };' >greet.map

# cc NAME COMPILER FLAGS [EXE_FLAGS]: a shared library built with FLAGS and a program using it
# built with FLAGS and EXE_FLAGS, both copied to the corpus.
cc() {
    local name=$1 compiler=$2 flags=$3 exe_flags=${4:-}
    command -v "$compiler" >/dev/null 2>&1 || { echo "seeds.sh: no $compiler, skipping $name" >&2; return 0; }
    # shellcheck disable=SC2086
    "$compiler" -Os -shared -fPIC -Wl,-soname,libgreet.so -Wl,--version-script=greet.map \
        -o "lib-$name.so" lib.c $flags
    ln -sf "lib-$name.so" libgreet.so
    # shellcheck disable=SC2086
    "$compiler" -Os -o "exe-$name" main.c -L. -lgreet -Wl,-rpath,'$ORIGIN' $flags $exe_flags
    cp "lib-$name.so" "exe-$name" "$OUT/"
}

cc pie gcc ""
cc nopie gcc "" -no-pie
cc noseparate gcc -Wl,-z,noseparate-code
cc rpath gcc -Wl,--disable-new-dtags
cc aarch64 aarch64-linux-gnu-gcc ""
cc s390x s390x-linux-gnu-gcc ""
if gcc -m32 -o m32-probe main.c lib.c 2>/dev/null; then
    cc i386 gcc -m32
fi

echo 'void _start(void) { for (;;) ; }' >start.c
gcc -Os -static -nostdlib -o "$OUT/exe-static" start.c
strip -o "$OUT/exe-pie-stripped" exe-pie

# Without section headers: e_shoff, e_shnum and e_shstrndx zeroed, the table cut off.
python3 - exe-pie "$OUT/exe-pie-no-shdr" <<'EOF'
import struct, sys
d = bytearray(open(sys.argv[1], "rb").read())
shoff = struct.unpack_from("<Q", d, 0x28)[0]
struct.pack_into("<Q", d, 0x28, 0)
struct.pack_into("<HH", d, 0x3c, 0, 0)
open(sys.argv[2], "wb").write(d[:shoff])
EOF

# Already grown once, so the fuzzer starts from files holding a growth region.
AUTOPATCH=${CARGO_TARGET_DIR:-$HERE/../target}/release/autopatch
if [ ! -x "$AUTOPATCH" ]; then
    cargo build --release --manifest-path "$HERE/../Cargo.toml" >&2
fi
LONG=/nix/store/$(printf 'a%.0s' {1..200})
for f in exe-pie lib-pie.so exe-nopie exe-aarch64 exe-s390x; do
    [ -e "$f" ] || continue
    cp "$f" "$OUT/$f-grown"
    "$AUTOPATCH" elf --set-rpath "$LONG/lib:\$ORIGIN" "$OUT/$f-grown"
done
cp exe-pie "$OUT/exe-pie-grown-interp"
"$AUTOPATCH" elf --set-interpreter "$LONG/ld.so" "$OUT/exe-pie-grown-interp"

# Small programs and libraries of the host, as its distribution built them.
HOST_LIB=$(dirname "$(readlink -f "$(gcc -print-file-name=libc.so.6)")")
for f in /usr/bin/true /usr/bin/env "$HOST_LIB/libz.so.1" "$HOST_LIB/libacl.so.1"; do
    if [ -e "$f" ]; then cp "$(readlink -f "$f")" "$OUT/host-$(basename "$f")"; fi
done
cp "$OUT"/* "$HERE/corpus/plan_write/"
# Inputs that once made a target fail, kept so that every run tries them again.
for dir in "$HERE"/regressions/*/; do
    corpus=$HERE/corpus/$(basename "$dir")
    mkdir -p "$corpus"
    cp "$dir"* "$corpus/"
done

# plan_write's world: a store glibc (links to the host's glibc libraries), a lib dir with links
# to the host's other libraries, and the library the gcc-built programs need, which every
# prefix gets.
WORLD=$HERE/world
rm -rf "$WORLD"
GLIBC=$WORLD/store/0123456789abcdfghijklmnpqrsvwxyz-glibc-host/lib
mkdir -p "$GLIBC" "$WORLD/lib-dir" "$WORLD/prefix-lib"
glibc='^(ld-linux.*|ld64\.so.*|lib(c|m|pthread|dl|rt|util|resolv|anl|mvec|BrokenLocale|thread_db|c_malloc_debug|nss_(files|dns|compat|db|hesiod))\.so\.[0-9]+)$'
for f in "$HOST_LIB"/*.so*; do
    name=$(basename "$f")
    if [[ $name =~ $glibc ]]; then
        ln -s "$f" "$GLIBC/$name"
    else
        ln -s "$f" "$WORLD/lib-dir/$name"
    fi
done
cp lib-pie.so "$WORLD/prefix-lib/libgreet.so"

ls -l "$OUT" >&2
