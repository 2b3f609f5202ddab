#!/usr/bin/env bash
# `autopatch fix` against autoPatchelfHook's pattern (patchelf --set-interpreter, then
# --set-rpath, per ELF path, serially) and against `cp -a` of the same files (the copy floor),
# on generated, reproducible workloads (benches/fix_bench/workloads.py):
#   W1  a conda root: one pkgs cache, 40 envs installed from ../shared/fixtures/conda-forge (hard
#       links into the cache, as installers make them) and compiled shared libraries of 4 KiB to
#       200 MB (most linked into several envs from fake packages in the cache): >= 10,000 ELF
#       paths;
#   W2  the same tree with every hard link broken: as many ELF files, no shared inode;
#   G   every compiled library once, outside any prefix (libz and most often libX11 then come
#       from the store): every file must grow and nothing is shared;
#   W3  a synthetic Nix store of 50,000 store paths and 500,000 files, for the soname index.
# Every run gets a fresh copy of its workload at the same path (conda wrote absolute paths into
# some files), with the page cache warm and nothing dirty (sync first). The patchelf pattern is
# given the run path autopatch computed for each file (from `fix --dry-run --json`), and both
# results are compared path by path. Results: $AUTOPATCH_BENCH_DIR/results.tsv and table.md.
#
# Usage: benches/fix_bench.sh
# Environment:
#   AUTOPATCH_BENCH_SCALE    workload size, 1 = the sizes above (0.1 for a quick look)
#   AUTOPATCH_BENCH_DIR      where workloads and results go (default target/bench); generated
#                            workloads are kept there and reused while the generator is unchanged
#   AUTOPATCH_BENCH_REPEAT   runs of each compared command (default 3; the median is shown)
#   AUTOPATCH_BENCH_PROFILE  0 skips the profiles of the W1 run (perf, strace)
# Needs testdata/setup.sh's tools (patchelf, nix-store, py-rattler), gcc, GNU time; perf
# (linux-perf) and strace for the profile.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
profile=${AUTOPATCH_BENCH_PROFILE:-1}
for tool in gcc patchelf python3 /usr/bin/time nix-store; do
    command -v "$tool" >/dev/null || { echo "fix_bench.sh: $tool not found" >&2; exit 1; }
done
results="results.tsv"
log="log.txt"
# shellcheck source=benches/fix_bench/common.sh
. "$here/benches/fix_bench/common.sh"
store=/nix/store
cache=$bench/cache
fix=("$ap" fix --store "$store" --cache-dir "$cache" --interpreter "$NIXROOT_LD")

