//! The Nix setup hook (hooks/nix/setup-hook.sh): sourced by bash in a harness with stdenv's hook
//! machinery (testdata/hooks/nix/stdenv.sh) on outputs of prebuilt binaries, and used by a real
//! `nix-build`; results run in the NixOS-like root. Also evaluates default.nix and flake.nix
//! against a stand-in nixpkgs (testdata/hooks/nix/stub-nixpkgs), as nixpkgs cannot be fetched.

mod common;

use common::run_ok;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::NixRoot;

fn testdata() -> PathBuf {
    common::project_root().join("testdata/hooks/nix")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn elf(args: &[&str], file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("elf")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn run_path(file: &Path) -> Vec<String> {
    elf(&["--print-rpath"], file)
        .split(':')
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// Outputs of prebuilt binaries, as a derivation's install phase leaves them: `out` (the
/// package), `lib` (a second output), `debug` (never patched); the dependency `greet` that
/// alone has libgreet, `extra` (only dlopen'ed), and a bintools whose dynamic linker is the
/// root's.
struct Outputs {
    dir: tempfile::TempDir,
    root: NixRoot,
}

impl Outputs {
    fn new() -> Outputs {
        let root = common::require_nixroot();
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel);
        run_ok(
            Command::new("bash")
                .arg(testdata().join("prebuilt.sh"))
                .arg(p("pre")),
        );
        for d in ["out", "lib/bin", "debug/bin", "bintools/nix-support"] {
            fs::create_dir_all(p(d)).unwrap();
        }
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(p("pre/app/."))
                .arg(p("out")),
        );
        fs::copy(p("pre/app/bin/hello"), p("lib/bin/hello2")).unwrap();
        fs::copy(p("pre/app/bin/hello"), p("debug/bin/hello")).unwrap();
        fs::write(
            p("bintools/nix-support/dynamic-linker"),
            format!("{}\n", root.ld.display()),
        )
        .unwrap();
        Outputs { dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    /// testdata/hooks/nix/fixup.sh with the outputs, `greet` as build input, and `vars`.
    fn fixup(&self, vars: &[(&str, String)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(testdata().join("fixup.sh"))
            .env("outputs", "out lib debug")
            .env("out", self.path("out"))
            .env("lib", self.path("lib"))
            .env("debug", self.path("debug"))
            .env("buildInputs", self.path("pre/greet"))
            .env("NIX_BINTOOLS", self.path("bintools"))
            .env("AUTOPATCH", env!("CARGO_BIN_EXE_autopatch"))
            .env("TMPDIR", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env_remove("AUTOPATCH_INTERPRETER")
            .env_remove("AUTOPATCH_LIB_DIR")
            .env_remove("AUTOPATCH_IGNORE_MISSING")
            .env_remove("AUTOPATCH_STORE");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running fixup.sh");
        eprintln!("fixup.sh: {}", text(&out));
        out
    }

    /// Runs `rel` with `args` in the root; its stdout, or a panic with everything.
    fn run(&self, rel: &str, args: &[&str]) -> String {
        let mut argv = vec![self.s(rel)];
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = self.root.run(self.dir.path(), &argv);
        assert!(
            out.status.success(),
            "{rel} {args:?} in the root: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn hook_patches_every_output_but_debug_with_the_dependencies_libraries() {
    let o = Outputs::new();
    let debug_before = fs::read(o.path("debug/bin/hello")).unwrap();
    let out = o.fixup(&[
        ("runtimeDependencies", o.s("pre/extra")),
        ("appendRunpaths", "/run/extra-runpath".into()),
        ("autoPatchelfIgnoreMissingDeps", "libmissing.so".into()),
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The harness shrank run paths before the hook ran, as stdenv's fixupOutputHooks do.
    assert!(stderr.contains("shrinking RPATHs"), "{stderr}");
    assert!(!stderr.contains("unresolved:"), "{stderr}");

    let ld = o.root.ld.display().to_string();
    for exe in ["out/bin/hello", "out/bin/needs-missing", "lib/bin/hello2"] {
        assert_eq!(elf(&["--print-interpreter"], &o.path(exe)), ld, "{exe}");
    }
    // The dependency's lib dir, then the runtime dependency and appendRunpaths, which survive
    // the shrinking because the hook runs after it.
    assert_eq!(
        run_path(&o.path("out/bin/hello")),
        [
            o.s("pre/greet/lib"),
            o.s("pre/extra/lib"),
            "/run/extra-runpath".into()
        ]
    );
    // Libraries get appendRunpaths, not the runtime dependencies.
    assert_eq!(
        run_path(&o.path("out/lib/libuse.so")),
        [o.s("pre/greet/lib"), "/run/extra-runpath".into()]
    );
    assert_eq!(fs::read(o.path("debug/bin/hello")).unwrap(), debug_before);

    assert_eq!(o.run("out/bin/hello", &[]), "hello from libgreet\n");
    assert_eq!(
        o.run("out/bin/hello", &["--dlopen"]),
        "hello from libgreet\nlibextra loaded\n"
    );
    assert_eq!(o.run("lib/bin/hello2", &[]), "hello from libgreet\n");
}

#[test]
fn unresolved_library_is_a_warning_not_a_failed_build() {
    let o = Outputs::new();
    let out = o.fixup(&[]);
    assert!(out.status.success(), "the build must go on");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unresolved: libmissing.so"), "{stderr}");
    assert!(stderr.contains("autopatch: WARNING"), "{stderr}");
    assert_eq!(o.run("out/bin/hello", &[]), "hello from libgreet\n");
}

#[test]
fn dont_auto_patchelf_leaves_the_outputs_alone() {
    let o = Outputs::new();
    let before = fs::read(o.path("out/bin/hello")).unwrap();
    let out = o.fixup(&[("dontAutoPatchelf", "1".into())]);
    assert!(out.status.success());
    assert_eq!(fs::read(o.path("out/bin/hello")).unwrap(), before);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("autopatch: patching"));
}

#[test]
fn structured_attrs_arrays_and_auto_patchelf_flags_are_honoured() {
    let o = Outputs::new();
    // With __structuredAttrs the variables are bash arrays.
    let prelude = format!(
        "runtimeDependencies=({:?}); autoPatchelfFlags=(--keep-libc '--ignore-missing=libmiss*'); \
         appendRunpaths=('/run/a b' /run/c)",
        o.s("pre/extra")
    );
    let out = o.fixup(&[("PRELUDE", prelude)]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("unresolved:"), "{stderr}");
    assert!(!stderr.contains("ignoring autoPatchelfFlags"), "{stderr}");
    assert_eq!(
        run_path(&o.path("out/bin/hello")),
        [
            o.s("pre/greet/lib"),
            o.s("pre/extra/lib"),
            "/run/a b".into(),
            "/run/c".into()
        ]
    );
    assert_eq!(
        o.run("out/bin/hello", &["--dlopen"]),
        "hello from libgreet\nlibextra loaded\n"
    );
}

#[test]
fn auto_patchelf_entry_points_work_from_a_builds_own_phases() {
    let o = Outputs::new();
    // A vendored library, found only through addAutoPatchelfSearchPath.
    fs::create_dir_all(o.path("vendored/sub")).unwrap();
    fs::rename(
        o.path("pre/greet/lib/libgreet.so"),
        o.path("vendored/sub/libgreet.so"),
    )
    .unwrap();
    let libuse_before = fs::read(o.path("out/lib/libuse.so")).unwrap();
    let out = o.fixup(&[
        ("buildInputs", String::new()),
        ("vendored", o.s("vendored")),
        ("dontAutoPatchelf", "1".into()),
        (
            "preFixup",
            r#"addAutoPatchelfSearchPath "$vendored""#.into(),
        ),
        ("postFixup", r#"autoPatchelf -- "$out/bin""#.into()),
    ]);
    assert!(out.status.success());
    assert_eq!(run_path(&o.path("out/bin/hello")), [o.s("vendored/sub")]);
    // Only what autoPatchelf was given.
    assert_eq!(
        fs::read(o.path("out/lib/libuse.so")).unwrap(),
        libuse_before
    );
    assert_eq!(o.run("out/bin/hello", &[]), "hello from libgreet\n");
}

#[test]
fn nix_build_of_a_derivation_using_the_hook_runs_in_the_nixos_like_root() {
    let o = Outputs::new();
    let root = &o.root;
    let tools = run_ok(
        Command::new("bash")
            .arg(testdata().join("store-tools.sh"))
            .arg(root.dir.join("env.sh"))
            .arg(o.path("tools-root")),
    );
    let tools = String::from_utf8_lossy(&tools.stdout).trim().to_string();
    let result = o.path("result");
    let out = run_ok(
        Command::new("nix-build")
            .arg(testdata().join("hello.nix"))
            .args(["--argstr", "tools", &tools])
            .args([
                "--argstr",
                "coreutils",
                root.coreutils_bin.to_str().unwrap(),
            ])
            .args(["--argstr", "glibcLib", root.glibc_lib.to_str().unwrap()])
            .args(["--arg", "autopatch", env!("CARGO_BIN_EXE_autopatch")])
            .args(["--arg", "prebuilt", &o.s("pre")])
            .arg("-o")
            .arg(&result)
            // Debian's nix-bin as root, without a daemon or build users, offline.
            .args(["--option", "build-users-group", ""])
            .args(["--option", "sandbox", "false"])
            .args(["--option", "substituters", ""]),
    );
    eprintln!("nix-build: {}", text(&out));
    let built = fs::canonicalize(&result).unwrap();
    assert!(built.starts_with("/nix/store"), "{}", built.display());
    let hello = built.join("bin/hello");
    assert_eq!(
        elf(&["--print-interpreter"], &hello),
        root.ld.display().to_string()
    );

    let run = root.run(o.dir.path(), &[hello.to_str().unwrap(), "--dlopen"]);
    assert!(
        run.status.success(),
        "the built hello in the root: {}",
        text(&run)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello from libgreet\nlibextra loaded\n"
    );

    // Nix saw the run paths: the dependency, the runtime dependency and glibc are references.
    let refs = run_ok(
        Command::new("nix-store")
            .args(["-q", "--references"])
            .arg(&built),
    );
    let refs = String::from_utf8_lossy(&refs.stdout);
    for name in ["-greet-1.0", "-extra-1.0"] {
        assert!(refs.lines().any(|l| l.ends_with(name)), "{name} in {refs}");
    }
    let glibc = root.glibc_lib.parent().unwrap().display().to_string();
    assert!(refs.lines().any(|l| l == glibc), "{glibc} in {refs}");
}

#[test]
fn nix_expressions_evaluate_against_a_stand_in_nixpkgs() {
    if !common::have_tool("nix-instantiate") {
        if common::allow_skip() {
            eprintln!("SKIPPED: nix-instantiate not in PATH (apt-get install nix-bin)");
            return;
        }
        panic!("nix-instantiate not in PATH (apt-get install nix-bin)");
    }
    let project = common::project_root();
    for file in [
        "flake.nix",
        "default.nix",
        "hooks/nix/overlay.nix",
        "hooks/nix/package.nix",
        "hooks/nix/hook.nix",
    ] {
        run_ok(
            Command::new("nix-instantiate")
                .arg("--parse")
                .arg(project.join(file)),
        );
    }
    let expr = r#"
      let
        stub = ./testdata/hooks/nix/stub-nixpkgs;
        pkgs = import stub { };
        d = import ./default.nix { inherit pkgs; };
        flake = import ./flake.nix;
        outputs = flake.outputs {
          self = outputs;
          nixpkgs = {
            inherit (pkgs) lib;
            legacyPackages = pkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ]
              (system: import stub { inherit system; });
          };
        };
        keeps = dir: d.autopatch.args.src.filter (toString dir) "directory";
      in {
        name = d.autopatch.name;
        lockExists = builtins.pathExists d.autopatch.args.cargoLock.lockFile;
        keepsSrc = keeps ./src;
        keepsTarget = keeps ./target;
        keepsTestdata = keeps ./testdata;
        mainProgram = d.autopatch.args.meta.mainProgram;
        hook = d.autopatchHook.name;
        hookScript = baseNameOf (toString d.autopatchHook.script);
        propagated = map (p: p.name) d.autopatchHook.args.propagatedBuildInputs;
        overlayIsFunction = builtins.isFunction d.overlay;
        flakeDefault = outputs.packages.x86_64-linux.default.name;
        flakeHook = outputs.packages.aarch64-linux.autopatchHook.name;
        flakeOverlayIsFunction = builtins.isFunction outputs.overlays.default;
      }
    "#;
    let out = run_ok(
        Command::new("nix-instantiate")
            .current_dir(&project)
            .args(["--eval", "--strict", "--json", "-E", expr]),
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        got,
        serde_json::json!({
            "name": format!("autopatch-{version}"),
            "lockExists": true,
            "keepsSrc": true,
            "keepsTarget": false,
            "keepsTestdata": false,
            "mainProgram": "autopatch",
            "hook": "autopatch-hook",
            "hookScript": "setup-hook.sh",
            "propagated": [format!("autopatch-{version}")],
            "overlayIsFunction": true,
            "flakeDefault": format!("autopatch-{version}"),
            "flakeHook": "autopatch-hook",
            "flakeOverlayIsFunction": true,
        })
    );
}
