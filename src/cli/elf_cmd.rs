//! `autopatch elf`: the low-level editor, taking patchelf's flag names.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Serialize;

use crate::apply;
use crate::elf::{self, Edits, Elf, RunPathEdit, RunPathKind};
use crate::scan::MappedFile;

#[derive(Debug, Args)]
pub struct ElfArgs {
    /// Set the program interpreter (PT_INTERP).
    #[arg(long, value_name = "FILENAME")]
    set_interpreter: Option<PathBuf>,
    #[arg(long)]
    print_interpreter: bool,
    /// Set the run path, keeping the tag kind the file has (DT_RPATH or DT_RUNPATH).
    #[arg(long, value_name = "RPATH", allow_hyphen_values = true)]
    set_rpath: Option<OsString>,
    /// Append directories to the run path.
    #[arg(long, value_name = "RPATH", allow_hyphen_values = true)]
    add_rpath: Option<OsString>,
    #[arg(long)]
    remove_rpath: bool,
    /// Drop run path entries that hold none of the needed libraries.
    #[arg(long)]
    shrink_rpath: bool,
    /// With --shrink-rpath, also drop entries not starting with one of these (colon list).
    #[arg(long, value_name = "PREFIXES")]
    allowed_rpath_prefixes: Option<OsString>,
    #[arg(long)]
    print_rpath: bool,
    /// Use DT_RPATH for the run path (converting a DT_RUNPATH).
    #[arg(long, conflicts_with = "force_runpath")]
    force_rpath: bool,
    /// Use DT_RUNPATH for the run path (converting a DT_RPATH).
    #[arg(long)]
    force_runpath: bool,
    #[arg(long, value_name = "LIBRARY")]
    add_needed: Vec<OsString>,
    #[arg(long, value_name = "LIBRARY")]
    remove_needed: Vec<OsString>,
    #[arg(long, num_args = 2, value_names = ["LIBRARY", "NEW_LIBRARY"])]
    replace_needed: Vec<OsString>,
    #[arg(long)]
    print_needed: bool,
    #[arg(long, value_name = "SONAME")]
    set_soname: Option<OsString>,
    #[arg(long)]
    print_soname: bool,
    /// Print everything: interpreter, run path and its kind, needed, soname, OS ABI, version needs.
    #[arg(long)]
    print_info: bool,
    /// Print as JSON (one object per file).
    #[arg(long)]
    json: bool,
    /// Write the result here instead of replacing the input.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Accepted for patchelf compatibility; logging is controlled by AUTOPATCH_LOG.
    #[arg(long, hide = true)]
    debug: bool,
    #[arg(required = true, value_name = "FILENAME")]
    files: Vec<PathBuf>,
}

impl ElfArgs {
    fn prints(&self) -> bool {
        self.print_interpreter
            || self.print_rpath
            || self.print_needed
            || self.print_soname
            || self.print_info
    }
}

/// Everything `--print-info` shows.
#[derive(Debug, Serialize)]
struct Info {
    file: String,
    class: elf::Class,
    machine: String,
    os_abi: u8,
    #[serde(rename = "type")]
    e_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    interpreter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpath_kind: Option<RunPathKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpath: Option<String>,
    needed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soname: Option<String>,
    version_needs: Vec<elf::VersionNeed>,
}

pub fn run(args: &ElfArgs) -> Result<bool> {
    if args.output.is_some() && args.files.len() != 1 {
        bail!("--output takes exactly one input file");
    }
    let mut all_ok = true;
    for file in &args.files {
        if let Err(err) = run_one(args, file) {
            eprintln!("autopatch: {}: {err:#}", file.display());
            all_ok = false;
        }
    }
    Ok(all_ok)
}

fn run_one(args: &ElfArgs, path: &Path) -> Result<()> {
    let input = MappedFile::open(path).context("cannot open")?;
    let elf = Elf::parse(input.bytes())?;
    let edits = edits_for(args, &elf, path)?;
    let rewrite = elf::plan(&elf, &edits)?;
    let target = args.output.as_deref().unwrap_or(path);
    match &rewrite {
        Some(rewrite) => apply::replace(target, &input.file, input.bytes(), rewrite, &input.meta)?,
        None if args.output.is_some() => {
            let same = elf::Rewrite {
                keep: input.bytes().len() as u64,
                tail: None,
                writes: Vec::new(),
                len: input.bytes().len() as u64,
            };
            apply::replace(target, &input.file, input.bytes(), &same, &input.meta)?;
        }
        None => {}
    }
    if args.prints() {
        // Print what the file holds after the edits, as patchelf does.
        let after = rewrite.as_ref().map(|r| r.apply(input.bytes()));
        let elf = match &after {
            Some(bytes) => Elf::parse(bytes)?,
            None => elf,
        };
        print(args, &elf, path)?;
    }
    Ok(())
}

