"""conda plugin: patch the binaries conda installs with autopatch, so they run on NixOS.

- After `conda install/create/update` and `conda env create/update`: `autopatch fix PREFIX`.
- Inside the transaction, where conda offers post-transaction actions: the files of the
  packages just linked.
- `conda doctor`: reports binaries that will not load; `conda doctor --fix` patches them.

An unresolved library is a warning, never a failed command.
"""

from __future__ import annotations

import sys

from conda import plugins
from conda.base.context import context

from . import runner

NAME = "autopatch"
RUN_FOR = {"install", "create", "update", "env_create", "env_update"}
# Broken files listed by `conda doctor` without --verbose.
LISTED = 10


def _stdout(line: str) -> None:
    print(line, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# After commands
# ---------------------------------------------------------------------------


def post_command(command: str) -> None:
    """Patches the prefix the command worked on and prints a one-line summary."""
    prefix = context.target_prefix
    runner.patch([prefix], prefix, _stdout)


@plugins.hookimpl
def conda_post_commands():
    yield plugins.CondaPostCommand(name=NAME, action=post_command, run_for=RUN_FOR)


# ---------------------------------------------------------------------------
# conda doctor
# ---------------------------------------------------------------------------


def health_check(prefix: str, verbose: bool) -> None:
    """Reports the binaries of PREFIX that the loader will refuse (through `autopatch check`)."""
    broken, checked = runner.broken_files(prefix)
    if broken is None:
        _stdout(f"⚠️ autopatch could not check the environment: {checked}\n")
        return
    if not broken:
        _stdout(f"✅ All {checked} binaries checked by autopatch will load.\n")
        return
    _stdout(f"❌ {len(broken)} of {checked} binaries will not load:")
    shown = broken if verbose else broken[:LISTED]
    for b in shown:
        if verbose:
            _stdout(f"  {b.path}: {'; '.join(b.problems)}")
        else:
            _stdout(f"  {b.path}")
    if len(shown) < len(broken):
        _stdout(f"  and {len(broken) - len(shown)} more (--verbose lists them all)")
    _stdout(f"Patch them with `conda doctor --fix {NAME}` or `autopatch fix {prefix}`.\n")


def health_fix(prefix: str, args, confirm) -> int:
    """Patches the whole prefix once the user confirms (a broken file may only need a library
    of the prefix patched, so the prefix is the unit)."""
    broken, checked = runner.broken_files(prefix)
    if broken is None:
        _stdout(f"autopatch could not check the environment: {checked}")
        return 1
    if not broken:
        _stdout("No binaries to patch.")
        return 0
    _stdout(f"{len(broken)} of {checked} binaries will not load.")
    # Raises when the user declines or in dry-run mode; conda handles that.
    confirm(f"Patch the binaries of {prefix} with autopatch?")
    return 0 if runner.patch([prefix], prefix, _stdout) else 1


def _health_check():
    full = dict(
        name=NAME,
        action=health_check,
        fixer=health_fix,
        summary="Binaries that will not load (missing interpreter or libraries), as on NixOS",
        fix="Patch their interpreter and run path with autopatch",
    )
    try:
        return plugins.CondaHealthCheck(**full)
    except TypeError:
        # conda before fixers were added takes only a name and an action.
        return plugins.CondaHealthCheck(name=NAME, action=health_check)


@plugins.hookimpl
def conda_health_checks():
    yield _health_check()


# ---------------------------------------------------------------------------
# Inside the transaction
# ---------------------------------------------------------------------------

if hasattr(plugins, "CondaPostTransactionAction"):
    from conda.core.path_actions import Action

    class PatchLinkedPackages(Action):
        """Patches the ELF files of the packages the transaction linked, as their conda-meta
        records list them (conda writes the records before post-transaction actions)."""

        def verify(self):
            self._verified = True
            return None

        def execute(self):
            try:
                self._patch()
            except Exception as e:  # raising here would roll the whole transaction back
                _stderr(f"autopatch: warning: {self.target_prefix}: {e}")

        def _patch(self):
            records = list(self.link_precs or ())
            if not records:
                return
            prefix = self.target_prefix
            files, missing = runner.package_elf_files(prefix, records)
            if missing:
                # Without a record the files are unknown: the whole prefix is the safe unit.
                _stderr(f"autopatch: no conda-meta record for {', '.join(missing)}")
                runner.patch([prefix], prefix, _stderr)
            elif files:
                where = f"{prefix} ({len(records)} linked packages)"
                runner.patch(files, where, _stderr)

        def reverse(self):
            # execute never raises, so conda never calls this for it; when another action
            # fails, conda's rollback removes the linked files, patched or not.
            pass

        def cleanup(self):
            pass

    @plugins.hookimpl
    def conda_post_transaction_actions():
        yield plugins.CondaPostTransactionAction(name=NAME, action=PatchLinkedPackages)
