#!/usr/bin/env bash
# Run a command in a NixOS-like root: only /nix (read-only), the given
# prefixes (read-write, at their own paths), /proc, /dev and an empty /tmp.
#
# Usage: run.sh [OPTIONS] PREFIX... -- CMD [ARG...]
#        run.sh [OPTIONS] --ldd PREFIX... -- FILE
#
# Options:
#   --ldd          list FILE's libraries as the store loader resolves them at
#                  run time (ldd's way: LD_TRACE_LOADED_OBJECTS=1 $NIXROOT_LD FILE;
#                  missing ones show as "=> not found") instead of running CMD
#   --env K=V      set K=V inside the root (repeatable; the host environment is
#                  not passed through)
#   --ro PATH      also bind PATH read-only at the same path (repeatable)
#   --bin-sh       add /bin/sh and /usr/bin/env, the two host paths NixOS has
#
# The store paths come from $NIXROOT_DIR/env.sh (default: <project>/target/nixroot),
# built by build.sh if missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NIXROOT_DIR=${NIXROOT_DIR:-$(cd "$HERE/../.." && pwd)/target/nixroot}

usage() {
    sed -n '5,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

LDD=0
BIN_SH=0
PREFIXES=()
EXTRA=()
SETENV=()
while [ $# -gt 0 ]; do
    case $1 in
        --) shift; break ;;
        --ldd) LDD=1; shift ;;
        --bin-sh) BIN_SH=1; shift ;;
        --env)
            [ $# -ge 2 ] && [[ $2 == *=* ]] || usage
            SETENV+=(--setenv "${2%%=*}" "${2#*=}"); shift 2 ;;
        --ro)
            [ $# -ge 2 ] || usage
            EXTRA+=(--ro-bind "$(realpath "$2")" "$(realpath "$2")"); shift 2 ;;
        -h|--help) usage ;;
        -*) echo "run.sh: unknown option $1" >&2; usage ;;
        *) PREFIXES+=("$(realpath "$1")"); shift ;;
    esac
done
[ $# -ge 1 ] || usage
if [ "$LDD" = 1 ] && [ $# -ne 1 ]; then
    echo "run.sh: --ldd takes exactly one FILE" >&2
    exit 2
fi

if ! command -v bwrap >/dev/null 2>&1; then
    echo "run.sh: bwrap not found (apt-get install bubblewrap)" >&2
    exit 77
fi
# Build (or rebuild, e.g. after a store GC) only when needed: build.sh's own
# check costs a hash of itself per call.
if [ -f "$NIXROOT_DIR/env.sh" ]; then
    # shellcheck disable=SC1091
    . "$NIXROOT_DIR/env.sh"
fi
if [ ! -x "${NIXROOT_LD:-/nonexistent}" ] || [ ! -x "${NIXROOT_SH:-/nonexistent}" ]; then
    "$HERE/build.sh" "$NIXROOT_DIR" >&2
    # shellcheck disable=SC1091
    . "$NIXROOT_DIR/env.sh"
fi

ARGS=(
    --ro-bind /nix /nix
    --proc /proc
    --dev /dev
    --tmpfs /tmp
    # NixOS's ld.so searches its own glibc lib dir by default; the host ld.so
    # searches /lib/x86_64-linux-gnu (see `ld.so --help`), so the store glibc
    # goes there. /lib64 is left out: the FHS interpreter path must not exist.
    --ro-bind "$NIXROOT_GLIBC" /lib/x86_64-linux-gnu
    --unshare-pid --unshare-ipc --unshare-uts
    --die-with-parent
    --clearenv
    --setenv PATH "$NIXROOT_PATH"
    --setenv HOME /tmp
    --setenv TMPDIR /tmp
    --setenv LC_ALL C
)
if [ "$BIN_SH" = 1 ]; then
    ARGS+=(--symlink "$NIXROOT_SH" /bin/sh --symlink "$NIXROOT_COREUTILS/env" /usr/bin/env)
fi
# Prefixes come after the /tmp tmpfs so ones under /tmp stay visible.
for p in "${PREFIXES[@]}"; do
    ARGS+=(--bind "$p" "$p")
done
ARGS+=("${EXTRA[@]}" "${SETENV[@]}")
if [ ${#PREFIXES[@]} -gt 0 ]; then
    ARGS+=(--chdir "${PREFIXES[0]}")
else
    ARGS+=(--chdir /)
fi

if [ "$LDD" = 1 ]; then
    # Not `ld.so --list`: glibc 2.36's aborts at the first missing library,
    # while trace mode reports every one.
    exec bwrap "${ARGS[@]}" --setenv LD_TRACE_LOADED_OBJECTS 1 -- "$NIXROOT_LD" "$1"
fi
exec bwrap "${ARGS[@]}" -- "$@"
