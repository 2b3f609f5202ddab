# Sourced by benches/fix_bench.sh and benches/check_bench.sh, with `here` (the work tree),
# `results` and `log` set: the settings, a copy of the binary, the NixOS-like store, W1 and G,
# and `measure`.
# shellcheck shell=bash

scale=${AUTOPATCH_BENCH_SCALE:-1}
bench=${AUTOPATCH_BENCH_DIR:-$here/target/bench}
repeat=${AUTOPATCH_BENCH_REPEAT:-3}
helpers=$here/benches/fix_bench

mkdir -p "$bench"
bench=$(cd "$bench" && pwd)
pristine=$bench/pristine
run=$bench/run
results=$bench/$results
log=$bench/$log
mkdir -p "$pristine" "$run" "$bench/bin"
: >"$results"
: >"$log"
say() { echo "$*" | tee -a "$log" >&2; }

# A copy of the binary: a rebuild in the work tree during the run must not change what runs.
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
ap=$bench/bin/autopatch
cp "${CARGO_TARGET_DIR:-$here/target}/release/autopatch" "$ap"
bash "$here/testdata/nixroot/build.sh" "$here/target/nixroot" >/dev/null
# shellcheck disable=SC1091
. "$here/target/nixroot/env.sh"

say "machine: $(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GiB, $(uname -r)," \
    "$(df -T "$bench" | awk 'NR == 2 {print $2}') at $bench; load average at start:" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
say "scale $scale, $repeat runs of each compared command"

# W1 and G, generated once per generator version and scale.
stamp="$(sha256sum <"$helpers/workloads.py" | cut -c1-16)-$scale"
if [ "$(cat "$pristine/w1.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "generating W1 and G"
    rm -rf "$pristine/w1" "$pristine/grow" "$run/root"
    # Installed where the runs take place: conda writes the prefix into some files.
    python3 "$helpers/workloads.py" w1 "$run/root" "$scale"
    mv "$run/root" "$pristine/w1"
    python3 "$helpers/workloads.py" grow "$pristine/w1" "$pristine/grow"
    echo "$stamp" >"$pristine/w1.stamp"
fi
root=$run/root
reset_w1() { rm -rf "$root" "$run/copy"; cp -a "$pristine/w1" "$root"; }

# measure WORKLOAD RUN CMD...: one row of results: wall, user, sys (s), peak RSS (KiB) and the
# `io_counter` of /proc/PID/io (default write_bytes: bytes written to storage) of the shell
# around CMD, which counts its reaped children. Dirty pages are flushed first, so that a run
# pays only for its own writes; presync=0 leaves them, to time the flush of what the run before
# left.
presync=1
io_counter=write_bytes
measure() {
    local workload=$1 what=$2
    shift 2
    [ "$presync" = 0 ] || sync
    # shellcheck disable=SC2016 # expanded by the inner shell: its pid, its arguments
    /usr/bin/time -f '%e	%U	%S	%M' -o "$bench/time.txt" bash -c \
        'c=$1; shift; "$@" >/dev/null 2>>"$0.err"; s=$?
         awk -v c="$c:" "\$1 == c {print \$2}" /proc/$$/io >"$0"; exit $s' \
        "$bench/io.txt" "$io_counter" "$@"
    printf '%s\t%s\t%s\t%s\n' "$workload" "$what" "$(cat "$bench/time.txt")" \
        "$(cat "$bench/io.txt")" >>"$results"
    say "$workload, $what: $(cut -f1-4 <<<"$(cat "$bench/time.txt")") (wall user sys KiB)"
}
