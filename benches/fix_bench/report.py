#!/usr/bin/env python3
"""Helpers of benches/fix_bench.sh and benches/check_bench.sh: autopatch's JSON plans, tables.

Usage:
  report.py pattern PLAN.json OUT.sh   the patchelf pattern for the files PLAN patches: per ELF
                                       path, serially, --set-interpreter then --set-rpath
  report.py state PLAN.json OUT.json   per ELF path: interpreter, run path and its kind, from a
                                       dry run made after patching (fails if one still needs it)
  report.py compare A.json B.json      fails unless both states are the same
  report.py plan-stats PLAN.json       ELF paths, inodes and paths to patch, inodes to patch
  report.py table RESULTS.tsv          the README table and ratios (markdown) from the results
  report.py phases LOG START END       phases of a fix from its AUTOPATCH_LOG=debug log and the
                                       epoch seconds it was started and ended at
  report.py check-table RESULTS COUNT  check_bench.sh's table (COUNT: `workloads.py count`, bytes)
  report.py evict DIR                  drops the page cache of every file under DIR
"""

import json
import os
import re
import shlex
import sys
from datetime import datetime


def load(path):
    with open(path) as f:
        return json.load(f)


def pattern(plan_file, out_file):
    plan = load(plan_file)
    lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
    for f in plan["files"]:
        if f["action"] != "patch":
            continue
        interp = f.get("new_interpreter") or f.get("old_interpreter")
        run_path = f.get("new_run_path") or f.get("old_run_path")
        # patchelf turns DT_RPATH into DT_RUNPATH unless told not to; autopatch keeps the kind,
        # so the pattern asks for the same kind to end with the same files.
        force = "--force-rpath " if f.get("run_path_kind") == "RPATH" else ""
        for name in f["names"]:
            q = shlex.quote(name)
            if f.get("old_interpreter"):
                lines.append(f"patchelf --set-interpreter {shlex.quote(interp)} {q}")
            if run_path:
                lines.append(f"patchelf {force}--set-rpath {shlex.quote(run_path)} {q}")
    with open(out_file, "w") as out:
        out.write("\n".join(lines) + "\n")


def state(plan_file, out_file):
    plan = load(plan_file)
    result, pending = {}, []
    for f in plan["files"]:
        if f["action"] == "patch":
            pending.append(f["path"])
        for name in f["names"]:
            result[name] = [f.get("old_interpreter"), f.get("old_run_path"),
                            f.get("run_path_kind")]
    with open(out_file, "w") as out:
        json.dump(result, out, sort_keys=True)
    if pending:
        sys.exit(f"{len(pending)} files still need patching, e.g. {pending[:3]}")


def compare(a_file, b_file):
    a, b = load(a_file), load(b_file)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        for k in diff[:10]:
            print(f"{k}: {a.get(k)} != {b.get(k)}", file=sys.stderr)
        sys.exit(f"{len(diff)} of {len(a)} ELF paths differ")
    print(f"identical interpreter and run path on all {len(a)} ELF paths")


def plan_stats(plan_file):
    files = load(plan_file)["files"]
    patch = [f for f in files if f["action"] == "patch"]
    print(sum(len(f["names"]) for f in files), len(files),
          sum(len(f["names"]) for f in patch), len(patch))


