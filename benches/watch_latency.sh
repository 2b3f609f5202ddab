#!/usr/bin/env bash
# Delay from an installer's exit to "fully patched" under `autopatch watch`: N conda
# environments installed with py-rattler from ../shared/fixtures/conda-forge (package cache
# inside the watched root) and N venvs filled by pip from a numpy wheel, one after the other,
# into one watched root. After each installer exits the script writes a file into the root and
# waits for the watcher's next idle report covering it (`as_of_ms` past that write): everything
# is patched then. Prints p50 and p99 per installer kind and overall.
#
# Usage: benches/watch_latency.sh [N]   (default 10; needs testdata/setup.sh's tools)
set -euo pipefail

n=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
fixtures=${AUTOPATCH_FIXTURES:-$here/../shared/fixtures}
[ -f "$fixtures/conda-forge/linux-64/repodata.json" ] || {
    echo "no conda channel at $fixtures/conda-forge (set AUTOPATCH_FIXTURES)" >&2
    exit 1
}
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bash "$here/testdata/nixroot/build.sh" "$here/target/nixroot" >/dev/null
wheels=$here/target/wheels/bench-numpy
[ -e "$wheels/.complete" ] || {
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" numpy==2.4.6
    touch "$wheels/.complete"
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

AUTOPATCH_FIXTURES=$fixtures python3 - "$here" "$work" "$wheels" "$n" <<'PY'
import json, os, statistics, subprocess, sys, threading, time

here, work, wheels, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
root = os.path.join(work, "root")
os.makedirs(root)
spec_sets = [["zstd", "tk", "openssl"], ["lz4-c", "readline", "libsqlite"],
             ["bzip2", "liblzma", "libffi", "ncurses"], ["c-ares", "libexpat", "libuuid"]]

watcher = subprocess.Popen(
    [os.path.join(here, "target/release/autopatch"), "watch", "--json",
     "--cache-dir", os.path.join(work, "cache"), root],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    env=dict(os.environ, XDG_CONFIG_HOME=os.path.join(work, "cache")))
idle = []  # (as_of_ms, seen_at)
cond = threading.Condition()

def read():
    for line in watcher.stdout:
        event = json.loads(line)
        if event["event"] == "idle":
            with cond:
                idle.append((event["as_of_ms"], time.time()))
                cond.notify_all()

threading.Thread(target=read, daemon=True).start()

def settled():
    """Seconds from now until an idle report covers a write made now."""
    time.sleep(0.002)
    start = time.time()
    with open(os.path.join(root, ".bench-sync"), "w") as f:
        f.write(str(start))
    with cond:
        while not any(as_of >= int(start * 1000) for as_of, _ in idle):
            if not cond.wait(timeout=300):
                sys.exit("no idle report within 300 s")
        return min(seen for as_of, seen in idle if as_of >= int(start * 1000))

settled()
samples = {"conda": [], "pip": []}
for i in range(n):
    env, venv = os.path.join(root, f"envs/e{i}"), os.path.join(root, f"venvs/v{i}")
    installs = {
        "conda": [sys.executable, os.path.join(here, "testdata/conda/install_env.py"),
                  env, os.path.join(root, "pkgs"), *spec_sets[i % len(spec_sets)]],
        "pip": ["sh", "-c", f"{sys.executable} -m venv {venv} && {venv}/bin/pip install -q "
                f"--disable-pip-version-check --no-index --find-links {wheels} numpy==2.4.6"],
    }
    for kind, argv in installs.items():
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        exited = time.time()
        samples[kind].append(settled() - exited)

watcher.terminate()
assert watcher.wait(timeout=120) == 0, "the watcher did not exit 0 on SIGTERM"

def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

print(f"{os.cpu_count()} cores, {n} installs of each kind into one watched root")
print(f"{'installer':<10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
for kind, values in [*samples.items(), ("all", samples["conda"] + samples["pip"])]:
    ms = [v * 1000 for v in values]
    print(f"{kind:<10}{pct(ms, 50):>10.0f}{pct(ms, 99):>10.0f}{max(ms):>10.0f}")
PY
