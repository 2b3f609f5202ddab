# shellcheck shell=bash
# Setup hook: after fixup, patch the ELF files of every output but `debug` with autopatch, so
# prebuilt binaries load with the Nix glibc and find their libraries.
#
# A drop-in for autoPatchelfHook: the libraries of the build inputs (`$dep/lib`) are searched
# first, and its variables keep their meaning: runtimeDependencies, appendRunpaths,
# autoPatchelfIgnoreMissingDeps, dontAutoPatchelf, autoPatchelfFlags (--ignore-missing=NAME is
# honoured; --keep-libc and --preserve-origin are what autopatch does anyway), as do
# addAutoPatchelfSearchPath and autoPatchelf. The interpreter is $NIX_BINTOOLS's dynamic
# linker. An unresolved library is a warning, not a failed build.
#
# autopatch is $AUTOPATCH, else the one on PATH (the hook's package propagates it); options
# also reach it through the AUTOPATCH_* variables.

# Global: stdenv sources setup hooks from inside a function.
declare -ag autopatchLibDirs=()

autopatchGatherLibraries() {
    if [ -d "$1/lib" ]; then
        autopatchLibDirs+=("$1/lib")
    fi
}
# Called with each dependency of the host platform, as autoPatchelfHook gathers them.
# shellcheck disable=SC2154 # targetOffset is set by stdenv while it sources this hook
addEnvHooks "$targetOffset" autopatchGatherLibraries

# addAutopatchSearchPath [--no-recurse] [--] DIR...: also search the directories under DIRs
# that hold shared objects.
addAutopatchSearchPath() {
    local -a findOpts=()
    while [ $# -gt 0 ]; do
        case $1 in
            --) shift; break ;;
            --no-recurse) shift; findOpts+=(-maxdepth 1) ;;
            --*) echo "addAutopatchSearchPath: invalid argument: $1" >&2; return 1 ;;
            *) break ;;
        esac
    done
    local dir
    while IFS= read -r -d '' dir; do
        autopatchLibDirs+=("$dir")
    done < <(find "$@" "${findOpts[@]}" ! -type d \( -name '*.so' -o -name '*.so.*' \) \
        -printf '%h\0' | sort -zu)
}

# The words of variable $1: its elements if it is an array (structured attrs), else its value
# split at whitespace, never globbed. Sets _autopatchWords.
_autopatchWordsOf() {
    _autopatchWords=()
    if [[ "$(declare -p "$1" 2>/dev/null)" =~ ^declare\ -[[:alpha:]]*a ]]; then
        eval "_autopatchWords=(\${$1[@]+\"\${$1[@]}\"})"
    elif [ -n "${!1-}" ]; then
        read -r -d '' -a _autopatchWords <<<"${!1}" || true
    fi
}

_autopatchIsElf() {
    local LC_ALL=C magic
    [ -f "$1" ] && [ ! -L "$1" ] || return 1
    IFS= read -r -N 4 magic <"$1" 2>/dev/null || return 1
    [ "$magic" = $'\177ELF' ]
}

# The autopatch fix options from the hook's variables.
_autopatchFixArgs() {
    local linker='' dir word pending=''
    _autopatchArgs=(--store "${AUTOPATCH_STORE:-${NIX_STORE:-/nix/store}}")
    if [ -z "${AUTOPATCH_INTERPRETER-}" ] && [ -f "${NIX_BINTOOLS-}/nix-support/dynamic-linker" ]; then
        read -r linker <"$NIX_BINTOOLS/nix-support/dynamic-linker" || [ -n "$linker" ]
        _autopatchArgs+=(--interpreter "$linker")
    fi
    for dir in ${autopatchLibDirs[@]+"${autopatchLibDirs[@]}"}; do
        _autopatchArgs+=(--lib-dir "$dir")
    done
    _autopatchWordsOf autoPatchelfIgnoreMissingDeps
    # `autoPatchelfIgnoreMissingDeps = true;` arrives as 1: everything may stay missing.
    if [ "${_autopatchWords[*]-}" = 1 ]; then
        _autopatchWords=('*')
    fi
    for word in ${_autopatchWords[@]+"${_autopatchWords[@]}"}; do
        _autopatchArgs+=(--ignore-missing "$word")
    done
    _autopatchWordsOf autoPatchelfFlags
    for word in ${_autopatchWords[@]+"${_autopatchWords[@]}"}; do
        case $word in
            --ignore-missing=*) _autopatchArgs+=(--ignore-missing "${word#*=}"); pending= ;;
            --ignore-missing) pending=1 ;;
            --keep-libc | --preserve-origin) pending= ;;
            -*) echo "autopatch: ignoring autoPatchelfFlags entry $word" >&2; pending= ;;
            *)
                if [ -n "$pending" ]; then
                    _autopatchArgs+=(--ignore-missing "$word")
                else
                    echo "autopatch: ignoring autoPatchelfFlags entry $word" >&2
                fi
                ;;
        esac
    done
}

