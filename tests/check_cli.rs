//! `autopatch check` from the command line: output, JSON shape and exit status.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn gcc(args: &[&str]) -> bool {
    Command::new("gcc")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A prefix with bin/good (needing nothing special) and bin/broken (needing a missing library).
fn prefix(dir: &Path) -> bool {
    let src = dir.join("main.c");
    let lib_src = dir.join("gone.c");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    fs::write(&lib_src, "int gone(void) { return 0; }\n").unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("build")).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let lib = dir.join("build/libgone.so");
    gcc(&["-o", &path(&dir.join("bin/good")), &path(&src)])
        && gcc(&[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libgone.so",
            "-o",
            &path(&lib),
            &path(&lib_src),
        ])
        && gcc(&[
            "-o",
            &path(&dir.join("bin/broken")),
            &path(&src),
            "-Wl,--no-as-needed",
            &path(&lib),
        ])
        && fs::remove_dir_all(dir.join("build")).is_ok()
}

fn check(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("check")
        .args(args)
        .arg(dir)
        .env_remove("AUTOPATCH_INTERPRETER")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap()
}

#[test]
fn reports_failing_files_and_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    if !prefix(tmp.path()) {
        let allow = std::env::var("AUTOPATCH_ALLOW_SKIP").is_ok_and(|v| v == "1");
        assert!(allow, "gcc is needed (apt-get install gcc)");
        return;
    }
    let out = check(&[], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("bin/broken: libgone.so (needed by bin/broken) not found in "),
        "{stdout}"
    );
    assert_eq!(lines[1], "checked 2 files: 1 ok, 1 with problems");

    let out = check(&["--json"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["summary"],
        serde_json::json!({"checked": 2, "ok": 1, "with_problems": 1})
    );
    let broken = &json["files"][0];
    assert!(broken["path"].as_str().unwrap().ends_with("bin/broken"));
    assert_eq!(broken["ok"], false);
    assert_eq!(broken["problems"][0]["kind"], "not_found");
    assert_eq!(broken["problems"][0]["library"], "libgone.so");
    let good = &json["files"][1];
    assert_eq!(good["ok"], true);
    assert_eq!(good["resolved"][0]["name"], "libc.so.6");
    assert!(good["resolved"][0]["via"]["kind"].is_string());
}

#[test]
fn the_interpreter_can_come_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    if !prefix(tmp.path()) {
        return;
    }
    fs::remove_file(tmp.path().join("bin/broken")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .args(["check", "--json"])
        .arg(tmp.path())
        .env("AUTOPATCH_INTERPRETER", "/nonexistent/ld.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problem = &json["files"][0]["problems"][0];
    assert_eq!(problem["kind"], "interpreter");
    assert_eq!(
        problem["message"],
        "interpreter /nonexistent/ld.so does not exist"
    );
}
