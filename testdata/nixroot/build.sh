#!/usr/bin/env bash
# Build a NixOS-like set of store paths from the host's (Debian's) libraries.
#
# Usage: build.sh OUTDIR
#
# Adds real directories to /nix/store with `nix-store --add`, laid out and
# linked like Nix-built packages: glibc in its own store path, every other
# library with a RUNPATH naming the store paths of its dependencies, and a
# small shell + coreutils whose interpreter is the store's ld-linux and, when
# the host has one to copy, a CPython with the libraries of its modules.
# Writes OUTDIR/env.sh (sourceable) with the paths; reruns are a no-op while
# env.sh is current and its store paths still exist.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

for tool in nix-store patchelf readelf flock; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: '$tool' not found (apt-get install nix-bin patchelf binutils util-linux)" >&2
        exit 77
    fi
done

HOSTLIB=/lib/x86_64-linux-gnu
HOSTLIBS="libstdc++.so.6 libgcc_s.so.1 libz.so.1 libmd.so.0 libbsd.so.0 libXau.so.6 libXdmcp.so.6
    libxcb.so.1 libX11.so.6 libpcre2-8.so.0 libselinux.so.1"
for so in $HOSTLIBS; do
    if [ ! -e "$HOSTLIB/$so" ]; then
        echo "build.sh: $HOSTLIB/$so not found (apt-get install -y libstdc++6 zlib1g libx11-6 libselinux1)" >&2
        exit 77
    fi
done

OUTDIR=$1
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# The stamp covers this script and the host packages copied, so an upgrade of
# either rebuilds.
pkg_version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }
HOSTPKGS="libc6 libstdc++6 libgcc-s1 libx11-6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 zlib1g libselinux1 libpcre2-8-0 dash coreutils"
# The libraries of CPython's extension modules (see the python3 store path below).
PYTHON_HOSTPKGS="libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libcrypt1 libtinfo6 libncursesw6 libreadline8"
PYTHON_HOSTLIBS="libssl.so.3 libcrypto.so.3 libffi.so.8 libbz2.so.1.0 liblzma.so.5 libsqlite3.so.0
    libuuid.so.1 libcrypt.so.1 libtinfo.so.6 libncursesw.so.6 libpanelw.so.6 libreadline.so.8"

# The CPython to put in the store: $NIXROOT_PYTHON_SRC, else the newest pyenv
# 3.11. It must be a --enable-shared build with its standard library in
# lib/python3.X. Without one (or without the libraries above) there is no
# python3 store path and NIXROOT_PYTHON is empty.
find_python_src() {
    local d
    if [ -n "${NIXROOT_PYTHON_SRC:-}" ]; then
        echo "$NIXROOT_PYTHON_SRC"
        return
    fi
    for d in "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/3.11.*; do
        [ -x "$d/bin/python3.11" ] && echo "$d"
    done | sort -V | tail -n 1
}
PYTHON_SRC=$(find_python_src)
# python3.X: names the interpreter, libpython and the standard library's dir.
PYTHON_LIBDIR=""
if [ -n "$PYTHON_SRC" ]; then
    for d in "$PYTHON_SRC"/lib/python3.*/os.py; do
        d=$(basename "$(dirname "$d")")
        if [ -x "$PYTHON_SRC/bin/$d" ] && [ -f "$PYTHON_SRC/lib/lib$d.so.1.0" ]; then
            PYTHON_LIBDIR=$d
        fi
    done
fi
python_src_id() {
    [ -n "$PYTHON_LIBDIR" ] || return 0
    echo "python $PYTHON_SRC"
    stat -L -c '%n %s %Y' "$PYTHON_SRC/bin/$PYTHON_LIBDIR" "$PYTHON_SRC/lib/lib$PYTHON_LIBDIR.so.1.0" 2>/dev/null || true
}
STAMP=$( { cat "$0"; for p in $HOSTPKGS $PYTHON_HOSTPKGS; do echo "$p $(pkg_version "$p")"; done; python_src_id; } | sha256sum | cut -c1-16)

# Fast path: current env.sh whose store paths all exist.
env_is_current() {
    [ -f "$OUTDIR/env.sh" ] || return 1
    (
        set +u
        # shellcheck disable=SC1091
        . "$OUTDIR/env.sh"
        [ "${NIXROOT_STAMP:-}" = "$STAMP" ] || exit 1
        for p in $NIXROOT_STORE_PATHS; do [ -d "$p" ] || exit 1; done
    )
}
if env_is_current; then
    exit 0
fi

# Serialise concurrent builders (parallel test processes share OUTDIR).
exec 9>"$OUTDIR/.lock"
flock 9
if env_is_current; then
    exit 0
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/nixroot-stage.XXXXXX")
trap 'chmod -R u+w "$STAGE" 2>/dev/null || true; rm -rf "$STAGE"' EXIT
mkdir -p "$OUTDIR/gcroots"
ALL_PATHS=""

