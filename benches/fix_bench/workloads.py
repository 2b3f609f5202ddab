#!/usr/bin/env python3
"""Generates the workloads of benches/fix_bench.sh, reproducibly (fixed seeds).

Usage:
  workloads.py w1 ROOT SCALE     conda root ROOT: a shared pkgs cache, 40*SCALE envs installed
                                 from the fixture channel, and compiled libraries
  workloads.py grow W1ROOT DIR   one copy of every compiled library of W1 (DIR/*/lib/...)
  workloads.py w3 DIR SCALE      synthetic Nix store DIR/store: 50,000*SCALE store paths,
                                 500,000*SCALE files
  workloads.py count ROOT        prints: ELF paths, ELF inodes, bytes of the ELF inodes

Needs gcc, the host's libX11.so.6 and libz.so.1 (linked against, so the libraries name them
in DT_NEEDED), and what testdata/conda/install_env.py needs.
"""

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
HOSTLIB = Path("/lib/x86_64-linux-gnu")
MB = 1 << 20

# The fixture channel's packages that install something, for varied environment specs.
SPECS = ["zstd", "tk", "openssl", "libsqlite", "readline", "bzip2", "lz4-c", "liblzma",
         "libffi", "ncurses", "c-ares", "libexpat", "libuuid", "libnsl", "libxcrypt",
         "libgomp", "libstdcxx-ng", "libzlib", "ca-certificates"]

# Libraries built in place in a few environments (a user's own build, not from a package):
# one name each, sizes up to 200 MB, at SCALE 1.
LOCAL_SIZES_MB = [200, 100, 50, 24, 12, 6, 3, 1]
# Packages of compiled libraries in the cache, each linked into several environments.
FAKE_PACKAGES = 10
PACKAGES_PER_ENV = 2
TARGET_ELF_PATHS = 10_000


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def elf_files(root: Path):
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink() and is_elf(p):
                yield p


def count(root: Path) -> None:
    paths, inodes = 0, {}
    for p in elf_files(root):
        st = p.stat()
        paths += 1
        inodes[(st.st_dev, st.st_ino)] = st.st_size
    print(paths, len(inodes), sum(inodes.values()))


def compile_lib(out: Path, ident: str, size: int, needs: list, soname: str) -> None:
    """A shared library with DT_RPATH $ORIGIN/. (as conda-forge's), the given DT_NEEDED, some
    functions, and a read-only blob making it about `size` bytes."""
    blob = max(size - 16384, 16)
    src = [f"const unsigned char bench_blob_{ident}[{blob}] __attribute__((used)) = {{1}};"]
    src += [f"int bench_fn_{ident}_{j}(int x) {{ return x * {j + 3} + {len(ident)}; }}"
            for j in range(20)]
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write("\n".join(src) + "\n")
        c_file = f.name
    try:
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), c_file,
             f"-Wl,-soname,{soname}", "-Wl,-rpath,$ORIGIN/.", "-Wl,--disable-new-dtags",
             "-Wl,--no-as-needed", *map(str, needs)],
            check=True)
    finally:
        os.unlink(c_file)


def install_envs(root: Path, n_envs: int) -> None:
    pkgs = root / "pkgs"
    for i in range(n_envs):
        env = root / "envs" / f"e{i:02d}"
        if (env / "conda-meta").is_dir():
            continue
        rng = random.Random(i)
        specs = rng.sample(SPECS, rng.randint(3, 9))
        # Some specs pull in libzlib, some not: the compiled libraries' libz.so.1 then comes
        # from the prefix or from the store.
        subprocess.run([sys.executable, str(PROJECT / "testdata/conda/install_env.py"),
                        str(env), str(pkgs), *specs], check=True, stdout=subprocess.DEVNULL)


def w1(root: Path, scale: float) -> None:
    n_envs = max(1, round(40 * scale))
    install_envs(root, n_envs)
    envs = sorted((root / "envs").iterdir())
    conda_paths = sum(1 for _ in elf_files(root))

    n_pkgs = min(FAKE_PACKAGES, n_envs)
    per_env = min(PACKAGES_PER_ENV, n_pkgs)
    links = [sorted({(i + 4 * j) % n_pkgs for j in range(per_env)}) for i in range(n_envs)]
    names_per_lib = 1 + sum(len(l) for l in links) / n_pkgs  # cache name + env names
    local = [max(1, round(s * scale * MB)) for s in LOCAL_SIZES_MB]
    target = math.ceil(TARGET_ELF_PATHS * scale)
    per_pkg = max(2, math.ceil((target - conda_paths - len(local)) / (n_pkgs * names_per_lib)))

    x11, libz = HOSTLIB / "libX11.so.6", HOSTLIB / "libz.so.1"
    jobs = []
    for k in range(n_pkgs):
        pkg = root / "pkgs" / f"benchlib{k}-1.0-0"
        (pkg / "lib").mkdir(parents=True, exist_ok=True)
        (pkg / "info").mkdir(exist_ok=True)
        rng = random.Random(1000 + k)
        files = []
        chain = []
        for m in range(per_pkg):
            soname = f"libbench{k}_{m}.so.1"
            path = pkg / "lib" / soname
            # Sizes log-uniform 4 KiB..256 KiB; three in four need libX11 (from the store, so
            # their run path grows), all need libz and the previous library of the package.
            size = int(math.exp(rng.uniform(math.log(4096), math.log(256 * 1024))))
            needs = [libz] + ([x11] if m % 4 != 3 else []) + chain[-1:]
            jobs.append((path, f"p{k}_{m}", size, needs, soname))
            chain = [path]
            files.append(f"lib/{soname}")
        (pkg / "info" / "index.json").write_text(json.dumps(
            {"name": f"benchlib{k}", "version": "1.0", "build": "0", "build_number": 0,
             "depends": [], "subdir": "linux-64"}))
        (pkg / "info" / "files").write_text("\n".join(files) + "\n")
    # Within a package each library links the one before it: build packages in parallel,
    # libraries of one package in order.
    by_pkg = {}
    for job in jobs:
        by_pkg.setdefault(job[0].parent.parent, []).append(job)

    def build(pkg_jobs):
        for path, ident, size, needs, soname in pkg_jobs:
            if not path.exists():
                compile_lib(path, ident, size, needs, soname)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(build, by_pkg.values()))

    for i, env in enumerate(envs):
        for k in links[i]:
            pkg = root / "pkgs" / f"benchlib{k}-1.0-0"
            for lib in sorted((pkg / "lib").iterdir()):
                dst = env / "lib" / lib.name
                if not dst.exists():
                    os.link(lib, dst)
    big_jobs = []
    for j, size in enumerate(local):
        env = envs[j % len(envs)]
        path = env / "lib" / f"liblocal{j}.so"
        if not path.exists():
            big_jobs.append((path, f"l{j}", size, [libz, x11], path.name))
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: compile_lib(*job), big_jobs))


