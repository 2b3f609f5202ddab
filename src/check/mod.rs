//! Simulating glibc's dynamic loader: for each file, what `ld.so` will load, from where, and why
//! it would fail.
//!
//! [`Loader`] follows glibc 2.3x's rules:
//!
//! - Load order is breadth first over `DT_NEEDED`, starting at the checked file (a shared library
//!   is the start itself, as with `ld.so --list lib.so`). A name already loaded — asked for under
//!   that name, opened at that path, or carrying that soname — is not searched again, and neither
//!   is a name already searched in vain. The interpreter counts as loaded from the start. Tokens
//!   in needed names are expanded; a name containing `/` is a path.
//! - Search order for a library needed by object O: if O has no `DT_RUNPATH`, the `DT_RPATH` of
//!   O, then of the object that loaded O, and so on up to the program (each only if that object
//!   has no `DT_RUNPATH`); then `LD_LIBRARY_PATH`; then O's `DT_RUNPATH`; then the defaults
//!   ([`DefaultDirs`]): `/etc/ld.so.cache` and the system directories for a distribution's glibc,
//!   only its own directory for a Nix glibc. `DF_1_NODEFLIB` is honoured.
//! - In each directory the `glibc-hwcaps` subdirectories the CPU supports are tried first (x86-64
//!   levels only, decided by this machine's CPU; the legacy `tls`/platform subdirectories of glibc
//!   2.36 and earlier are not modelled). An empty entry is the current directory, and is noted.
//! - `$ORIGIN` is the directory of the object whose string it is: of the program's canonical path
//!   (as the kernel reports it), of the path a library was opened at otherwise. `$LIB` is what the
//!   glibc build uses (`lib` for Nix, `lib64` or `lib/<triplet>` for distributions), `$PLATFORM`
//!   the machine name.
//! - A candidate for another class or machine is passed over; one the loader refuses (not ELF,
//!   an executable, too short) stops the program.
//! - Every version an object needs must be defined by the object loaded under that name; a weak
//!   need (`VER_FLG_WEAK`) missing is no failure, as glibc only warns.
//!
//! Not modelled: `LD_PRELOAD` and `/etc/ld.so.preload`, audit modules, secure-mode restrictions.

mod cache;
mod dirs;
mod hints;
mod host;
mod loader;
mod object;
mod report;
mod resolve;
mod search;

pub use cache::{CacheEntry, CacheError, LdCache};
pub use hints::{DirHints, Hints, NoHints};
pub use loader::{DefaultDirs, Loader, LoaderConfig};
pub use report::{FileReport, Problem, ProblemKind, Resolved, Via};

use crate::fastmap::{FastMap, FastSet};

// The lock helpers below keep using a cache after a panic elsewhere: none is left half-written.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
