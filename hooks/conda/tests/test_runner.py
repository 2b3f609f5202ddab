"""conda_autopatch.runner: finding and running autopatch, and reading its JSON."""

import os
from pathlib import Path

from conda_autopatch import runner

from .helpers import ELF_BYTES, EnvTestCase, check_report, fix_report, make_prefix, prec


class FindAutopatch(EnvTestCase):
    def test_the_environment_variable_wins_over_path(self):
        other = self.tmp / "other"
        other.mkdir()
        (other / "autopatch").write_text("#!/bin/sh\n")
        (other / "autopatch").chmod(0o755)
        os.environ["PATH"] = f"{other}:{os.environ.get('PATH', '')}"
        self.assertEqual(runner.find_autopatch(), str(self.fake.bin))

    def test_path_is_searched_without_the_variable(self):
        del os.environ["AUTOPATCH"]
        os.environ["PATH"] = f"{self.fake.dir}:/nonexistent"
        self.assertEqual(runner.find_autopatch(), str(self.fake.bin))

    def test_none_when_nowhere(self):
        del os.environ["AUTOPATCH"]
        os.environ["PATH"] = str(self.tmp / "empty")
        self.assertIsNone(runner.find_autopatch())


class Fix(EnvTestCase):
    def test_runs_fix_with_json_and_passes_the_environment_through(self):
        self.fake.reply("fix", fix_report(patched=2, fine=5))
        os.environ["AUTOPATCH_LIB_DIR"] = "/opt/a:/opt/b"
        result = runner.fix(["/p/env", "/p/file"])
        self.assertEqual(result.returncode, 0)
        self.assertEqual(result.warnings, [])
        [call] = self.fake.calls()
        self.assertEqual(call["argv"], ["fix", "--json", "--", "/p/env", "/p/file"])
        self.assertEqual(call["env"]["AUTOPATCH_LIB_DIR"], "/opt/a:/opt/b")

    def test_summary_is_one_line_with_the_counts(self):
        report = fix_report(patched=3, fine=7, unresolved={"libX11.so.6": ["/p/lib/libtk.so"]})
        line = runner.fix_summary(report, "/p")
        self.assertEqual(
            line, "autopatch: /p: 3 patched, 7 already fine, 1 with unresolved libraries"
        )
        self.assertNotIn("\n", line)
        dry = runner.fix_summary(fix_report(patched=1, dry_run=True), "/p")
        self.assertIn("1 would patch", dry)

    def test_unresolved_libraries_become_warnings_naming_the_files(self):
        files = [f"/p/lib/l{i}.so" for i in range(5)]
        self.fake.reply("fix", fix_report(unresolved={"libfoo.so.1": files}), exit=1)
        result = runner.fix(["/p"])
        self.assertEqual(result.returncode, 1)
        [warning] = result.warnings
        self.assertIn("libfoo.so.1 not found", warning)
        self.assertIn("/p/lib/l0.so, /p/lib/l1.so, /p/lib/l2.so and 2 more", warning)
        self.assertIn("AUTOPATCH_IGNORE_MISSING='libfoo.so.1'", warning)

    def test_errors_without_unresolved_libraries_still_warn(self):
        self.fake.reply("fix", fix_report(errors=2), exit=1)
        [warning] = runner.fix(["/p"]).warnings
        self.assertIn("2 file(s) could not be patched", warning)

    def test_output_that_is_not_json_is_an_error_not_an_exception(self):
        self.fake.reply("fix", stdout="", stderr="error: unexpected argument '--json'\n", exit=2)
        result = runner.fix(["/p"])
        self.assertIsNone(result.report)
        self.assertIn("exited 2", result.error)
        self.assertIn("unexpected argument", result.error)

    def test_missing_binary_is_an_error(self):
        os.environ["AUTOPATCH"] = str(self.tmp / "nonexistent")
        result = runner.fix(["/p"])
        self.assertIsNone(result.report)
        self.assertIn("cannot run", result.error)
        del os.environ["AUTOPATCH"]
        os.environ["PATH"] = str(self.tmp / "empty")
        self.assertIn("autopatch not found", runner.fix(["/p"]).error)


