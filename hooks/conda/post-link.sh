#!/usr/bin/env bash
# Post-link script that patches its own package's ELF files with autopatch, so they run on
# NixOS. Ship it in a conda package as bin/.<name>-post-link.sh; conda, mamba and pixi run it
# after linking the package, with PREFIX, PKG_NAME, PKG_VERSION and PKG_BUILDNUM set.
#
# Only the files of this package are touched: those listed in its conda-meta record or, when
# the client runs post-link scripts before writing records (conda, mamba), in the package
# cache's info/files. autopatch is $AUTOPATCH, else the one on PATH; options reach it through
# the AUTOPATCH_* environment variables or its config file.
#
# It never fails the install: problems go to $PREFIX/.messages.txt, which conda shows once the
# transaction is done (the script's own output is hidden unless it fails).
set -Eeuo pipefail

warn() {
    local line="autopatch ($PKG): $*"
    printf '%s\n' "$line" >&2
    if [ -d "${PREFIX:-}" ]; then
        printf '%s\n' "$line" >>"$PREFIX/.messages.txt" 2>/dev/null || true
    fi
}

PKG=${PKG_NAME:-?}
# Whatever goes wrong (an unset variable included), the install goes on with a warning.
on_exit() {
    local rc=$?
    trap - EXIT
    if [ "$rc" != 0 ]; then
        warn "post-link step failed (status $rc); run: autopatch fix \"${PREFIX:-PREFIX}\""
    fi
    exit 0
}
trap on_exit EXIT

is_elf() {
    local LC_ALL=C magic
    [ -f "$1" ] && [ ! -L "$1" ] || return 1
    IFS= read -r -N 4 magic <"$1" 2>/dev/null || return 1
    [ "$magic" = $'\177ELF' ]
}

# The strings of the "files" array of a conda-meta record, one per line. conda, mamba and
# rattler write records indented, one string per line, which is all this reads.
record_files() {
    local line inside=0
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line#"${line%%[![:space:]]*}"}
        if [ "$inside" = 0 ]; then
            case $line in '"files": []'*) return 0 ;; '"files": ['*) inside=1 ;; esac
            continue
        fi
        case $line in ']'*) return 0 ;; esac
        line=${line%,}
        line=${line#\"}
        line=${line%\"}
        # JSON escapes (\\, \uXXXX) are printf %b's.
        case $line in *\\*) printf '%b\n' "$line" ;; *) printf '%s\n' "$line" ;; esac
    done <"$1"
    [ "$inside" = 1 ]
}

# Whether a JSON record (conda-meta, or info/index.json) is this package's build.
is_this_build() {
    grep -Eq "\"build_number\": *${PKG_BUILDNUM}[,}[:space:]]" "$1" 2>/dev/null &&
        grep -Eq "\"name\": *\"${PKG_NAME}\"" "$1"
}

# The record of this package in the prefix (a name and version can begin another's).
find_record() {
    local r
    for r in "$PREFIX/conda-meta/$PKG_NAME-$PKG_VERSION-"*.json; do
        if [ -f "$r" ] && is_this_build "$r"; then
            printf '%s\n' "$r"
            return 0
        fi
    done
    return 1
}

# The extracted package in a package cache: the one whose copy of this script is this script
# (a hard link, or the same content when the client copied it).
find_cached_files() {
    local self="$PREFIX/bin/.$PKG_NAME-post-link.sh" dirs=() d p script
    IFS=, read -r -a dirs <<<"${CONDA_PKGS_DIRS:-}"
    dirs+=("${ROOT_PREFIX:-}/pkgs" "${MAMBA_ROOT_PREFIX:-}/pkgs" "$(dirname "$(dirname "$PREFIX")")/pkgs"
        "${HOME:-/nonexistent}/.conda/pkgs")
    for d in "${dirs[@]}"; do
        for p in "$d/$PKG_NAME-$PKG_VERSION-"*; do
            script=$p/bin/.$PKG_NAME-post-link.sh
            if [ ! -f "$p/info/files" ] || [ ! -f "$script" ] || ! is_this_build "$p/info/index.json"; then
                continue
            fi
            if [ "$script" -ef "$self" ] || [ "$(<"$script")" = "$(<"$self")" ]; then
                printf '%s\n' "$p/info/files"
                return 0
            fi
        done
    done
    return 1
}

package_files() {
    local record cached
    if record=$(find_record) && record_files "$record"; then
        return 0
    fi
    if cached=$(find_cached_files); then
        cat "$cached"
        return 0
    fi
    return 1
}

main() {
    : "${PREFIX:?}" "${PKG_NAME:?}" "${PKG_VERSION:?}" "${PKG_BUILDNUM:?}"
    local autopatch=${AUTOPATCH:-}
    if [ -z "$autopatch" ]; then
        autopatch=$(command -v autopatch) || {
            warn "autopatch not found (set AUTOPATCH or put it on PATH): its programs may not run on NixOS"
            return 0
        }
    elif [ ! -x "$autopatch" ]; then
        warn "AUTOPATCH=$autopatch is not an executable: nothing patched"
        return 0
    fi

    local listing rel files=()
    if ! listing=$(package_files); then
        warn "cannot find which files belong to $PKG_NAME $PKG_VERSION: nothing patched; run: autopatch fix \"$PREFIX\""
        return 0
    fi
    while IFS= read -r rel; do
        [ -n "$rel" ] && is_elf "$PREFIX/$rel" && files+=("$PREFIX/$rel")
    done <<<"$listing"
    [ "${#files[@]}" -gt 0 ] || return 0

    local out details line
    if out=$("$autopatch" fix -- "${files[@]}" 2>&1); then
        printf '%s\n' "$out" >&2
        return 0
    fi
    # Exit 1 is an unresolved library or a file not patched: worth a warning, not a failure.
    printf '%s\n' "$out" >&2
    details=$(grep -E '^(unresolved|error|autopatch):' <<<"$out") || details=${out##*$'\n'}
    warn "not every file could be made to load on NixOS:"
    while IFS= read -r line; do warn "  $line"; done <<<"$details"
}

main "$@"