if [ "$(cat "$pristine/w3.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "generating W3"
    rm -rf "$pristine/w3"
    python3 "$helpers/workloads.py" w3 "$pristine/w3" "$scale"
    echo "$stamp" >"$pristine/w3.stamp"
fi
grow=$run/grow
# cp without --preserve=links gives every name its own inode.
reset_w2() { rm -rf "$root" "$run/copy"; cp -R --preserve=mode,ownership,timestamps "$pristine/w1" "$root"; }
reset_g() { rm -rf "$grow" "$run/copy"; cp -a "$pristine/grow" "$grow"; }

# then_sync WORKLOAD RUN DIR: the flush of what the run just measured left dirty in memory
# (autopatch flushes its writes itself; patchelf and cp do not).
then_sync() {
    presync=0 measure "$1" "$2" sync -f "$3"
}

# bench_tree WORKLOAD RESET DIR: the rows of one workload. The three compared runs are
# repeated (the table shows the median), interleaved so that a slow spell of the machine hits
# them alike; the results of the first are compared path by path.
bench_tree() {
    local w=$1 reset=$2 dir=$3 rep
    $reset
    "${fix[@]}" --dry-run --json "$dir" >"$bench/$w.plan.json"
    python3 "$helpers/report.py" plan-stats "$bench/$w.plan.json" >"$bench/$w.stats"
    read -r paths inodes patch_paths patch_inodes <"$bench/$w.stats"
    say "$w: $paths ELF paths in $inodes inodes; $patch_paths paths in $patch_inodes inodes to patch;" \
        "$(du -sh "$dir" | cut -f1) on disk"
    python3 "$helpers/report.py" pattern "$bench/$w.plan.json" "$bench/$w.patchelf.sh"

    for rep in $(seq "$repeat"); do
        $reset
        measure "$w" "patchelf pattern" bash "$bench/$w.patchelf.sh"
        then_sync "$w" "sync after the patchelf pattern" "$dir"
        if [ "$rep" = 1 ]; then
            "${fix[@]}" --dry-run --json "$dir" >"$bench/$w.after-patchelf.json"
            python3 "$helpers/report.py" state "$bench/$w.after-patchelf.json" "$bench/$w.state-patchelf.json"
        fi

        $reset
        measure "$w" "autopatch fix" "${fix[@]}" "$dir"
        if [ "$rep" = 1 ]; then
            "${fix[@]}" --dry-run --json "$dir" >"$bench/$w.after-autopatch.json"
            python3 "$helpers/report.py" state "$bench/$w.after-autopatch.json" "$bench/$w.state-autopatch.json"
            python3 "$helpers/report.py" compare "$bench/$w.state-patchelf.json" "$bench/$w.state-autopatch.json" \
                | tee -a "$log" >&2
        fi
        measure "$w" "autopatch fix, no-op rerun" "${fix[@]}" "$dir"

        $reset
        measure "$w" "cp -a" cp -a "$dir" "$run/copy"
        then_sync "$w" "sync after cp -a" "$run/copy"
        rm -rf "$run/copy"
    done

    $reset
    measure "$w" "autopatch fix --dry-run (scan, plan)" "${fix[@]}" --dry-run "$dir"
    measure "$w" "autopatch fix --no-verify" "${fix[@]}" --no-verify "$dir"
}

bench_tree W1 reset_w1 "$root"
bench_tree W2 reset_w2 "$root"
bench_tree G reset_g "$grow"

# W3: the store index, cold (no cache file) and warm, through a fix of an empty directory.
mkdir -p "$run/empty"
rm -rf "$bench/cache-w3"
say "W3: $(find "$pristine/w3/store" -mindepth 1 -maxdepth 1 | wc -l) store paths," \
    "$(find "$pristine/w3/store" -type f | wc -l) files"
w3fix=("$ap" fix --dry-run --store "$pristine/w3/store" --cache-dir "$bench/cache-w3"
    --interpreter "$NIXROOT_LD" "$run/empty")
measure W3 "store index, cold build" "${w3fix[@]}"
measure W3 "store index, warm load" "${w3fix[@]}"
if [ -w /proc/sys/vm/drop_caches ]; then
    rm -rf "$bench/cache-w3"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    measure W3 "store index, cold build, page cache dropped" "${w3fix[@]}"
fi

# Where the time goes: the phase times fix logs at debug level, and a CPU profile.
reset_w1
sync
start=$(date +%s.%N)
AUTOPATCH_LOG=autopatch::fix=debug,autopatch::store=debug "${fix[@]}" "$root" >/dev/null 2>"$bench/W1.debug.log"
end=$(date +%s.%N)
python3 "$helpers/report.py" phases "$bench/W1.debug.log" "$start" "$end" | tee -a "$log" >&2
if [ "$profile" = 1 ] && command -v perf >/dev/null; then
    reset_w1
    sync
    perf record -q -F 499 --call-graph dwarf,8192 -o "$bench/perf.data" -- \
        "${fix[@]}" "$root" >/dev/null 2>&1
    # Into files first: head closing the pipe early would fail the script.
    perf report -i "$bench/perf.data" --no-children --sort dso,symbol --stdio -g none \
        >"$bench/profile-self.full.txt" 2>/dev/null
    perf report -i "$bench/perf.data" --children --sort symbol --stdio -g none \
        >"$bench/profile-children.full.txt" 2>/dev/null
    grep -v -e '^#' -e '^$' "$bench/profile-self.full.txt" | sed -n 1,40p >"$bench/profile-self.txt"
    grep -v -e '^#' -e '^$' "$bench/profile-children.full.txt" | sed -n 1,80p >"$bench/profile-children.txt"
    say "profile: $bench/profile-self.txt, $bench/profile-children.txt"
fi
# Where the wall time goes off the CPU: time spent in each system call (strace slows the run,
# so only the shares mean something).
if [ "$profile" = 1 ] && command -v strace >/dev/null; then
    reset_w1
    sync
    strace -f -c -w -o "$bench/syscalls.txt" "${fix[@]}" "$root" >/dev/null 2>&1
    say "system calls: $bench/syscalls.txt"
fi
rm -rf "$root" "$grow" "$run/copy"

say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$helpers/report.py" table "$results" | tee "$bench/table.md"
df -h "$bench" | tail -1 >&2