class Patch(EnvTestCase):
    def said(self, paths, reply_exit=0, **report):
        self.fake.reply("fix", fix_report(**report), exit=reply_exit)
        lines = []
        ok = runner.patch(paths, "/p", lines.append)
        return ok, lines

    def test_success_says_one_summary_line(self):
        ok, lines = self.said(["/p"], patched=1, fine=2)
        self.assertTrue(ok)
        self.assertEqual(lines, ["autopatch: /p: 1 patched, 2 already fine"])

    def test_unresolved_says_summary_then_warnings_and_returns_false(self):
        ok, lines = self.said(["/p"], reply_exit=1, patched=1, unresolved={"libq.so": ["/p/a"]})
        self.assertFalse(ok)
        self.assertTrue(lines[0].startswith("autopatch: /p: 1 patched"))
        self.assertTrue(lines[1].startswith("autopatch: warning: libq.so not found"))

    def test_never_raises(self):
        os.environ["AUTOPATCH"] = str(self.tmp / "nonexistent")
        lines = []
        self.assertFalse(runner.patch(["/p"], "/p", lines.append))
        self.assertEqual(len(lines), 1)
        self.assertIn("nothing patched", lines[0])


class Check(EnvTestCase):
    def test_lists_the_files_that_will_not_load(self):
        report = check_report(
            ok_files=["/p/bin/ok"],
            broken={"/p/bin/tk": ["libX11.so.6: not found", "interpreter missing"]},
        )
        self.fake.reply("check", report, exit=1)
        broken, checked = runner.broken_files("/p")
        self.assertEqual(checked, 2)
        self.assertEqual([b.path for b in broken], ["/p/bin/tk"])
        self.assertEqual(broken[0].problems, ["libX11.so.6: not found", "interpreter missing"])
        self.assertEqual(self.fake.calls()[0]["argv"], ["check", "--json", "--", "/p"])

    def test_failure_to_check_is_reported_as_such(self):
        self.fake.reply("check", stdout="", stderr="unrecognized subcommand 'check'\n", exit=2)
        broken, why = runner.broken_files("/p")
        self.assertIsNone(broken)
        self.assertIn("unrecognized subcommand", why)


class PackageFiles(EnvTestCase):
    def test_only_the_elf_files_of_the_given_records(self):
        prefix = make_prefix(
            self.tmp,
            {
                ("zstd", "1.5.6", "h0"): {
                    "bin/zstd": ELF_BYTES,
                    "lib/libzstd.so.1.5.6": ELF_BYTES,
                    "include/zstd.h": b"/* header */",
                },
                ("bzip2", "1.0.8", "h1"): {"bin/bzip2": ELF_BYTES},
            },
        )
        os.symlink("libzstd.so.1.5.6", prefix / "lib/libzstd.so.1")
        record = prefix / "conda-meta/zstd-1.5.6-h0.json"
        record.write_text(record.read_text().replace('"include', '"lib/libzstd.so.1",\n    "include'))
        files, missing = runner.package_elf_files(str(prefix), [prec("zstd", "1.5.6", "h0")])
        self.assertEqual(missing, [])
        self.assertEqual(
            sorted(Path(f).relative_to(prefix).as_posix() for f in files),
            ["bin/zstd", "lib/libzstd.so.1.5.6"],
        )

    def test_a_package_without_a_record_is_reported(self):
        prefix = make_prefix(self.tmp, {("a", "1", "0"): {"bin/a": ELF_BYTES}})
        files, missing = runner.package_elf_files(
            str(prefix), [prec("a", "1", "0"), prec("b", "2", "0")]
        )
        self.assertEqual(missing, ["b"])
        self.assertEqual(files, [str(prefix / "bin/a")])
