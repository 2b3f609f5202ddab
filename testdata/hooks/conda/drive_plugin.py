#!/usr/bin/env python3
"""Calls the conda plugin's hooks the way conda does, on a real prefix and with the real
autopatch ($AUTOPATCH), where conda itself cannot be installed: conda's imports come from the
plugin's test stand-in.

Usage: drive_plugin.py ACTION PREFIX [PACKAGE...]
  post-command         the post-command hook after `conda install` into PREFIX
  doctor               the health check (doctor-verbose: with --verbose)
  doctor-fix           the health check's fixer, confirming; exits with its return value
  transaction PKG...   the post-transaction action, as if PKGs (names of packages recorded in
                       PREFIX/conda-meta) were just linked
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

PLUGIN_ROOT = Path(__file__).resolve().parents[3] / "hooks" / "conda"
sys.path[:0] = [str(PLUGIN_ROOT / "tests" / "fake_conda"), str(PLUGIN_ROOT)]

from conda.base.context import context  # noqa: E402

from conda_autopatch import plugin  # noqa: E402


def linked(prefix, names):
    """PackageRecords (name, version, build) of the named packages' conda-meta records."""
    records = []
    for name in names:
        for path in sorted((Path(prefix) / "conda-meta").glob(f"{name}-*.json")):
            data = json.loads(path.read_text())
            if data["name"] == name:
                records.append(SimpleNamespace(**{k: data[k] for k in ("name", "version", "build")}))
    return records


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    action, prefix, names = argv[1], argv[2], argv[3:]
    if action == "post-command":
        context.target_prefix = prefix
        [command] = plugin.conda_post_commands()
        command.action("install")
    elif action in ("doctor", "doctor-verbose"):
        [check] = plugin.conda_health_checks()
        check.action(prefix, action == "doctor-verbose")
    elif action == "doctor-fix":
        [check] = plugin.conda_health_checks()
        return check.fixer(prefix, SimpleNamespace(dry_run=False), lambda message: None)
    elif action == "transaction":
        [hook] = plugin.conda_post_transaction_actions()
        act = hook.action({}, prefix, [], linked(prefix, names), [], [], [])
        if act.verify() is not None:
            return 1
        act.execute()
        act.cleanup()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
