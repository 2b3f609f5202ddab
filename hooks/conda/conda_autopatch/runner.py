"""Running the autopatch binary for the conda plugin: finding it, calling `fix` and `check`,
and turning their JSON into short messages.

Nothing here raises for a failed or missing autopatch: conda hooks must never break the
command they run after, so every failure comes back as a warning to print.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

ELF_MAGIC = b"\x7fELF"
# Sonames listed per unresolved library in a warning before "and N more".
MAX_LISTED = 3


def find_autopatch() -> Optional[str]:
    """`$AUTOPATCH` if set, else `autopatch` on PATH."""
    explicit = os.environ.get("AUTOPATCH")
    if explicit:
        return explicit
    return shutil.which("autopatch")


@dataclass
class Run:
    """One autopatch invocation: its exit code, parsed JSON (if any) and stderr."""

    returncode: Optional[int]
    report: Optional[dict]
    stderr: str
    # Why there is no usable report (autopatch missing, crashed, printed no JSON).
    error: Optional[str] = None
    warnings: list = field(default_factory=list)


def run_json(args: list) -> Run:
    """Runs `autopatch ARGS... --json`; options come from the AUTOPATCH_* environment
    variables and autopatch's config file, which it reads itself."""
    binary = find_autopatch()
    if binary is None:
        return Run(None, None, "", "autopatch not found (set AUTOPATCH or put it on PATH)")
    try:
        proc = subprocess.run(
            [binary, *args[:1], "--json", *args[1:]],
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
    except OSError as e:
        return Run(None, None, "", f"cannot run {binary}: {e}")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        # Exit 2 is a usage error, anything else a crash: either way no report.
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return Run(
            proc.returncode, None, proc.stderr, f"autopatch exited {proc.returncode}: {tail[0]}"
        )
    return Run(proc.returncode, report if isinstance(report, dict) else None, proc.stderr)


# ---------------------------------------------------------------------------
# fix
# ---------------------------------------------------------------------------


def fix(paths: Iterable[str]) -> Run:
    """`autopatch fix --json PATHS...`, with warnings for what stays unresolved."""
    paths = [str(p) for p in paths]
    result = run_json(["fix", "--", *paths])
    if result.report is not None:
        result.warnings = unresolved_warnings(result.report)
        if result.returncode not in (0, None) and not result.warnings:
            errors = result.report.get("summary", {}).get("errors", 0)
            result.warnings.append(
                f"{errors} file(s) could not be patched; run `autopatch fix {' '.join(paths)}` "
                "to see why"
            )
    return result


def unresolved_warnings(report: dict) -> list:
    """One line per library nothing provides, naming (some of) the files that need it."""
    lines = []
    for soname, files in sorted((report.get("unresolved") or {}).items()):
        names = [str(f) for f in files[:MAX_LISTED]]
        more = len(files) - len(names)
        needed_by = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        lines.append(
            f"{soname} not found (needed by {needed_by}); add a directory that has it to "
            f"AUTOPATCH_LIB_DIR, or accept it with AUTOPATCH_IGNORE_MISSING='{soname}'"
        )
    return lines


def fix_summary(report: dict, where: str) -> str:
    """One line: what `autopatch fix` did."""
    s = report.get("summary", {})
    verb = "would patch" if report.get("dry_run") else "patched"
    text = (
        f"autopatch: {where}: {s.get('patched', 0)} {verb}, "
        f"{s.get('already_fine', 0)} already fine"
    )
    if s.get("unresolved"):
        text += f", {s['unresolved']} with unresolved libraries"
    if s.get("errors"):
        text += f", {s['errors']} errors"
    return text


def patch(paths: Iterable[str], where: str, say) -> bool:
    """Patches PATHS, says a one-line summary and any warnings through `say(line)`; True when
    everything was resolved and patched. Never raises."""
    try:
        result = fix(paths)
    except Exception as e:  # a hook must not break conda, whatever happens
        say(f"autopatch: warning: {where}: {e}")
        return False
    if result.report is None:
        say(f"autopatch: warning: {where}: nothing patched: {result.error}")
        return False
    say(fix_summary(result.report, where))
    for line in result.warnings:
        say(f"autopatch: warning: {line}")
    return result.returncode == 0


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------


@dataclass
class Broken:
    path: str
    problems: list


def broken_files(prefix: str) -> tuple:
    """`autopatch check --json PREFIX`: (files that will not load, files checked), or
    (None, error) when the check could not run."""
    result = run_json(["check", "--", str(prefix)])
    if result.report is None:
        return None, result.error
    files = result.report.get("files") or []
    broken = [
        Broken(str(f.get("path")), [p.get("message", "?") for p in f.get("problems") or []])
        for f in files
        if not f.get("ok", True)
    ]
    return broken, len(files)


# ---------------------------------------------------------------------------
# Package records
# ---------------------------------------------------------------------------


def is_elf(path: Path) -> bool:
    """A regular file (not a symlink) starting with the ELF magic."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def record_path(prefix: str, name: str, version: str, build: str) -> Path:
    """conda-meta/NAME-VERSION-BUILD.json: where conda keeps a linked package's record."""
    return Path(prefix) / "conda-meta" / f"{name}-{version}-{build}.json"


def package_elf_files(prefix: str, records: Iterable) -> tuple:
    """The ELF files of the packages whose records (objects with name, version and build) are
    given, as listed in conda-meta: (files, names of packages without a readable record)."""
    files, missing = [], []
    for rec in records:
        path = record_path(prefix, rec.name, rec.version, rec.build)
        try:
            listed = json.loads(path.read_text()).get("files") or []
        except (OSError, ValueError):
            missing.append(rec.name)
            continue
        for rel in listed:
            full = Path(prefix) / rel
            if is_elf(full):
                files.append(str(full))
    return files, missing