def medians(results_file):
    """The runs of each (workload, run) as (wall, user+sys, peak RSS, I/O bytes), in the order
    first seen, and the median of each by wall time."""
    runs = {}
    with open(results_file) as f:
        for line in f:
            workload, tool, wall, user, sys_, rss, io = line.rstrip("\n").split("\t")
            runs.setdefault((workload, tool), []).append(
                (float(wall), float(user) + float(sys_), int(rss), int(io)))
    return runs, {k: sorted(v)[(len(v) - 1) // 2] for k, v in runs.items()}


def spread(runs):
    """The range of the walls of repeated runs, for beside their median."""
    return f" ({min(runs)[0]:.2f}–{max(runs)[0]:.2f})" if len(runs) > 1 else ""


def check_table(results_file, count_file):
    """The README's table of check_bench.sh: per run, the files checked (from the summary line
    check printed, in STATE.summary beside the results), the median wall, user+sys, peak RSS,
    files per second and the bytes read from storage; then the size of the files checked.
    COUNT holds `workloads.py count` and the bytes of all files under the root."""
    runs, median = medians(results_file)
    base = results_file.rsplit("/", 1)[0]
    with open(count_file) as f:
        elf_bytes, all_bytes = map(int, f.read().split()[2:4])
    print("| run | files | wall | user+sys | peak RSS | files/s | read from storage |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (workload, run), v in runs.items():
        state = run.split(", ")[1]
        with open(f"{base}/check-{state}.summary") as f:
            files = int(re.search(r"checked (\d+) files", f.read()).group(1))
        wall, cpu, rss, read = median[(workload, run)]
        print(f"| {run} | {files:,} | {wall:.2f} s{spread(v)} | {cpu:.2f} s "
              f"| {rss / 1024:.0f} MB | {files / wall:,.0f} | {read / 1e6:.0f} MB |")
    print()
    print(f"The files under the root: {all_bytes / 1e6:,.0f} MB, of which ELF files "
          f"{elf_bytes / 1e6:,.0f} MB.")


def evict(root):
    """Drops the page cache of every regular file under ROOT (posix_fadvise DONTNEED)."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def table(results_file):
    """One line per (workload, run), the median run of those repeated (its wall, user+sys,
    peak RSS and bytes written; the range of the walls beside), then the ratios the targets
    are stated in, between medians. Stats of each workload (ELF paths, inodes, to patch) are
    read from WORKLOAD.stats beside the results."""
    runs, median = medians(results_file)
    print("| workload | run | wall | user+sys | peak RSS | bytes written |")
    print("|---|---|---:|---:|---:|---:|")
    for (w, t), v in runs.items():
        wall, cpu, rss, written = median[(w, t)]
        print(f"| {w} | {t} | {wall:.2f} s{spread(v)} | {cpu:.2f} s | {rss / 1024:.0f} MB "
              f"| {written / 1e6:.0f} MB |")
    print()
    base = results_file.rsplit("/", 1)[0]
    for w in dict.fromkeys(w for w, _ in runs):
        if (w, "autopatch fix") not in median:
            continue
        wall = lambda run: median.get((w, run), (0.0,))[0]
        ours, ours_cpu = median[(w, "autopatch fix")][:2]
        pe, pe_sync = wall("patchelf pattern"), wall("sync after the patchelf pattern")
        cp, cp_sync = wall("cp -a"), wall("sync after cp -a")
        pe_cpu = median.get((w, "patchelf pattern"), (0.0, 0.0))[1]
        parts = [f"patchelf pattern / autopatch: {pe / ours:.1f}x wall "
                 f"({(pe + pe_sync) / ours:.1f}x with its sync), "
                 f"{pe_cpu / max(ours_cpu, 1e-9):.1f}x user+sys",
                 f"autopatch / cp -a: {ours / cp:.1f}x wall "
                 f"({ours / (cp + cp_sync):.1f}x against cp -a and its sync)"]
        try:
            with open(f"{base}/{w}.stats") as f:
                paths = int(f.read().split()[0])
            noop = wall("autopatch fix, no-op rerun")
            parts.append(f"no-op rerun: {noop * 10_000 / paths:.2f} s per 10,000 ELF paths")
        except OSError:
            pass
        print(f"- {w}: " + "; ".join(parts))


def phases(log_file, start, end):
    """The phase times `fix` logs at debug level ("<phase>: <seconds> s"), and the rest of the
    wall time (start-up, the store index, printing)."""
    start, end = float(start), float(end)
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    timed = re.compile(r"autopatch::fix: (.+): ([0-9.]+) s$")
    rows = []
    with open(log_file) as f:
        for line in f:
            match = timed.search(ansi.sub("", line).rstrip())
            if match:
                rows.append((match.group(1), float(match.group(2))))
    if not rows:
        sys.exit("phases: the log has no phase times")
    total = end - start
    # "a / b" is part b of phase a, whose parts run side by side: only a counts in the sum.
    phases = [(label, secs) for label, secs in rows if " / " not in label]
    phases.append(("start-up, store index, output", total - sum(secs for _, secs in phases)))
    for phase, secs in phases:
        print(f"- {phase}: {secs:.2f} s ({100 * secs / total:.0f}%)")
        for label, part in rows:
            if label.startswith(phase + " / "):
                print(f"  - {label[len(phase) + 3:]}: {part:.2f} s ({100 * part / total:.0f}%)")
    print(f"- total: {total:.2f} s")


def main(argv):
    cmds = {"pattern": (pattern, 2), "state": (state, 2), "compare": (compare, 2),
            "plan-stats": (plan_stats, 1), "table": (table, 1), "phases": (phases, 3),
            "check-table": (check_table, 2), "evict": (evict, 1)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) != 2 + cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    cmds[argv[1]][0](*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
