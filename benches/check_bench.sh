#!/usr/bin/env bash
# `autopatch check` over W1 of benches/fix_bench.sh (a conda root of 40 environments and
# compiled libraries, >= 10,000 ELF paths; benches/fix_bench/workloads.py), with the store's
# loader as the interpreter (as on NixOS), in two states: unpatched, and after `autopatch fix`.
# Each is timed with the page cache warm (after an untimed run), repeated, and the median shown;
# then once more after the workload's files were evicted from the page cache, to count the bytes
# the check makes the kernel read from storage (read_bytes) against the size of the files, with
# the disk's readahead as it is and, where it can be set, off (for the one run; the kernel then
# reads only the pages the check touches): it reads only headers, dynamic and version data.
# Results: $AUTOPATCH_BENCH_DIR/check-results.tsv and check-table.md.
#
# Usage: benches/check_bench.sh
# Environment: AUTOPATCH_BENCH_SCALE, AUTOPATCH_BENCH_DIR, AUTOPATCH_BENCH_REPEAT, as for
# benches/fix_bench.sh (the generated workload is shared with it).
# Needs testdata/setup.sh's tools (nix-store, py-rattler), gcc, GNU time.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
for tool in gcc python3 /usr/bin/time nix-store; do
    command -v "$tool" >/dev/null || { echo "check_bench.sh: $tool not found" >&2; exit 1; }
done
results="check-results.tsv"
log="check-log.txt"
# shellcheck source=benches/fix_bench/common.sh
. "$here/benches/fix_bench/common.sh"
io_counter=read_bytes
store=/nix/store
# The store index `check` opens is cached here, built by the untimed first run.
export XDG_CACHE_HOME=$bench/cache-check
check=("$ap" check --store "$store" --interpreter "$NIXROOT_LD")

# check_rows STATE: an untimed run (page cache and store index warm), the timed repeats, then
# one run after the workload's files are evicted from the page cache.
check_rows() {
    local state=$1 summary
    "${check[@]}" "$root" >"$bench/check-$state.txt" || true
    summary=$(tail -n 1 "$bench/check-$state.txt")
    say "W1 $state: $summary; with problems, by directory:" \
        "$(sed -n "s|^$root/\([^/]*\)/.*|\1|p" "$bench/check-$state.txt" | sort | uniq -c | xargs)"
    for _ in $(seq "$repeat"); do
        measure W1 "check, $state" sh -c '"$@"; [ $? -le 1 ]' sh "${check[@]}" "$root"
    done
    python3 "$helpers/report.py" evict "$root"
    measure W1 "check, $state, files evicted from the page cache" \
        sh -c '"$@"; [ $? -le 1 ]' sh "${check[@]}" "$root"
    # Without readahead the kernel reads only the pages the check touches.
    if [ -w "$readahead" ]; then
        python3 "$helpers/report.py" evict "$root"
        echo 0 >"$readahead"
        measure W1 "check, $state, files evicted, readahead off" \
            sh -c '"$@"; [ $? -le 1 ]' sh "${check[@]}" "$root"
        echo "$readahead_kb" >"$readahead"
    fi
    echo "$summary" >"$bench/check-$state.summary"
}

# The readahead setting of the disk under the workload, put back however the script ends.
readahead=/sys/class/bdi/$(findmnt -n -o MAJ:MIN -T "$bench" | tr -d ' ')/read_ahead_kb
readahead_kb=$(cat "$readahead" 2>/dev/null || true)
trap '[ -z "$readahead_kb" ] || echo "$readahead_kb" >"$readahead" 2>/dev/null || true' EXIT

reset_w1
echo "$(python3 "$helpers/workloads.py" count "$root") $(du -sb "$root" | cut -f1)" >"$bench/check.count"
read -r paths inodes elf_bytes all_bytes <"$bench/check.count"
say "W1: $paths ELF paths in $inodes inodes of $((elf_bytes / 1000000)) MB;" \
    "$((all_bytes / 1000000)) MB of files in all"
check_rows unpatched
"$ap" fix --store "$store" --cache-dir "$bench/cache" --interpreter "$NIXROOT_LD" "$root" \
    >/dev/null 2>"$bench/check-fix.txt"
say "fix: $(tail -n 1 "$bench/check-fix.txt")"
check_rows patched
rm -rf "$root"

say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$helpers/report.py" check-table "$results" "$bench/check.count" | tee "$bench/check-table.md"
