//! Random sequences of edits (interpreter, run path, needed libraries, soname) on real files:
//! after every step the result parses and reads back what a simple model says was set, and the
//! rest of the dynamic section, the version needs and the symbol names are untouched; at the end
//! the file still loads (`ld.so --list`), and executables still run.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::OnceLock;

use autopatch::elf::{DynEntry, Edits, Elf, ElfError, RunPathEdit, plan};
use object::{Object, ObjectSymbol};
use proptest::prelude::*;

const HOST_LD: &str = "/lib64/ld-linux-x86-64.so.2";
/// Libraries every host has and no fixture needs, so adding and removing them keeps files
/// loadable.
const POOL: [&str; 6] = [
    "libm.so.6",
    "librt.so.1",
    "libdl.so.2",
    "libpthread.so.0",
    "libutil.so.1",
    "libresolv.so.2",
];
/// Dynamic tags holding string offsets or addresses of tables an edit may move.
const MOVABLE_TAGS: [i64; 12] = [
    1,           // DT_NEEDED
    4,           // DT_HASH
    5,           // DT_STRTAB
    6,           // DT_SYMTAB
    10,          // DT_STRSZ
    14,          // DT_SONAME
    15,          // DT_RPATH
    29,          // DT_RUNPATH
    0x6fff_fef5, // DT_GNU_HASH
    0x6fff_fff0, // DT_VERSYM
    0x6fff_fffc, // DT_VERDEF
    0x6fff_fffe, // DT_VERNEED
];

#[derive(Debug, Clone)]
enum Op {
    Interpreter(usize),
    SetRunPath(String),
    RemoveRunPath,
    AddNeeded(usize),
    RemoveNeeded(usize),
    ReplaceNeeded(usize, usize),
    Soname(String),
}

fn op() -> impl Strategy<Value = Op> {
    let pool = 0..POOL.len();
    prop_oneof![
        (0..4usize).prop_map(Op::Interpreter),
        prop::collection::vec("[a-zA-Z0-9/_.$-]{1,60}", 0..12)
            .prop_map(|dirs| Op::SetRunPath(dirs.join(":"))),
        Just(Op::RemoveRunPath),
        pool.clone().prop_map(Op::AddNeeded),
        pool.clone().prop_map(Op::RemoveNeeded),
        (pool.clone(), pool).prop_map(|(a, b)| Op::ReplaceNeeded(a, b)),
        "lib[a-z0-9_]{1,300}\\.so(\\.[0-9]){0,2}".prop_map(Op::Soname),
    ]
}

/// What the file should read back as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    interpreter: Option<Vec<u8>>,
    run_path: Option<Vec<u8>>,
    needed: Vec<Vec<u8>>,
    soname: Option<Vec<u8>>,
}

impl Model {
    fn of(elf: &Elf) -> Model {
        Model {
            interpreter: elf.interpreter().map(<[u8]>::to_vec),
            run_path: elf.run_path().map(|(_, p)| p.to_vec()),
            needed: elf.needed().into_iter().map(<[u8]>::to_vec).collect(),
            soname: elf.soname().map(<[u8]>::to_vec),
        }
    }
}

/// The entries no edit here may change, the version needs, and the dynamic symbols' names (read
/// by `object`, through the section headers).
type Untouched = (Vec<DynEntry>, Vec<(String, Vec<String>)>, Vec<Vec<u8>>);

fn untouched(elf: &Elf) -> Untouched {
    let entries = elf
        .dynamic_entries()
        .iter()
        .filter(|e| !MOVABLE_TAGS.contains(&e.tag))
        .copied()
        .collect();
    let needs = elf
        .version_needs()
        .into_iter()
        .map(|n| (n.file, n.versions))
        .collect();
    let file = object::File::parse(elf.data).unwrap();
    let symbols = file
        .dynamic_symbols()
        .map(|s| s.name_bytes().unwrap().to_vec())
        .collect();
    (entries, needs, symbols)
}

/// The host's loader, and copies of it at paths of at least 60, 120 and 330 characters.
fn loaders() -> &'static [String; 4] {
    static LOADERS: OnceLock<[String; 4]> = OnceLock::new();
    LOADERS.get_or_init(|| {
        let copy = |len: usize| {
            let mut dir = common::target_dir().join("elf-props");
            while dir.as_os_str().len() + 24 < len {
                dir.push("d");
            }
            fs::create_dir_all(&dir).unwrap();
            let ld = dir.join("ld-linux-x86-64.so.2");
            let tmp = dir.join(format!("ld.{}", std::process::id()));
            fs::copy(fs::canonicalize(HOST_LD).unwrap(), &tmp).unwrap();
            fs::rename(&tmp, &ld).unwrap();
            ld.display().to_string()
        };
        [HOST_LD.to_string(), copy(60), copy(120), copy(330)]
    })
}

