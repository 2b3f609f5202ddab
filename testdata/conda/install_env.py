#!/usr/bin/env python3
"""Install a real conda environment offline from the local conda-forge channel.

Usage: install_env.py PREFIX PKGS_DIR SPEC...

The channel is $AUTOPATCH_FIXTURES/conda-forge (default: ../shared/fixtures
relative to the project root). PKGS_DIR is the package cache; on the same
filesystem as PREFIX the installed files are hard links into it, as with conda.

Exit codes: 0 installed, 2 usage, 77 channel or py-rattler unavailable (skip),
1 anything else.
"""

import asyncio
import os
import sys
from pathlib import Path

SKIP = 77
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def fixtures_dir() -> Path:
    env = os.environ.get("AUTOPATCH_FIXTURES")
    if env:
        return Path(env).resolve()
    return (PROJECT_ROOT / ".." / "shared" / "fixtures").resolve()


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    prefix = Path(argv[1]).resolve()
    pkgs = Path(argv[2]).resolve()
    specs = argv[3:]

    channel = fixtures_dir() / "conda-forge"
    if not (channel / "linux-64" / "repodata.json").is_file():
        print(
            f"install_env.py: conda channel not found at {channel} "
            "(set AUTOPATCH_FIXTURES to the folder holding conda-forge/)",
            file=sys.stderr,
        )
        return SKIP
    try:
        import rattler
    except ImportError as e:
        print(
            f"install_env.py: py-rattler is not importable ({e}); pip install py-rattler",
            file=sys.stderr,
        )
        return SKIP

    def virtual(name: str, version: str):
        return rattler.GenericVirtualPackage(
            rattler.PackageName(name), rattler.Version(version), rattler.BuildString("0")
        )

    # The host's facts, fixed so the solve is the same on every machine.
    virtual_packages = [virtual("__glibc", "2.36"), virtual("__unix", "0"), virtual("__linux", "6.1")]

    async def run() -> None:
        records = await rattler.solve(
            sources=[channel.as_uri()],
            specs=specs,
            platforms=["linux-64", "noarch"],
            virtual_packages=virtual_packages,
        )
        pkgs.mkdir(parents=True, exist_ok=True)
        await rattler.install(records, target_prefix=str(prefix), cache_dir=str(pkgs))

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    # py-rattler's background threads can crash the interpreter while it
    # finalises (SIGSEGV/SIGABRT in PyGILState_Release, now and then, after
    # the install completed); skip finalisation.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