# runtimeDependencies' lib dirs go into every executable's run path, appendRunpaths into every
# dynamic ELF file's, needed or not (for dlopen), after what autopatch added.
_autopatchAddRunpaths() {
    local bin=$1 file dir line current missing interpreter dynamic
    shift
    local -a runtime=() append=() want
    _autopatchWordsOf runtimeDependencies
    for dir in ${_autopatchWords[@]+"${_autopatchWords[@]}"}; do
        runtime+=("$dir/lib")
    done
    _autopatchWordsOf appendRunpaths
    append=(${_autopatchWords[@]+"${_autopatchWords[@]}"})
    if [ "${#runtime[@]}" = 0 ] && [ "${#append[@]}" = 0 ]; then
        return 0
    fi
    while IFS= read -r -d '' file; do
        _autopatchIsElf "$file" || continue
        current='' interpreter='' dynamic=''
        while IFS= read -r line; do
            case $line in
                'interpreter: '*) interpreter=${line#*: }; dynamic=1 ;;
                'RUNPATH: '* | 'RPATH: '*) current=${line#*: }; dynamic=1 ;;
                'needed: '*) dynamic=1 ;;
            esac
        done < <("$bin" elf --print-info "$file" 2>/dev/null || true)
        # Static programs and object files have no run path to extend.
        [ -n "$dynamic" ] || continue
        want=(${append[@]+"${append[@]}"})
        if [ -n "$interpreter" ]; then
            want=(${runtime[@]+"${runtime[@]}"} ${want[@]+"${want[@]}"})
        fi
        missing=
        for dir in ${want[@]+"${want[@]}"}; do
            case ":$current:$missing:" in
                *":$dir:"*) ;;
                *) missing+=${missing:+:}$dir ;;
            esac
        done
        if [ -n "$missing" ] && ! "$bin" elf --add-rpath "$missing" "$file"; then
            echo "autopatch: WARNING: could not add $missing to the run path of $file" >&2
        fi
    done < <(find "$@" -type f -print0)
}

# autopatchPaths PATH...: patch the ELF files under the PATHs.
autopatchPaths() {
    local bin=${AUTOPATCH:-}
    if [ -z "$bin" ] && ! bin=$(command -v autopatch); then
        echo "autopatch: WARNING: no autopatch (\$AUTOPATCH unset, none on PATH): nothing patched" >&2
        return 0
    fi
    _autopatchFixArgs
    echo "autopatch: patching $*" >&2
    # HOME is not writable in a build: the store index cache goes to the build's TMPDIR.
    if ! AUTOPATCH_CACHE_DIR=${AUTOPATCH_CACHE_DIR:-${TMPDIR:-/tmp}/autopatch-cache} \
        "$bin" fix "${_autopatchArgs[@]}" -- "$@"; then
        echo "autopatch: WARNING: some files could not be fully patched (see above); the build goes on" >&2
    fi
    _autopatchAddRunpaths "$bin" "$@"
}

autopatchPostFixup() {
    if [ -n "${dontAutoPatchelf-}" ]; then
        return 0
    fi
    local output names
    local -a paths=()
    if declare -F getAllOutputNames >/dev/null; then
        names=$(getAllOutputNames)
    else
        names=${outputs:-out}
    fi
    for output in $names; do
        if [ "$output" != debug ] && [ -e "${!output-}" ]; then
            paths+=("${!output}")
        fi
    done
    if [ "${#paths[@]}" -gt 0 ]; then
        autopatchPaths "${paths[@]}"
    fi
}

# autoPatchelfHook's entry points, for builds that call them, unless it is there too.
if ! declare -F addAutoPatchelfSearchPath >/dev/null; then
    addAutoPatchelfSearchPath() { addAutopatchSearchPath "$@"; }
fi
if ! declare -F autoPatchelf >/dev/null; then
    autoPatchelf() {
        while [ $# -gt 0 ]; do
            case $1 in
                --) shift; break ;;
                --no-recurse) shift ;; # autopatch always walks directories
                *) break ;;
            esac
        done
        autopatchPaths "$@"
    }
fi

# After fixupOutputHooks, not among them: patchelf's --shrink-rpath runs there and would drop
# the runtime dependencies, which no file names as needed.
postFixupHooks+=(autopatchPostFixup)