# Upstream version from a Debian version: drop epoch, revision, repack suffix.
upstream() {
    local v
    v=$(pkg_version "$1")
    v=${v#*:}
    v=${v%-*}
    v=${v%[.+~]dfsg*}
    echo "$v"
}

is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = "177ELF" ]; }

# add_store_path NAME VAR: add $STAGE/NAME to the store, register a GC root so
# `nix-collect-garbage` keeps it, and set VAR to the store path.
add_store_path() {
    local name=$1 var=$2 path
    path=$(nix-store --add "$STAGE/$name")
    nix-store --realise "$path" --add-root "$OUTDIR/gcroots/$name" --indirect >/dev/null
    ALL_PATHS="$ALL_PATHS $path"
    printf -v "$var" '%s' "$path"
}

# lib_pkg NAME VAR RUNPATH SONAME...: a library-only store path holding the
# host copies of SONAMEs (and the files their symlinks point to), with
# RUNPATH set on every ELF as a Nix build would.
lib_pkg() {
    local name=$1 var=$2 runpath=$3 so f
    shift 3
    mkdir -p "$STAGE/$name/lib"
    for so in "$@"; do
        # cp -a keeps the soname symlink and copies the real file beside it.
        for f in "$HOSTLIB/$so" "$(readlink -f "$HOSTLIB/$so")"; do
            cp -a "$f" "$STAGE/$name/lib/"
        done
    done
    if [ -n "$runpath" ]; then
        for f in "$STAGE/$name/lib"/*; do
            if [ -f "$f" ] && [ ! -L "$f" ] && is_elf "$f"; then
                chmod u+w "$f"
                patchelf --set-rpath "$runpath" "$f"
            fi
        done
    fi
    add_store_path "$name" "$var"
}

# glibc: every shared object of Debian's libc6, unmodified (NixOS's glibc has
# no RUNPATH either; its loader finds the rest of glibc by its default path).
GLIBC_NAME=glibc-$(upstream libc6)
mkdir -p "$STAGE/$GLIBC_NAME/lib"
if command -v dpkg >/dev/null 2>&1; then
    dpkg -L libc6 | grep -E "^$HOSTLIB/[^/]+\$" | while read -r f; do
        cp -a "$f" "$STAGE/$GLIBC_NAME/lib/"
    done
else
    for f in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 \
        librt.so.1 libutil.so.1 libresolv.so.2 libanl.so.1 libnsl.so.1 libthread_db.so.1 \
        libBrokenLocale.so.1 libc_malloc_debug.so.0 libnss_compat.so.2 libnss_dns.so.2 \
        libnss_files.so.2 libnss_hesiod.so.2; do
        cp -a "$HOSTLIB/$f" "$STAGE/$GLIBC_NAME/lib/"
    done
fi
for f in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2; do
    [ -e "$STAGE/$GLIBC_NAME/lib/$f" ] || { echo "build.sh: $HOSTLIB/$f missing" >&2; exit 1; }
done
add_store_path "$GLIBC_NAME" GLIBC
G=$GLIBC/lib

lib_pkg "gcc-$(upstream libstdc++6)-lib" GCCLIB "\$ORIGIN:$G" libstdc++.so.6 libgcc_s.so.1
lib_pkg "zlib-$(upstream zlib1g)" ZLIB "$G" libz.so.1
# libX11's closure, one store path per library as in nixpkgs.
lib_pkg "libmd-$(upstream libmd0)" LIBMD "$G" libmd.so.0
lib_pkg "libbsd-$(upstream libbsd0)" LIBBSD "$LIBMD/lib:$G" libbsd.so.0
lib_pkg "libXau-$(upstream libxau6)" LIBXAU "$G" libXau.so.6
lib_pkg "libXdmcp-$(upstream libxdmcp6)" LIBXDMCP "$LIBBSD/lib:$G" libXdmcp.so.6
lib_pkg "libxcb-$(upstream libxcb1)" LIBXCB "$LIBXAU/lib:$LIBXDMCP/lib:$G" libxcb.so.1
lib_pkg "libX11-$(upstream libx11-6)" LIBX11 "$LIBXCB/lib:$G" libX11.so.6
# ls needs libselinux -> pcre2.
lib_pkg "pcre2-$(upstream libpcre2-8-0)" PCRE2 "$G" libpcre2-8.so.0
lib_pkg "libselinux-$(upstream libselinux1)" LIBSELINUX "$PCRE2/lib:$G" libselinux.so.1

# bin_pkg NAME VAR RUNPATH SRC:DEST...: executables re-linked against the store.
bin_pkg() {
    local name=$1 var=$2 runpath=$3 spec src dest
    shift 3
    mkdir -p "$STAGE/$name/bin"
    for spec in "$@"; do
        src=${spec%%:*}
        dest=$STAGE/$name/bin/${spec##*:}
        cp -L "$src" "$dest"
        chmod u+w "$dest"
        patchelf --set-interpreter "$G/ld-linux-x86-64.so.2" --set-rpath "$runpath" "$dest"
    done
    add_store_path "$name" "$var"
}
bin_pkg "dash-$(upstream dash)" DASH "$G" /usr/bin/dash:sh
# Only tools whose libraries are in the store above (cp/mv would need libacl).
COREUTILS_BINS=""
for b in ls cat true false env echo mkdir rm ln touch chmod head tail wc readlink realpath \
    dirname basename sleep stat uname id sort; do
    COREUTILS_BINS="$COREUTILS_BINS /usr/bin/$b:$b"
done
# shellcheck disable=SC2086
bin_pkg "coreutils-$(upstream coreutils)" COREUTILS "$LIBSELINUX/lib:$G" $COREUTILS_BINS

# Sanity check: the store shell and tools run with only the store loader.
if ! PATH="$COREUTILS/bin" "$DASH/bin/sh" -c 'ls / >/dev/null && stat / >/dev/null && true'; then
    echo "build.sh: the store's sh/coreutils do not run" >&2
    exit 1
fi

# A CPython in the store, laid out like nixpkgs' python3: bin/python3.X with
# the store loader and a RUNPATH reaching libpython beside it, the standard
# library (without its tests, IDLE and Tk) with bytecode that needs no
# writable store, and extension modules whose RUNPATH names the store paths of
# their libraries (one store path per Debian library package, as above).
# Copying ~50 MB and compiling the bytecode takes a while, so the store path is
# reused while the copy's inputs (the source, the dependencies, this function)
# are unchanged, even when the rest of this script changes.
build_python() {
    local src=$1 pylib=$2 name=$3 deps=$4 out f
    out=$STAGE/$name
    mkdir -p "$out/bin" "$out/lib/$pylib/site-packages"
    cp -L "$src/bin/$pylib" "$out/bin/$pylib"
    ln -s "$pylib" "$out/bin/python3"
    ln -s "$pylib" "$out/bin/python"
    cp -L "$src/lib/lib$pylib.so.1.0" "$out/lib/"
    ln -s "lib$pylib.so.1.0" "$out/lib/lib$pylib.so"
    # _tkinter needs Tcl/Tk and X11, nis libtirpc and Kerberos: left out.
    tar -C "$src/lib/$pylib" \
        --exclude=__pycache__ --exclude=test --exclude=tests --exclude=idle_test \
        --exclude=./site-packages --exclude='./config-*' --exclude=./idlelib \
        --exclude=./tkinter --exclude=./turtledemo \
        --exclude='./lib-dynload/_tkinter.*' --exclude='./lib-dynload/nis.*' \
        -cf - . | tar -C "$out/lib/$pylib" -xf -
    chmod -R u+w "$out"
    patchelf --set-interpreter "$G/ld-linux-x86-64.so.2" --set-rpath "\$ORIGIN/../lib:$G" \
        "$out/bin/$pylib"
    patchelf --set-rpath "$G" "$out/lib/lib$pylib.so.1.0"
    local needed dir rpath
    for f in "$out/lib/$pylib/lib-dynload"/*.so; do
        rpath=""
        for needed in $(patchelf --print-needed "$f"); do
            for dir in ${deps//:/ }; do
                if [ -e "$dir/$needed" ] && [[ ":$rpath" != *":$dir:"* ]]; then
                    rpath="$rpath$dir:"
                fi
            done
        done
        patchelf --set-rpath "$rpath$G" "$f"
    done
    # Bytecode checked by hash, not mtime: the store sets every mtime to 1, and
    # nothing can write a fresh __pycache__ there.
    "$out/bin/$pylib" -I -m compileall -q -j0 --invalidation-mode unchecked-hash \
        "$out/lib/$pylib" >/dev/null
}

PYTHON=""
PYTHON_HOSTLIBS_OK=1
for so in $PYTHON_HOSTLIBS; do
    [ -e "$HOSTLIB/$so" ] || PYTHON_HOSTLIBS_OK=0
done
if [ -n "$PYTHON_LIBDIR" ] && [ "$PYTHON_HOSTLIBS_OK" = 1 ]; then
    lib_pkg "openssl-$(upstream libssl3)" OPENSSL "$G" libssl.so.3 libcrypto.so.3
    lib_pkg "libffi-$(upstream libffi8)" LIBFFI "$G" libffi.so.8
    lib_pkg "bzip2-$(upstream libbz2-1.0)" BZIP2 "$G" libbz2.so.1.0
    lib_pkg "xz-$(upstream liblzma5)" XZ "$G" liblzma.so.5
    lib_pkg "sqlite-$(upstream libsqlite3-0)" SQLITE "$G" libsqlite3.so.0
    lib_pkg "libuuid-$(upstream libuuid1)" LIBUUID "$G" libuuid.so.1
    lib_pkg "libxcrypt-$(upstream libcrypt1)" LIBXCRYPT "$G" libcrypt.so.1
    lib_pkg "ncurses-$(upstream libtinfo6)" NCURSES "\$ORIGIN:$G" libtinfo.so.6 libncursesw.so.6 libpanelw.so.6
    lib_pkg "readline-$(upstream libreadline8)" READLINE "$NCURSES/lib:$G" libreadline.so.8
    PYTHON_DEPS="$OPENSSL/lib:$LIBFFI/lib:$BZIP2/lib:$XZ/lib:$SQLITE/lib:$LIBUUID/lib:$LIBXCRYPT/lib:$NCURSES/lib:$READLINE/lib:$ZLIB/lib"
    PYTHON_VERSION=$("$PYTHON_SRC/bin/$PYTHON_LIBDIR" -I -c 'import platform; print(platform.python_version())')
    PYTHON_NAME="python3-$PYTHON_VERSION"
    PYTHON_KEY=$( { declare -f build_python; echo "$PYTHON_NAME $PYTHON_DEPS $G"; python_src_id; } | sha256sum | cut -c1-16)
    if [ -f "$OUTDIR/python.cache" ]; then
        read -r cached_key cached_path <"$OUTDIR/python.cache" || true
        if [ "${cached_key:-}" = "$PYTHON_KEY" ] && [ -d "${cached_path:-/nonexistent}" ]; then
            nix-store --realise "$cached_path" --add-root "$OUTDIR/gcroots/$PYTHON_NAME" --indirect >/dev/null
            ALL_PATHS="$ALL_PATHS $cached_path"
            PYTHON=$cached_path
        fi
    fi
    if [ -z "$PYTHON" ]; then
        build_python "$PYTHON_SRC" "$PYTHON_LIBDIR" "$PYTHON_NAME" "$PYTHON_DEPS"
        add_store_path "$PYTHON_NAME" PYTHON
        echo "$PYTHON_KEY $PYTHON" >"$OUTDIR/python.cache"
    fi
    # Sanity check in a root holding only /nix, as run.sh makes it (where
    # bwrap can make one): the interpreter and the extension modules venv, pip
    # and common wheels need load from the store alone.
    in_root() {
        bwrap --ro-bind /nix /nix --proc /proc --dev /dev --tmpfs /tmp \
            --ro-bind "$G" /lib/x86_64-linux-gnu --clearenv --setenv HOME /tmp \
            --setenv PATH "$COREUTILS/bin:$DASH/bin" --chdir / -- "$@"
    }
    if command -v bwrap >/dev/null 2>&1 && in_root "$DASH/bin/sh" -c true 2>/dev/null \
        && ! in_root "$PYTHON/bin/python3" -c '
import ctypes, sqlite3, ssl, zlib, bz2, lzma, hashlib, uuid, decimal, readline, curses
import ensurepip, venv, sys
ctypes.CDLL(None)
assert sys.prefix == sys.base_prefix and sys.prefix.startswith("/nix/store/"), sys.prefix
'; then
        echo "build.sh: $PYTHON/bin/python3 does not run in a root holding only /nix" >&2
        exit 1
    fi
fi

TMPENV=$(mktemp "$OUTDIR/env.sh.XXXXXX")
cat >"$TMPENV" <<EOF
# Generated by testdata/nixroot/build.sh; source it.
export NIXROOT_STAMP='$STAMP'
export NIXROOT_GLIBC='$G'
export NIXROOT_LD='$G/ld-linux-x86-64.so.2'
export NIXROOT_GCCLIB='$GCCLIB/lib'
export NIXROOT_ZLIB='$ZLIB/lib'
export NIXROOT_X11='$LIBX11/lib'
export NIXROOT_LIBSELINUX='$LIBSELINUX/lib'
export NIXROOT_SH='$DASH/bin/sh'
export NIXROOT_COREUTILS='$COREUTILS/bin'
export NIXROOT_PATH='$COREUTILS/bin:$DASH/bin'
export NIXROOT_STORE_PATHS='${ALL_PATHS# }'
export NIXROOT_PYTHON='${PYTHON:+$PYTHON/bin/python3}'
export NIXROOT_LIBDIRS='$(for p in $ALL_PATHS; do [ -d "$p/lib" ] && printf '%s:' "$p/lib"; done | sed 's/:$//')'
EOF
chmod 644 "$TMPENV"
mv -f "$TMPENV" "$OUTDIR/env.sh"
