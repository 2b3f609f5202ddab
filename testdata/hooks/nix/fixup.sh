#!/usr/bin/env bash
# Runs a setup hook as a stdenv build would on outputs already installed: the hook as a native
# build input, the build inputs handed to it, then fixupPhase (stdenv.sh beside this script).
#
# Environment: outputs and a variable per output, buildInputs, the hook's own variables;
# HOOK (default: hooks/nix/setup-hook.sh of this project); PRELUDE, bash evaluated first (for
# arrays, as __structuredAttrs gives them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testdata/hooks/nix/stdenv.sh
source "$here/stdenv.sh"
eval "${PRELUDE:-}"
activateNativeHook "${HOOK:-$here/../../../hooks/nix/setup-hook.sh}"
# shellcheck disable=SC2086 # a list of store paths, as stdenv receives it
activateBuildInputs ${buildInputs:-}
fixupPhase
