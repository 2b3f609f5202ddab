#!/usr/bin/env bash
# Builds the prebuilt binaries the Nix hook's tests patch, with the host's compiler, the way
# vendors ship them: the FHS interpreter and no run path.
#
# Usage: prebuilt.sh DIR   (DIR is created), giving
#   DIR/greet/lib/libgreet.so     a library only a dependency provides
#   DIR/extra/lib/libextra.so     one that is only ever dlopen'ed (a runtime dependency)
#   DIR/app/bin/hello             needs libgreet; `hello --dlopen` also dlopens libextra
#   DIR/app/bin/needs-missing     needs libmissing.so, which nothing provides
#   DIR/app/lib/libuse.so         a library of the package itself, needing libgreet
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
mkdir -p "$dir/greet/lib" "$dir/extra/lib" "$dir/app/bin" "$dir/app/lib" "$dir/build"
cd "$dir/build"

cat >greet.c <<'EOF'
const char *greeting(void) { return "hello from libgreet"; }
EOF
cat >extra.c <<'EOF'
const char *extra(void) { return "libextra loaded"; }
EOF
cat >missing.c <<'EOF'
int missing(void) { return 0; }
EOF
cat >use.c <<'EOF'
const char *greeting(void);
const char *use(void) { return greeting(); }
EOF
cat >hello.c <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
const char *greeting(void);
int main(int argc, char **argv) {
    puts(greeting());
    if (argc > 1 && strcmp(argv[1], "--dlopen") == 0) {
        void *h = dlopen("libextra.so", RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        const char *(*extra)(void) = (const char *(*)(void))dlsym(h, "extra");
        puts(extra());
    }
    return 0;
}
EOF
cat >needs-missing.c <<'EOF'
int missing(void);
int main(void) { return missing(); }
EOF

cc -shared -fPIC -Wl,-soname,libgreet.so greet.c -o "$dir/greet/lib/libgreet.so"
cc -shared -fPIC -Wl,-soname,libextra.so extra.c -o "$dir/extra/lib/libextra.so"
cc -shared -fPIC -Wl,-soname,libmissing.so missing.c -o libmissing.so
cc -shared -fPIC use.c -o "$dir/app/lib/libuse.so" -L"$dir/greet/lib" -lgreet
cc hello.c -o "$dir/app/bin/hello" -L"$dir/greet/lib" -lgreet -ldl
cc needs-missing.c -o "$dir/app/bin/needs-missing" -L. -lmissing
cd "$dir"
rm -rf "$dir/build"