/// Applies `op` to `bytes`, checking the plan against the model; returns the new bytes.
fn step(bytes: &[u8], model: &mut Model, op: &Op) -> Result<Vec<u8>, TestCaseError> {
    let elf = Elf::parse(bytes).map_err(|e| TestCaseError::fail(format!("parse: {e}")))?;
    let name = |i: usize| POOL[i].as_bytes().to_vec();
    let mut edits = Edits::default();
    match op {
        Op::Interpreter(i) => {
            let path = loaders()[*i].clone().into_bytes();
            if model.interpreter.is_some() {
                model.interpreter = Some(path.clone());
            }
            edits.interpreter = Some(path);
        }
        Op::SetRunPath(p) => {
            model.run_path = Some(p.clone().into_bytes());
            edits.run_path = Some(RunPathEdit::Set(p.clone().into_bytes()));
        }
        Op::RemoveRunPath => {
            model.run_path = None;
            edits.run_path = Some(RunPathEdit::Remove);
        }
        Op::AddNeeded(i) => {
            if !model.needed.contains(&name(*i)) {
                model.needed.insert(0, name(*i));
            }
            edits.add_needed.push(name(*i));
        }
        Op::RemoveNeeded(i) => {
            model.needed.retain(|n| *n != name(*i));
            edits.remove_needed.push(name(*i));
        }
        Op::ReplaceNeeded(a, b) => {
            for n in model.needed.iter_mut().filter(|n| **n == name(*a)) {
                *n = name(*b);
            }
            edits.replace_needed.push((name(*a), name(*b)));
        }
        Op::Soname(s) => {
            model.soname = Some(s.clone().into_bytes());
            edits.soname = Some(s.clone().into_bytes());
        }
    }
    match plan(&elf, &edits) {
        Ok(Some(rewrite)) => Ok(rewrite.apply(bytes)),
        Ok(None) => Ok(bytes.to_vec()),
        Err(ElfError::Refused(_))
            if matches!(op, Op::Interpreter(_)) && elf.interpreter().is_none() =>
        {
            Ok(bytes.to_vec())
        }
        Err(e) => Err(TestCaseError::fail(format!("plan {op:?}: {e}"))),
    }
}

/// Runs `ops` on `original`; the result must load, and an executable run with `args` must succeed.
fn check_sequence(
    original: &[u8],
    name: &str,
    ops: &[Op],
    run: Option<&[&str]>,
) -> Result<(), TestCaseError> {
    let first = Elf::parse(original).unwrap();
    let mut model = Model::of(&first);
    let kept = untouched(&first);
    let mut bytes = original.to_vec();
    for (i, op) in ops.iter().enumerate() {
        bytes = step(&bytes, &mut model, op)?;
        let elf = Elf::parse(&bytes).map_err(|e| {
            TestCaseError::fail(format!("step {i} {op:?}: output does not parse: {e}"))
        })?;
        prop_assert_eq!(&Model::of(&elf), &model, "step {} {:?}", i, op);
        prop_assert_eq!(&untouched(&elf), &kept, "step {} {:?}", i, op);
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    fs::write(&file, &bytes).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
    let listed = Command::new(HOST_LD)
        .arg("--list")
        .arg(&file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&listed.stdout);
    prop_assert!(
        listed.status.success() && !out.contains("not found"),
        "ld.so --list: {}{}",
        out,
        String::from_utf8_lossy(&listed.stderr)
    );
    if let Some(args) = run {
        let ran = common::elf::output(Command::new(&file).args(args));
        prop_assert!(
            ran.status.success(),
            "running: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..10)
}

/// A small program gcc builds, once per test run.
fn gcc_program() -> &'static [u8] {
    static PROGRAM: OnceLock<Vec<u8>> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("hello.c");
        fs::write(
            &src,
            "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
        )
        .unwrap();
        let exe = dir.path().join("hello");
        let status = Command::new("gcc")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap();
        assert!(status.success(), "gcc failed");
        fs::read(exe).unwrap()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn edits_on_ls(ops in ops()) {
        check_sequence(&fs::read("/usr/bin/ls").unwrap(), "ls", &ops, Some(&["--version"]))?;
    }

    #[test]
    fn edits_on_libz(ops in ops()) {
        let libz = fs::read("/lib/x86_64-linux-gnu/libz.so.1").unwrap();
        check_sequence(&libz, "libz.so.1", &ops, None)?;
    }

    #[test]
    fn edits_on_a_gcc_program(ops in ops()) {
        check_sequence(gcc_program(), "hello", &ops, Some(&[]))?;
    }
}
