"""conda_autopatch.plugin against a stand-in conda: what each hook yields and does."""

import contextlib
import io
import os
from pathlib import Path

from .helpers import (
    ELF_BYTES,
    EnvTestCase,
    check_report,
    fix_report,
    load_plugin,
    make_prefix,
    prec,
)


def captured(function, *args):
    """Runs function(*args); returns (result, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = function(*args)
    return result, out.getvalue(), err.getvalue()


class PostCommand(EnvTestCase):
    def setUp(self):
        super().setUp()
        self.plugin = load_plugin()
        from conda.base.context import context

        context.target_prefix = str(self.tmp / "env")
        self.prefix = context.target_prefix

    def test_runs_for_installing_commands(self):
        [command] = list(self.plugin.conda_post_commands())
        self.assertEqual(command.name, "autopatch")
        self.assertEqual(
            set(command.run_for), {"install", "create", "update", "env_create", "env_update"}
        )
        self.assertIs(command.action, self.plugin.post_command)

    def test_fixes_the_target_prefix_and_prints_one_line(self):
        self.fake.reply("fix", fix_report(patched=4, fine=1))
        _, out, err = captured(self.plugin.post_command, "install")
        self.assertEqual(out, f"autopatch: {self.prefix}: 4 patched, 1 already fine\n")
        [call] = self.fake.calls()
        self.assertEqual(call["argv"], ["fix", "--json", "--", self.prefix])

    def test_unresolved_library_warns_without_failing(self):
        report = fix_report(patched=1, unresolved={"libGL.so.1": [f"{self.prefix}/bin/x"]})
        self.fake.reply("fix", report, exit=1)
        _, out, _ = captured(self.plugin.post_command, "create")
        lines = out.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("1 with unresolved libraries", lines[0])
        self.assertIn("warning: libGL.so.1 not found", lines[1])

    def test_missing_autopatch_warns_without_failing(self):
        os.environ["AUTOPATCH"] = str(self.tmp / "nonexistent")
        _, out, _ = captured(self.plugin.post_command, "install")
        self.assertIn("warning", out)
        self.assertIn("nothing patched", out)


class HealthCheck(EnvTestCase):
    def setUp(self):
        super().setUp()
        self.plugin = load_plugin()
        [self.check] = list(self.plugin.conda_health_checks())

    def test_declares_a_fixer_with_summaries(self):
        self.assertEqual(self.check.name, "autopatch")
        self.assertIs(self.check.action, self.plugin.health_check)
        self.assertIs(self.check.fixer, self.plugin.health_fix)
        self.assertTrue(self.check.summary and self.check.fix)

    def test_older_conda_gets_name_and_action_only(self):
        plugin = load_plugin(health_fixers=False)
        [check] = list(plugin.conda_health_checks())
        self.assertEqual(check.name, "autopatch")
        self.assertIs(check.action, plugin.health_check)

    def test_all_loading(self):
        self.fake.reply("check", check_report(ok_files=["/p/a", "/p/b"]))
        _, out, _ = captured(self.check.action, "/p", False)
        self.assertIn("✅", out)
        self.assertIn("All 2 binaries", out)

    def test_lists_binaries_that_will_not_load(self):
        broken = {f"/p/bin/t{i:02}": ["libX11.so.6: not found"] for i in range(12)}
        self.fake.reply("check", check_report(ok_files=["/p/ok"], broken=broken), exit=1)
        _, out, _ = captured(self.check.action, "/p", False)
        self.assertIn("❌ 12 of 13 binaries will not load", out)
        self.assertIn("  /p/bin/t00\n", out)
        self.assertNotIn("/p/bin/t11", out)
        self.assertIn("and 2 more", out)
        self.assertIn("conda doctor --fix autopatch", out)
        self.assertNotIn("libX11", out)

    def test_verbose_lists_all_with_their_problems(self):
        broken = {f"/p/bin/t{i:02}": ["libX11.so.6: not found"] for i in range(12)}
        self.fake.reply("check", check_report(broken=broken), exit=1)
        _, out, _ = captured(self.check.action, "/p", True)
        self.assertIn("/p/bin/t11: libX11.so.6: not found", out)
        self.assertNotIn("more", out)

    def test_check_that_cannot_run_is_said(self):
        self.fake.reply("check", stdout="", stderr="boom\n", exit=101)
        _, out, _ = captured(self.check.action, "/p", False)
        self.assertIn("could not check", out)
        self.assertIn("boom", out)


class HealthFix(EnvTestCase):
    def setUp(self):
        super().setUp()
        self.plugin = load_plugin()
        self.asked = []

    def confirm(self, message):
        self.asked.append(message)

    def test_nothing_broken_nothing_asked(self):
        self.fake.reply("check", check_report(ok_files=["/p/a"]))
        code, out, _ = captured(self.plugin.health_fix, "/p", None, self.confirm)
        self.assertEqual(code, 0)
        self.assertEqual(self.asked, [])
        self.assertEqual([c["argv"][0] for c in self.fake.calls()], ["check"])

    def test_confirms_then_patches_the_prefix(self):
        self.fake.reply("check", check_report(broken={"/p/bin/t": ["x"]}), exit=1)
        self.fake.reply("fix", fix_report(patched=1))
        code, out, _ = captured(self.plugin.health_fix, "/p", None, self.confirm)
        self.assertEqual(code, 0)
        self.assertEqual(len(self.asked), 1)
        self.assertEqual(
            [c["argv"] for c in self.fake.calls()],
            [["check", "--json", "--", "/p"], ["fix", "--json", "--", "/p"]],
        )
        self.assertIn("1 patched", out)

    def test_declining_patches_nothing(self):
        self.fake.reply("check", check_report(broken={"/p/bin/t": ["x"]}), exit=1)

        class Declined(Exception):
            pass

        def decline(message):
            raise Declined()

        with self.assertRaises(Declined):
            captured(self.plugin.health_fix, "/p", None, decline)
        self.assertEqual([c["argv"][0] for c in self.fake.calls()], ["check"])

    def test_unresolved_after_fixing_is_exit_1(self):
        self.fake.reply("check", check_report(broken={"/p/bin/t": ["x"]}), exit=1)
        self.fake.reply("fix", fix_report(unresolved={"libq.so": ["/p/bin/t"]}), exit=1)
        code, out, _ = captured(self.plugin.health_fix, "/p", None, self.confirm)
        self.assertEqual(code, 1)
        self.assertIn("libq.so not found", out)


class PostTransaction(EnvTestCase):
    def setUp(self):
        super().setUp()
        self.plugin = load_plugin()
        self.prefix = make_prefix(
            self.tmp,
            {
                ("zstd", "1.5.6", "h0"): {"bin/zstd": ELF_BYTES, "share/doc.txt": b"text"},
                ("tk", "8.6", "h1"): {"lib/libtk.so": ELF_BYTES},
                ("old", "1", "0"): {"bin/old": ELF_BYTES},
            },
        )
        self.fake.reply("fix", fix_report(patched=2))

    def action(self, link_precs):
        [hook] = list(self.plugin.conda_post_transaction_actions())
        # conda instantiates the class with the transaction's details, positionally.
        return hook.action({}, str(self.prefix), [], link_precs, [], [], [])

    def run_action(self, action):
        self.assertIsNone(action.verify())
        self.assertTrue(action.verified)
        _, out, err = captured(action.execute)
        action.cleanup()
        return out, err

    def test_only_offered_where_conda_has_the_hook(self):
        from conda.core.path_actions import Action

        [hook] = list(self.plugin.conda_post_transaction_actions())
        self.assertEqual(hook.name, "autopatch")
        self.assertTrue(issubclass(hook.action, Action))
        older = load_plugin(post_transaction=False)
        self.assertFalse(hasattr(older, "conda_post_transaction_actions"))

    def test_patches_the_elf_files_of_the_linked_packages_only(self):
        out, err = self.run_action(self.action([prec("zstd", "1.5.6", "h0"), prec("tk", "8.6", "h1")]))
        [call] = self.fake.calls()
        self.assertEqual(call["argv"][:3], ["fix", "--json", "--"])
        self.assertEqual(
            sorted(Path(p).relative_to(self.prefix).as_posix() for p in call["argv"][3:]),
            ["bin/zstd", "lib/libtk.so"],
        )
        self.assertIn("2 patched", err)
        self.assertEqual(out, "")

    def test_nothing_linked_nothing_run(self):
        self.run_action(self.action([]))
        self.run_action(self.action(None))
        self.assertEqual(self.fake.calls(), [])

    def test_a_package_without_record_patches_the_prefix(self):
        _, err = self.run_action(self.action([prec("zstd", "1.5.6", "h0"), prec("gone", "1", "0")]))
        [call] = self.fake.calls()
        self.assertEqual(call["argv"], ["fix", "--json", "--", str(self.prefix)])
        self.assertIn("no conda-meta record for gone", err)

    def test_failures_never_escape_execute(self):
        self.fake.reply("fix", fix_report(unresolved={"libq.so": ["x"]}), exit=1)
        _, err = self.run_action(self.action([prec("tk", "8.6", "h1")]))
        self.assertIn("warning: libq.so not found", err)
        action = self.action([prec("tk", "8.6", "h1")])
        action.target_prefix = None  # makes the record lookup itself raise
        _, err = self.run_action(action)
        self.assertIn("autopatch: warning", err)

    def test_reverse_changes_nothing(self):
        action = self.action([prec("zstd", "1.5.6", "h0")])
        before = (self.prefix / "bin/zstd").read_bytes()
        action.reverse()
        self.assertEqual((self.prefix / "bin/zstd").read_bytes(), before)
        self.assertEqual(self.fake.calls(), [])
