"""Shared pieces of the plugin's unit tests: the stand-in conda, a scripted fake autopatch, and
conda prefixes with records."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
FAKE_CONDA = HERE / "fake_conda"
PACKAGE_ROOT = HERE.parent


def use_fake_conda():
    """Puts the stand-in conda first on sys.path (once)."""
    if str(FAKE_CONDA) not in sys.path:
        sys.path.insert(0, str(FAKE_CONDA))
    for name in [m for m in sys.modules if m == "conda" or m.startswith("conda.")]:
        if not getattr(sys.modules[name], "__file__", "").startswith(str(FAKE_CONDA)):
            del sys.modules[name]


def load_plugin(*, post_transaction=True, health_fixers=True):
    """Imports conda_autopatch.plugin afresh against a stand-in conda with or without the
    newer plugin types."""
    use_fake_conda()
    # A fresh import each time: reload would keep names a previous variant defined.
    for name in ("conda.plugins", "conda_autopatch.plugin"):
        sys.modules.pop(name, None)
    plugins = importlib.import_module("conda.plugins")
    if not post_transaction:
        del plugins.CondaPostTransactionAction
    if not health_fixers:

        class CondaHealthCheck:  # conda 23.x: (name, action) only
            def __init__(self, name, action):
                self.name, self.action = name, action

        plugins.CondaHealthCheck = CondaHealthCheck
    return importlib.import_module("conda_autopatch.plugin")


FAKE_AUTOPATCH = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AUTOPATCH_LOG"], "a") as log:
    env = {k: v for k, v in os.environ.items() if k.startswith("AUTOPATCH_")}
    log.write(json.dumps({"argv": args, "env": env}) + "\n")
with open(os.environ["FAKE_AUTOPATCH_REPLY"]) as f:
    reply = json.load(f).get(args[0] if args else "", {})
sys.stdout.write(reply.get("stdout", ""))
sys.stderr.write(reply.get("stderr", ""))
sys.exit(reply.get("exit", 0))
'''


class FakeAutopatch:
    """An `autopatch` executable that logs its arguments and AUTOPATCH_* environment and
    answers each subcommand as told."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.bin = directory / "autopatch"
        self.bin.write_text(f"#!{sys.executable}\n{FAKE_AUTOPATCH}")
        self.bin.chmod(0o755)
        self.log = directory / "log.jsonl"
        self.reply_file = directory / "reply.json"
        self.replies = {}
        self.reply_file.write_text("{}")

    def reply(self, command, report=None, exit=0, stdout=None, stderr=""):
        text = stdout if stdout is not None else json.dumps(report if report is not None else {})
        self.replies[command] = {"stdout": text, "exit": exit, "stderr": stderr}
        self.reply_file.write_text(json.dumps(self.replies))

    def env(self):
        return {
            "FAKE_AUTOPATCH_LOG": str(self.log),
            "FAKE_AUTOPATCH_REPLY": str(self.reply_file),
        }

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def fix_report(patched=0, fine=0, unresolved=None, errors=0, dry_run=False):
    """What `autopatch fix --json` prints, reduced to what the plugin reads."""
    unresolved = unresolved or {}
    return {
        "dry_run": dry_run,
        "interpreter": "/nix/store/x-glibc/lib/ld-linux-x86-64.so.2",
        "summary": {
            "scanned_entries": patched + fine,
            "elf_files": patched + fine,
            "patched": patched,
            "already_fine": fine,
            "skipped": 0,
            "unresolved": len({f for fs in unresolved.values() for f in fs}),
            "errors": errors,
            "bytes_written": 0,
        },
        "unresolved": unresolved,
        "files": [],
    }


def check_report(ok_files=(), broken=None):
    """What `autopatch check --json` prints: broken maps a path to its problem messages."""
    broken = broken or {}
    files = [{"path": p, "ok": True, "problems": []} for p in ok_files]
    files += [
        {"path": p, "ok": False, "problems": [{"kind": "missing", "message": m} for m in msgs]}
        for p, msgs in broken.items()
    ]
    return {
        "files": files,
        "summary": {"checked": len(files), "ok": len(ok_files), "with_problems": len(broken)},
    }


ELF_BYTES = b"\x7fELF\x02\x01\x01" + b"\0" * 57


def make_prefix(root: Path, packages: dict) -> Path:
    """A conda prefix: for each (name, version, build) -> {relative path: bytes}, the files and
    a conda-meta record listing them."""
    prefix = root / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    for (name, version, build), files in packages.items():
        for rel, data in files.items():
            path = prefix / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        record = {"name": name, "version": version, "build": build, "files": sorted(files)}
        (prefix / "conda-meta" / f"{name}-{version}-{build}.json").write_text(
            json.dumps(record, indent=2)
        )
    return prefix


def prec(name, version, build):
    """A PackageRecord as far as the plugin uses one."""
    return SimpleNamespace(name=name, version=version, build=build)


class EnvTestCase(unittest.TestCase):
    """A temp dir, a fake autopatch as $AUTOPATCH, and os.environ restored afterwards."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        for key in [k for k in os.environ if k.startswith("AUTOPATCH")]:
            del os.environ[key]
        bindir = self.tmp / "bin"
        bindir.mkdir()
        self.fake = FakeAutopatch(bindir)
        os.environ.update(self.fake.env())
        os.environ["AUTOPATCH"] = str(self.fake.bin)


def write_dist_info(dest: Path) -> Path:
    """Registers the plugin's entry point for Python processes that have DEST and the package
    root on sys.path, as `pip install` would, from pyproject.toml (needs Python 3.11+)."""
    import tomllib

    project = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())["project"]
    info = dest / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return info
