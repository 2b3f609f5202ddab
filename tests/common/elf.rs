//! Helpers for the tests of the ELF editor: programs gcc builds, long loaders and run paths
//! that force growth, and running `autopatch elf`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RUN_PATH_MIN: usize = 600;
const INTERP_MIN: usize = 200;

/// Bytes as text, invalid UTF-8 replaced.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd`, panicking only when it cannot be started. A program just written may be busy
/// for a moment: a process another test thread forks meanwhile holds the writer's descriptor
/// until it execs, and the kernel refuses to run a file open for writing (`ETXTBSY`).
pub fn output(cmd: &mut Command) -> Output {
    let mut tries = 0;
    loop {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            done => return done.expect("spawning a tool"),
        }
    }
}

/// Compiles `source` with `compiler` into `dir/name`.
pub fn compile(compiler: &str, dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let o = output(
        Command::new(compiler)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .args(args),
    );
    assert!(o.status.success(), "{compiler} {name}: {}", text(&o.stderr));
    out
}

/// A program that needs `lib/libgreet.so` (versioned GREET_1.0) and has no run path, so it only
/// runs once one is set.
pub struct Fixture {
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub lib: PathBuf,
}

/// `dir/lib/libgreet.so`, whose `greet` has the symbol version `version`.
pub fn greet_library(compiler: &str, dir: &Path, version: &str) -> PathBuf {
    let lib_dir = dir.join("lib");
    fs::create_dir_all(&lib_dir).unwrap();
    let script = dir.join(format!("greet-{version}.map"));
    fs::write(
        &script,
        format!("{version} {{ global: greet; local: *; }};\n"),
    )
    .unwrap();
    compile(
        compiler,
        &lib_dir,
        "libgreet.so",
        "const char *greet(void) { return \"hello from libgreet\"; }\n",
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libgreet.so",
            &format!("-Wl,--version-script={}", script.display()),
        ],
    )
}

pub fn fixture(compiler: &str, dir: &Path, exe_args: &[&str]) -> Fixture {
    let lib_dir = dir.join("lib");
    let lib = greet_library(compiler, dir, "GREET_1.0");
    let mut args = vec![
        "-L".to_string(),
        lib_dir.display().to_string(),
        "-lgreet".into(),
    ];
    args.extend(exe_args.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exe = compile(
        compiler,
        dir,
        "hello",
        "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n",
        &args,
    );
    Fixture {
        dir: dir.to_path_buf(),
        exe,
        lib,
    }
}

/// Runs `autopatch elf ARGS file`.
pub fn autopatch(args: &[&str], file: &Path) -> Output {
    output(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .arg("elf")
            .args(args)
            .arg(file),
    )
}

/// What `autopatch elf FLAG file` prints, without the final newline.
pub fn print(flag: &str, file: &Path) -> String {
    let o = autopatch(&[flag], file);
    assert!(o.status.success(), "{flag}: {}", text(&o.stderr));
    text(&o.stdout).trim_end_matches('\n').to_string()
}

/// A copy of the loader `ld` at a path of at least `INTERP_MIN` characters under `dir`.
pub fn long_loader(dir: &Path, ld: &str) -> String {
    let name = Path::new(ld).file_name().unwrap();
    let mut at = dir.join("loader");
    while at.join(name).as_os_str().len() < INTERP_MIN {
        at.push("a-long-directory-for-the-program-interpreter");
    }
    fs::create_dir_all(&at).unwrap();
    fs::copy(fs::canonicalize(ld).unwrap(), at.join(name)).unwrap();
    at.join(name).display().to_string()
}

/// `dirs` followed by unused directories named after `tag`, at least `RUN_PATH_MIN` long.
pub fn long_run_path(dirs: &str, tag: &str) -> String {
    let mut path = dirs.to_string();
    let mut i = 0;
    while path.len() < RUN_PATH_MIN {
        path.push_str(&format!(":/opt/unused-{tag}-directory-number-{i}"));
        i += 1;
    }
    path
}

/// `ld.so --list FILE` output without load addresses, and whether it succeeded.
pub fn listing(out: &Output) -> (bool, Vec<String>, String) {
    let listed = text(&out.stdout)
        .lines()
        .map(|l| l.split(" (0x").next().unwrap_or(l).trim().to_string())
        .collect();
    (out.status.success(), listed, text(&out.stderr))
}

/// The rewrite `edits` make of `input`, and the steps that grow the file in place to it.
pub fn in_place_growth(
    input: &[u8],
    edits: &autopatch::elf::Edits,
) -> (autopatch::elf::Rewrite, autopatch::elf::InPlaceSteps) {
    use autopatch::elf::{Elf, in_place_steps, plan};
    let elf = Elf::parse(input).unwrap();
    let rewrite = plan(&elf, edits)
        .unwrap()
        .expect("the edits change the file");
    let steps = in_place_steps(&elf, &rewrite).expect("a first growth is append-only");
    (rewrite, steps)
}

/// The content of `input` once the in-place steps up to `step` are done: 0 the append, 1 the
/// staging header, 2 the front writes, 3 the final header, 4 the cut.
pub fn in_place_state(input: &[u8], steps: &autopatch::elf::InPlaceSteps, step: usize) -> Vec<u8> {
    let mut writes: Vec<&autopatch::elf::Write> = steps.append.iter().collect();
    if step >= 1 {
        writes.push(&steps.enter);
    }
    if step >= 2 {
        writes.extend(&steps.front);
    }
    if step >= 3 {
        writes.push(&steps.leave);
    }
    let mut state = input.to_vec();
    for w in writes {
        let end = w.offset as usize + w.bytes.len();
        if state.len() < end {
            state.resize(end, 0);
        }
        state[w.offset as usize..end].copy_from_slice(&w.bytes);
    }
    if step >= 4 {
        state.truncate(steps.len as usize);
    }
    state
}
