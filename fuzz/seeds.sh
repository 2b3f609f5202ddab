#!/usr/bin/env bash
# Builds the seed corpus for the read_edit fuzz target: small real ELF files of several
# shapes, written to fuzz/corpus/read_edit/ (not committed).
#
# Usage: fuzz/seeds.sh
# Then:  cd fuzz && cargo +nightly fuzz run read_edit corpus/read_edit -- -max_total_time=300
#        (or on stable: RUSTC_BOOTSTRAP=1 cargo fuzz run read_edit corpus/read_edit -s none)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/corpus/read_edit
mkdir -p "$OUT"
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
AUTOPATCH=$HERE/../target/release/autopatch
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

ls -l "$OUT" >&2
