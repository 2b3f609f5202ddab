"""The plugin inside real conda: `conda create --offline` from the local channel patches the
new environment, and `conda doctor` runs the check. Skipped, saying why, where there is no
conda with plugin support, no channel or no autopatch."""

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from .helpers import PACKAGE_ROOT, write_dist_info

PROJECT_ROOT = PACKAGE_ROOT.parent.parent
# The Python that has conda: $AUTOPATCH_CONDA_PYTHON, else this one.
CONDA_PYTHON = os.environ.get("AUTOPATCH_CONDA_PYTHON") or sys.executable


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONDA_PREFIX")}
    env.update(extra)
    return env


def conda_missing():
    """Why conda cannot run the plugin, or None."""
    probe = subprocess.run(
        [CONDA_PYTHON, "-c", "import conda.cli.main; from conda.plugins import CondaPostCommand"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["?"])[-1]
    return (
        f"conda with plugin support is not importable by {CONDA_PYTHON} ({last}); "
        "PyPI has no usable conda: set AUTOPATCH_CONDA_PYTHON to the python of a conda "
        "installation (conda >= 23.7) to run this test"
    )


def channel():
    base = os.environ.get("AUTOPATCH_FIXTURES") or str(PROJECT_ROOT.parent / "shared" / "fixtures")
    path = Path(base) / "conda-forge"
    return path if (path / "linux-64" / "repodata.json").is_file() else None


def autopatch():
    found = os.environ.get("AUTOPATCH") or shutil.which("autopatch")
    if found:
        return found
    built = PROJECT_ROOT / "target" / "release" / "autopatch"
    return str(built) if built.is_file() else None


def elf_interpreter(path):
    """PT_INTERP of a 64-bit little-endian ELF file."""
    data = Path(path).read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:
            off, = struct.unpack_from("<Q", data, phoff + i * phentsize + 8)
            size, = struct.unpack_from("<Q", data, phoff + i * phentsize + 32)
            return data[off : off + size].rstrip(b"\0").decode()
    return None


class RealConda(unittest.TestCase):
    def setUp(self):
        why = conda_missing()
        if why:
            self.skipTest(why)
        self.channel = channel()
        if self.channel is None:
            self.skipTest("the fixture channel is absent (set AUTOPATCH_FIXTURES)")
        self.autopatch = autopatch()
        if self.autopatch is None:
            self.skipTest("no autopatch binary (set AUTOPATCH or cargo build --release)")
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        write_dist_info(self.tmp / "site")
        (self.tmp / "condarc").write_text("")
        self.env = clean_env(
            PYTHONPATH=f"{PACKAGE_ROOT}:{self.tmp / 'site'}",
            AUTOPATCH=self.autopatch,
            AUTOPATCH_CACHE_DIR=str(self.tmp / "cache"),
            CONDARC=str(self.tmp / "condarc"),
            CONDA_PKGS_DIRS=str(self.tmp / "pkgs"),
            XDG_CONFIG_HOME=str(self.tmp / "config"),
        )

    def conda(self, *args):
        return subprocess.run(
            [CONDA_PYTHON, "-m", "conda", *args], capture_output=True, text=True, env=self.env
        )

    def test_create_patches_the_new_environment_and_doctor_checks_it(self):
        prefix = self.tmp / "env"
        created = self.conda(
            "create", "--offline", "--yes", "--override-channels",
            "-c", self.channel.as_uri(), "-p", str(prefix), "zstd",
        )
        self.assertEqual(created.returncode, 0, created.stdout + created.stderr)
        self.assertIn(f"autopatch: {prefix}:", created.stdout)
        interpreter = elf_interpreter(prefix / "bin" / "zstd")
        self.assertNotEqual(interpreter, "/lib64/ld-linux-x86-64.so.2")
        self.assertTrue(interpreter.startswith("/nix/store/"), interpreter)

        doctor = self.conda("doctor", "-p", str(prefix))
        self.assertEqual(doctor.returncode, 0, doctor.stdout + doctor.stderr)
        self.assertIn("binaries", doctor.stdout)