def grow(w1_root: Path, out: Path) -> None:
    """Every compiled library once, nothing shared, outside any prefix: libz (and for most
    libX11) then come from the store, so every file's run path grows."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(w1_root.glob("pkgs/benchlib*/lib")) + sorted(w1_root.glob("envs/*/lib")):
        for lib in sorted(src.iterdir()):
            if not (lib.name.startswith("libbench") or lib.name.startswith("liblocal")):
                continue
            if src.parent.parent.name == "envs" and lib.name.startswith("libbench"):
                continue
            dst = out / src.parent.name / "lib" / lib.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dst)


NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


def fake_hash(rng: random.Random) -> str:
    return "".join(rng.choice(NIX_BASE32) for _ in range(32))


def w3(out: Path, scale: float) -> None:
    """A store of store paths like nixpkgs': most hold only small non-ELF files (docs, scripts,
    headers); three in ten have a lib/ with shared objects (hard links of a pool of distinct
    libraries, with sonames matching their file names), dev symlinks and pkg-config files."""
    store = out / "store"
    pool = out / "pool"
    n_paths = max(10, round(50_000 * scale))
    files_target = 10 * n_paths
    rng = random.Random(3)
    pool.mkdir(parents=True, exist_ok=True)
    n_sonames = max(10, n_paths // 10)
    # One template library, its soname and glibc path patched per copy (same length).
    template = out / "template.so"
    glibc_hash = "0" * 32
    placeholder = "libw3placeholder0000000.so.1"
    if not template.exists():
        with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
            f.write("int w3_fn(int x) { return x + 1; }\n")
            c_file = f.name
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-s", "-nostdlib", "-o", str(template),
                        c_file, f"-Wl,-soname,{placeholder}",
                        f"-Wl,-rpath,/nix/store/{glibc_hash}-glibc-2.40-66/lib"], check=True)
        os.unlink(c_file)
    data = template.read_bytes()
    sonames = []
    for s in range(n_sonames):
        soname = f"libw3_{s:017d}.so.1"
        assert len(soname) == len(placeholder)
        sonames.append(soname)
        p = pool / soname
        if not p.exists():
            p.write_bytes(data.replace(placeholder.encode(), soname.encode()))
    store.mkdir(parents=True, exist_ok=True)
    made = 0
    glibcs = []
    for g in range(3):
        name = f"{fake_hash(rng)}-glibc-2.{38 + g}-{g}"
        glibcs.append(name)
        lib = store / name / "lib"
        lib.mkdir(parents=True, exist_ok=True)
        for so in ["ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6"]:
            dst = lib / so
            if not dst.exists():
                shutil.copy(HOSTLIB / so, dst)
            made += 1
    words = ["zlib", "openssl", "libx", "qt", "gtk", "python3", "perl", "curl", "glib", "icu",
             "boost", "llvm", "ffmpeg", "mesa", "pango", "cairo", "harfbuzz", "sqlite"]
    for i in range(n_paths - len(glibcs)):
        left = n_paths - len(glibcs) - i
        name = f"{fake_hash(rng)}-{rng.choice(words)}{i}-{rng.randint(0, 9)}.{rng.randint(0, 30)}"
        sp = store / name
        # Spread the remaining files over the remaining paths.
        n_files = max(1, round((files_target - made) / left + rng.uniform(-3, 3)))
        has_lib = rng.random() < 0.3
        made += n_files
        if has_lib:
            lib = sp / "lib"
            (lib / "pkgconfig").mkdir(parents=True, exist_ok=True)
            k = min(n_files, rng.randint(1, 4))
            for _ in range(k):
                soname = rng.choice(sonames)
                dst = lib / soname
                if not dst.exists():
                    os.link(pool / soname, dst)
                dev = lib / soname.rsplit(".", 1)[0]
                if not dev.is_symlink():
                    dev.symlink_to(soname)
            if rng.random() < 0.5:
                (sp / "lib64").symlink_to("lib")
            n_files -= k
            if n_files > 0:
                (lib / "pkgconfig" / f"{name[33:]}.pc").write_text("Name: x\nVersion: 1\n")
                n_files -= 1
        other = sp / "share" / "doc"
        other.mkdir(parents=True, exist_ok=True)
        for j in range(n_files):
            (other / f"f{j}.txt").write_text(f"{name} {j}\n")


def main(argv: list) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "w1":
        w1(Path(argv[2]), float(argv[3]))
    elif cmd == "grow":
        grow(Path(argv[2]), Path(argv[3]))
    elif cmd == "w3":
        w3(Path(argv[2]), float(argv[3]))
    elif cmd == "count":
        count(Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
