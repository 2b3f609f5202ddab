//! What a glibc build decides for its platform: default directories, the expansions of `$LIB`
//! and `$PLATFORM`, which `ld.so.cache` entries fit, and which `glibc-hwcaps` subdirectories the
//! CPU may use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::elf::{self, Class};

/// The Debian/Ubuntu multiarch directory name for a machine, as in `/usr/lib/x86_64-linux-gnu`.
fn multiarch_triplet(machine: u16, class: Class) -> Option<&'static str> {
    Some(match (machine, class) {
        (elf::EM_X86_64, Class::Elf64) => "x86_64-linux-gnu",
        (elf::EM_386, Class::Elf32) => "i386-linux-gnu",
        (elf::EM_AARCH64, Class::Elf64) => "aarch64-linux-gnu",
        (elf::EM_ARM, Class::Elf32) => "arm-linux-gnueabihf",
        (elf::EM_PPC64, Class::Elf64) => "powerpc64le-linux-gnu",
        (elf::EM_S390, Class::Elf64) => "s390x-linux-gnu",
        (elf::EM_RISCV, Class::Elf64) => "riscv64-linux-gnu",
        _ => return None,
    })
}

/// The system directories of the distribution's glibc for this kind of program, and what `$LIB`
/// expands to there.
///
/// glibc compiles these in (`SYSTEM_DIRS`, `DL_DST_LIB`). Debian and Ubuntu build it for multiarch
/// (`/lib/<triplet>` first, and `$LIB` = `lib/<triplet>`); Fedora, openSUSE and the like use
/// `/lib64` for 64-bit programs (`$LIB` = `lib64`); others `/lib`. A multiarch layout is recognised
/// by its directory existing.
pub(crate) fn distribution_dirs(machine: u16, class: Class) -> (Vec<PathBuf>, String) {
    if let Some(triplet) = multiarch_triplet(machine, class)
        && Path::new("/usr/lib").join(triplet).is_dir()
    {
        let dirs = ["/lib", "/usr/lib"]
            .iter()
            .map(|d| Path::new(d).join(triplet))
            .chain(["/lib".into(), "/usr/lib".into()])
            .collect();
        return (dirs, format!("lib/{triplet}"));
    }
    match class {
        Class::Elf64 => (vec!["/lib64".into(), "/usr/lib64".into()], "lib64".into()),
        Class::Elf32 => (vec!["/lib".into(), "/usr/lib".into()], "lib".into()),
    }
}

/// The interpreter a distribution's programs of this kind name, used for a library checked
/// without one.
pub(crate) fn conventional_interpreter(machine: u16, class: Class) -> Option<&'static Path> {
    let path = match (machine, class) {
        (elf::EM_X86_64, Class::Elf64) => "/lib64/ld-linux-x86-64.so.2",
        (elf::EM_386, Class::Elf32) => "/lib/ld-linux.so.2",
        (elf::EM_AARCH64, Class::Elf64) => "/lib/ld-linux-aarch64.so.1",
        (elf::EM_ARM, Class::Elf32) => "/lib/ld-linux-armhf.so.3",
        (elf::EM_PPC64, Class::Elf64) => "/lib64/ld64.so.2",
        (elf::EM_S390, Class::Elf64) => "/lib/ld64.so.1",
        (elf::EM_RISCV, Class::Elf64) => "/lib/ld-linux-riscv64-lp64d.so.1",
        _ => return None,
    };
    Some(Path::new(path))
}

/// `$PLATFORM`: the kernel's `AT_PLATFORM` for the machine. (glibc 2.26–2.36 on Intel CPUs with
/// AVX2 report `haswell` or `xeon_phi` instead; platform-named directories are rare enough in
/// run paths that this is not modelled.)
pub(crate) fn platform(machine: u16, class: Class) -> String {
    match (machine, class) {
        (elf::EM_386, Class::Elf32) => "i686".into(),
        _ => elf::machine_name(machine),
    }
}

/// Whether an `ld.so.cache` entry's flags suit a loader of this kind (glibc's
/// `_dl_cache_check_flags`).
pub(crate) fn cache_flags_fit(machine: u16, class: Class, flags: i32) -> bool {
    const FLAG_ELF: i32 = 0x0001;
    const FLAG_ELF_LIBC6: i32 = 0x0003;
    let exact = match (machine, class) {
        (elf::EM_X86_64, Class::Elf64) => 0x0300,
        (elf::EM_AARCH64, Class::Elf64) => 0x0a00,
        (elf::EM_PPC64, Class::Elf64) => 0x0500,
        (elf::EM_S390, Class::Elf64) => 0x0400,
        (elf::EM_RISCV, Class::Elf64) => 0x1000,
        (elf::EM_ARM, Class::Elf32) => 0x0900,
        _ => return flags == FLAG_ELF || flags == FLAG_ELF_LIBC6,
    };
    flags == exact | FLAG_ELF_LIBC6
}

/// The `glibc-hwcaps` subdirectories glibc searches for programs of this kind, most preferred
/// first.
///
/// Only x86-64 has them on the glibc versions in use (2.33+); the levels are those the CPU running
/// this check supports, read with the same CPUID tests glibc uses, so the answer is about this
/// machine. Programs of other machines get none. The legacy `tls`/`haswell`/`x86_64`
/// subdirectories glibc up to 2.36 also searched (removed in 2.37) are not modelled: nothing
/// installs libraries there any more.
pub(crate) fn hwcaps_subdirs(machine: u16, class: Class) -> &'static [&'static str] {
    if (machine, class) != (elf::EM_X86_64, Class::Elf64) {
        return &[];
    }
    static LEVELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LEVELS.get_or_init(x86_64_levels)
}

#[cfg(target_arch = "x86_64")]
fn x86_64_levels() -> Vec<&'static str> {
    use std::arch::is_x86_feature_detected as has;
    let v2 = has!("cmpxchg16b")
        && has!("popcnt")
        && has!("sse3")
        && has!("sse4.1")
        && has!("sse4.2")
        && has!("ssse3");
    let v3 = v2
        && has!("avx")
        && has!("avx2")
        && has!("bmi1")
        && has!("bmi2")
        && has!("f16c")
        && has!("fma")
        && has!("lzcnt")
        && has!("movbe")
        && has!("xsave");
    let v4 = v3
        && has!("avx512f")
        && has!("avx512bw")
        && has!("avx512cd")
        && has!("avx512dq")
        && has!("avx512vl");
    [(v4, "x86-64-v4"), (v3, "x86-64-v3"), (v2, "x86-64-v2")]
        .into_iter()
        .filter_map(|(supported, name)| supported.then_some(name))
        .collect()
}

/// Another architecture cannot tell what an x86-64 CPU would support.
#[cfg(not(target_arch = "x86_64"))]
fn x86_64_levels() -> Vec<&'static str> {
    Vec::new()
}