fn edits_for(args: &ElfArgs, elf: &Elf, path: &Path) -> Result<Edits> {
    // Names and paths are bytes to the loader: an argument that is not UTF-8 is taken as given.
    let bytes = |s: &OsStr| s.as_bytes().to_vec();
    let mut edits = Edits {
        interpreter: args
            .set_interpreter
            .as_ref()
            .map(|p| p.as_os_str().as_encoded_bytes().to_vec()),
        soname: args.set_soname.as_deref().map(bytes),
        add_needed: args.add_needed.iter().map(|s| bytes(s)).collect(),
        remove_needed: args.remove_needed.iter().map(|s| bytes(s)).collect(),
        replace_needed: args
            .replace_needed
            .chunks_exact(2)
            .map(|pair| (bytes(&pair[0]), bytes(&pair[1])))
            .collect(),
        run_path_kind: if args.force_rpath {
            Some(RunPathKind::RPath)
        } else if args.force_runpath {
            Some(RunPathKind::RunPath)
        } else {
            None
        },
        run_path: None,
    };
    let current = elf.run_path().map(|(_, p)| p);
    edits.run_path = if args.remove_rpath {
        Some(RunPathEdit::Remove)
    } else if args.shrink_rpath {
        let prefixes = args.allowed_rpath_prefixes.as_deref().map(OsStr::as_bytes);
        current.map(|c| RunPathEdit::Set(shrink(elf, path, c, prefixes)))
    } else if let Some(p) = &args.set_rpath {
        Some(RunPathEdit::Set(bytes(p)))
    } else if let Some(add) = &args.add_rpath {
        let joined = match current {
            Some(c) if !c.is_empty() => [c, b":", add.as_bytes()].concat(),
            _ => bytes(add),
        };
        Some(RunPathEdit::Set(joined))
    } else {
        None
    };
    Ok(edits)
}

/// Keeps the run path entries that hold one of the needed libraries (of the file's machine),
/// each as the file has it.
fn shrink(elf: &Elf, path: &Path, run_path: &[u8], prefixes: Option<&[u8]>) -> Vec<u8> {
    // A bare file name lies in the current directory.
    let origin = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .as_os_str()
        .as_bytes();
    let needed = elf.needed();
    let allowed = |dir: &[u8]| {
        prefixes.is_none_or(|p| {
            p.split(|&b| b == b':')
                .filter(|x| !x.is_empty())
                .any(|x| dir.starts_with(x))
        })
    };
    let serves = |dir: &[u8]| {
        let real = crate::resolve::expand_origin_bytes(dir, origin);
        let real = Path::new(OsStr::from_bytes(&real));
        needed
            .iter()
            .any(|n| same_machine(elf, &real.join(OsStr::from_bytes(n))))
    };
    let kept: Vec<&[u8]> = run_path
        .split(|&b| b == b':')
        .filter(|d| !d.is_empty() && allowed(d) && serves(d))
        .collect();
    kept.join(&b':')
}

fn same_machine(elf: &Elf, candidate: &Path) -> bool {
    MappedFile::open(candidate)
        .ok()
        .and_then(|m| {
            Elf::parse(m.bytes())
                .ok()
                .map(|c| c.machine == elf.machine && c.class == elf.class)
        })
        .unwrap_or(false)
}

fn print(args: &ElfArgs, elf: &Elf, path: &Path) -> Result<()> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = std::io::stdout().lock();
    if args.print_interpreter && elf.interpreter().is_none() {
        return Err(anyhow!(
            "has no interpreter (a shared library or a static executable)"
        ));
    }
    if args.json || args.print_info {
        let info = Info {
            file: path.display().to_string(),
            class: elf.class,
            machine: elf::machine_name(elf.machine),
            os_abi: elf.os_abi,
            e_type: type_name(elf.e_type),
            interpreter: elf.interpreter().map(text),
            rpath_kind: elf.run_path().map(|(k, _)| k),
            rpath: elf.run_path().map(|(_, p)| text(p)),
            needed: elf.needed().into_iter().map(text).collect(),
            soname: elf.soname().map(text),
            version_needs: elf.version_needs(),
        };
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&info)?)?;
        } else {
            print_info(&mut out, &info)?;
        }
        return Ok(());
    }
    // Printed as the file has them, as patchelf does, so that they can be given back.
    let mut line = |bytes: &[u8]| -> std::io::Result<()> {
        out.write_all(bytes)?;
        out.write_all(b"\n")
    };
    if args.print_interpreter {
        line(elf.interpreter().unwrap_or_default())?;
    }
    if let Some(s) = elf.soname().filter(|_| args.print_soname) {
        line(s)?;
    }
    if args.print_rpath {
        line(elf.run_path().map(|(_, p)| p).unwrap_or_default())?;
    }
    if args.print_needed {
        for n in elf.needed() {
            line(n)?;
        }
    }
    Ok(())
}

fn print_info(out: &mut impl std::io::Write, info: &Info) -> Result<()> {
    writeln!(out, "file: {}", info.file)?;
    writeln!(
        out,
        "class: {:?}, machine: {}, type: {}, OS ABI: {}",
        info.class, info.machine, info.e_type, info.os_abi
    )?;
    if let Some(i) = &info.interpreter {
        writeln!(out, "interpreter: {i}")?;
    }
    if let (Some(kind), Some(p)) = (info.rpath_kind, &info.rpath) {
        writeln!(out, "{}: {p}", kind.name())?;
    }
    for n in &info.needed {
        writeln!(out, "needed: {n}")?;
    }
    if let Some(s) = &info.soname {
        writeln!(out, "soname: {s}")?;
    }
    for need in &info.version_needs {
        writeln!(
            out,
            "version needs: {}: {}",
            need.file,
            need.versions.join(" ")
        )?;
    }
    Ok(())
}

fn type_name(e_type: u16) -> &'static str {
    match e_type {
        elf::ET_REL => "relocatable",
        elf::ET_EXEC => "executable",
        elf::ET_DYN => "shared object or PIE",
        elf::ET_CORE => "core",
        _ => "other",
    }
}
