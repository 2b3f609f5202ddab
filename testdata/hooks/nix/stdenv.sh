# shellcheck shell=bash disable=SC2034,SC2154 # arrays read by indirection; set by the caller
# The parts of nixpkgs' stdenv (pkgs/stdenv/generic/setup.sh) a setup hook meets, to run one
# outside nixpkgs: the environment-hook arrays and addEnvHooks, runHook with implicit hooks,
# getAllOutputNames, activating dependencies (a native build input's setup hook is sourced at
# host offset -1, target offset 0; each build input is handed to envHostTargetHooks, as with
# strictDeps), and fixupPhase, whose fixupOutputHooks shrink run paths as patchelf's setup
# hook does there.

pkgBuildHookVars=(envBuildBuildHook envBuildHostHook envBuildTargetHook)
pkgHostHookVars=(envHostHostHook envHostTargetHook)
pkgTargetHookVars=(envTargetTargetHook)
pkgHookVarVars=(pkgBuildHookVars pkgHostHookVars pkgTargetHookVars)
envBuildBuildHooks=() envBuildHostHooks=() envBuildTargetHooks=()
envHostHostHooks=() envHostTargetHooks=() envTargetTargetHooks=()
preFixupHooks=() fixupOutputHooks=() postFixupHooks=()

addEnvHooks() {
    local depHostOffset="$1"
    shift
    local pkgHookVarsSlice="${pkgHookVarVars[$depHostOffset + 1]}[@]"
    local pkgHookVar
    for pkgHookVar in "${!pkgHookVarsSlice}"; do
        eval "${pkgHookVar}s"'+=("$@")'
    done
}

_eval() {
    if declare -F "$1" >/dev/null 2>&1; then
        "$@"
    else
        eval "$1"
    fi
}

# A hook named by a variable or function of the same name (postFixup="...").
_callImplicitHook() {
    local def="$1" hookName="$2"
    if declare -F "$hookName" >/dev/null; then
        "$hookName"
    elif [ -n "${!hookName:-}" ]; then
        eval "${!hookName}"
    else
        return "$def"
    fi
}

runHook() {
    local hookName="$1"
    shift
    local hooksSlice="${hookName%Hook}Hooks[@]"
    local hook
    for hook in "_callImplicitHook 0 $hookName" ${!hooksSlice+"${!hooksSlice}"}; do
        _eval "$hook" "$@"
    done
    return 0
}

getAllOutputNames() {
    echo "$outputs"
}

activateNativeHook() {
    # shellcheck disable=SC2034 # read by the hook being sourced
    local hostOffset=-1 targetOffset=0
    # shellcheck disable=SC1090
    source "$1"
}

activateBuildInputs() {
    local pkg
    for pkg in "$@"; do
        runHook envHostTargetHook "$pkg"
    done
}

isELF() {
    local LC_ALL=C magic
    IFS= read -r -N 4 magic <"$1" 2>/dev/null || return 1
    [ "$magic" = $'\177ELF' ]
}

# patchelf's setup hook: drop run path entries that no needed library is in. autopatch elf
# takes patchelf's flags, for builds without patchelf.
patchELF() {
    local dir="$1" file
    [ -e "$dir" ] || return 0
    echo "shrinking RPATHs of ELF executables and libraries in $dir" >&2
    while IFS= read -r -d '' file; do
        isELF "$file" || continue
        if command -v patchelf >/dev/null; then
            patchelf --shrink-rpath "$file" || true
        else
            "$AUTOPATCH" elf --shrink-rpath "$file" || true
        fi
    done < <(find "$dir" -type f -print0)
}
# shellcheck disable=SC2016 # evaluated later, by runHook
fixupOutputHooks+=('if [ -z "${dontPatchELF-}" ]; then patchELF "$prefix"; fi')

fixupPhase() {
    local output
    for output in $(getAllOutputNames); do
        if [ -e "${!output}" ]; then
            chmod -R u+w "${!output}"
        fi
    done
    runHook preFixup
    for output in $(getAllOutputNames); do
        prefix="${!output}" runHook fixupOutput
    done
    runHook postFixup
}
