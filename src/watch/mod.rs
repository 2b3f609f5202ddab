//! `watch`: follows conda roots, environments and venvs while installers write to them, and
//! fixes each prefix once its writers are done with the same pipeline as `fix`.
//!
//! Changes are grouped per target (the environment a change is in, else the watched root) and
//! a target is fixed after a quiet period. Fixing the whole prefix costs one header read per
//! file that is already right, and it resolves again the binaries whose libraries arrived after
//! them.

mod links;
mod own;
mod pending;
mod poll;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{
    AccessKind, AccessMode, CreateKind, EventKind, EventKindMask, ModifyKind, RenameMode,
};
use notify::{Config, INotifyWatcher, RecursiveMode, Watcher};
use thiserror::Error;

use crate::fix::{self, FixError, FixOptions, FixOutcome};
use crate::scan::{self, ScanResult};
use links::PackageDirs;
use own::OwnWrites;
use pending::{Pending, outermost, target_of};
use poll::Polled;
use tree::{Added, Tree};

pub use pending::QUIET;
pub use poll::INTERVAL as POLL_INTERVAL;

/// How a watch runs.
pub struct WatchOptions<'a> {
    /// The options of every fix.
    pub fix: FixOptions<'a>,
    /// Fix everything watched before following changes.
    pub initial_scan: bool,
}

#[derive(Debug, Error)]
pub enum WatchError {
    #[error("cannot start inotify: {0}")]
    Start(#[source] notify::Error),
    #[error("{0}: cannot watch: not a directory")]
    NotADirectory(PathBuf),
}

/// What a watch tells as it goes.
pub enum Report<'r> {
    /// Watching started.
    Watching {
        roots: &'r [PathBuf],
        watched: usize,
        polled: usize,
    },
    /// The inotify watch limit was reached: these directories, with everything below them, are
    /// polled instead.
    LimitReached { polled: &'r [PathBuf] },
    /// A directory could not be watched.
    Unwatched { dir: &'r Path, why: &'r str },
    /// inotify reported an error.
    WatchError(&'r notify::Error),
    /// The kernel's event queue overflowed, so changes were lost: everything is fixed again.
    Overflow,
    /// A fix ran.
    Fixed {
        roots: &'r [PathBuf],
        outcome: &'r FixOutcome,
        elapsed: Duration,
    },
    /// A fix failed as a whole.
    Failed {
        roots: &'r [PathBuf],
        error: &'r FixError,
    },
    /// Nothing is pending or running, and every change made before `as_of` has been handled.
    Idle { as_of: SystemTime },
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// Asks a running watch to stop once the fix in flight, if any, is done.
pub struct Stopper(Sender<Msg>);

impl Stopper {
    pub fn stop(&self) {
        // The watch has ended already if nobody receives.
        let _ = self.0.send(Msg::Stop);
    }
}

/// A file created and removed in a private watched directory: its event arriving proves that
/// every event queued before it was received, as one inotify queue delivers in order.
struct Barrier {
    dir: tempfile::TempDir,
    seq: u64,
    sent: Option<(u64, SystemTime)>,
}

impl Barrier {
    fn new(watcher: &mut INotifyWatcher) -> Option<Barrier> {
        let made = tempfile::Builder::new()
            .prefix("autopatch-watch-")
            .tempdir()
            .map_err(|e| e.to_string())
            .and_then(|dir| {
                watcher
                    .watch(dir.path(), RecursiveMode::NonRecursive)
                    .map(|()| dir)
                    .map_err(|e| e.to_string())
            });
        match made {
            Ok(dir) => Some(Barrier {
                dir,
                seq: 0,
                sent: None,
            }),
            Err(e) => {
                tracing::warn!("no event barrier ({e}): idle is reported without one");
                None
            }
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        self.seq += 1;
        let at = SystemTime::now();
        let path = self.dir.path().join(self.seq.to_string());
        std::fs::File::create(&path)?;
        std::fs::remove_file(&path)?;
        self.sent = Some((self.seq, at));
        Ok(())
    }

    fn owns(&self, path: &Path) -> bool {
        path.starts_with(self.dir.path())
    }

    fn is_dir(&self, path: &Path) -> bool {
        path == self.dir.path()
    }

    /// When the barrier `path` names was sent, if it is the one awaited.
    fn arrived(&mut self, path: &Path) -> Option<SystemTime> {
        let (seq, at) = self.sent?;
        if path.file_name()? == seq.to_string().as_str() {
            self.sent = None;
            return Some(at);
        }
        None
    }
}

pub struct Watch<'a> {
    roots: Vec<PathBuf>,
    options: WatchOptions<'a>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    watcher: INotifyWatcher,
    tree: Tree,
    pending: Pending,
    own: OwnWrites,
    links: PackageDirs,
    barrier: Option<Barrier>,
    /// Something happened since idle was last reported.
    dirty: bool,
    /// A poll pass found nothing changing since `dirty` was last set.
    polled_clean: bool,
    last_poll: Instant,
    /// When a change was last seen: idle waits for a quiet period, not to be told at every
    /// pause of an installer.
    last_change: Instant,
}

impl<'a> Watch<'a> {
    /// Prepares to watch `roots` (absolute directories); nothing is watched before [`run`].
    ///
    /// [`run`]: Watch::run
    pub fn new(roots: Vec<PathBuf>, options: WatchOptions<'a>) -> Result<Watch<'a>, WatchError> {
        if let Some(file) = roots.iter().find(|r| !r.is_dir()) {
            return Err(WatchError::NotADirectory(file.clone()));
        }
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        // Opens and read-only closes are left out: every scan would flood the queue with them.
        let kinds = EventKindMask::CREATE
            | EventKindMask::REMOVE
            | EventKindMask::MODIFY_DATA
            | EventKindMask::MODIFY_NAME
            | EventKindMask::ACCESS_CLOSE;
        let mut watcher = INotifyWatcher::new(
            move |e| {
                let _ = events.send(Msg::Fs(e));
            },
            Config::default().with_event_kinds(kinds),
        )
        .map_err(WatchError::Start)?;
        let barrier = Barrier::new(&mut watcher);
        Ok(Watch {
            tree: Tree::new(&roots),
            roots,
            options,
            tx,
            rx,
            watcher,
            pending: Pending::default(),
            own: OwnWrites::default(),
            links: PackageDirs::default(),
            barrier,
            dirty: true,
            polled_clean: false,
            last_poll: Instant::now(),
            last_change: Instant::now(),
        })
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Watches, fixes everything once unless told not to, then follows changes until stopped.
    pub fn run(mut self, report: &mut dyn FnMut(Report)) {
        self.watch_roots(report);
        if self.options.initial_scan {
            self.fix(self.roots.clone(), report);
        }
        loop {
            self.settle(report);
            if self.wait(report) {
                return;
            }
            if self.tree.is_polling() && Instant::now() >= self.next_poll() {
                self.poll();
            }
            if let Some(paths) = self.pending.take_due(Instant::now()) {
                let targets = paths
                    .iter()
                    .filter_map(|p| target_of(p, &self.roots))
                    .collect();
                self.fix(outermost(targets), report);
            }
        }
    }

    fn watch_roots(&mut self, report: &mut dyn FnMut(Report)) {
        let mut polled = Vec::new();
        for root in self.roots.clone() {
            let added = self.tree.add(&mut self.watcher, &root, false);
            polled.extend(added.polled.iter().cloned());
            report_unwatched(&added, report);
        }
        report(Report::Watching {
            roots: &self.roots,
            watched: self.tree.watched(),
            polled: polled.len(),
        });
        if !polled.is_empty() {
            report(Report::LimitReached { polled: &polled });
        }
    }

    /// Waits for events or the next due work, and handles every event queued; true when asked
    /// to stop.
    fn wait(&mut self, report: &mut dyn FnMut(Report)) -> bool {
        let first = match self.next_wakeup() {
            Some(at) => self
                .rx
                .recv_timeout(at.saturating_duration_since(Instant::now())),
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut stop = match first {
            Ok(msg) => self.handle(msg, report),
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(msg) = self.rx.try_recv() {
            stop |= self.handle(msg, report);
        }
        stop
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let poll = self.tree.is_polling().then(|| self.next_poll());
        let quiet_at = self.last_change + QUIET;
        let settle = (self.dirty && Instant::now() < quiet_at).then_some(quiet_at);
        [self.pending.next_due(), poll, settle]
            .into_iter()
            .flatten()
            .min()
    }

    /// Passes come often while files change, and before idle is reported.
    fn next_poll(&self) -> Instant {
        let gap = if self.tree.has_changing() {
            poll::SETTLE_INTERVAL
        } else if self.dirty && !self.polled_clean {
            poll::SETTLE_INTERVAL / 5
        } else {
            poll::INTERVAL
        };
        self.last_poll + gap
    }

    fn handle(&mut self, msg: Msg, report: &mut dyn FnMut(Report)) -> bool {
        match msg {
            Msg::Stop => return true,
            Msg::Fs(Err(e)) => report(Report::WatchError(&e)),
            Msg::Fs(Ok(event)) if event.need_rescan() => self.overflowed(report),
            Msg::Fs(Ok(event)) => {
                for path in &event.paths {
                    self.event(&event.kind, path, report);
                }
            }
        }
        false
    }

    fn overflowed(&mut self, report: &mut dyn FnMut(Report)) {
        report(Report::Overflow);
        if let Some(b) = &mut self.barrier {
            b.sent = None;
        }
        let now = Instant::now();
        for root in self.roots.clone() {
            self.pending.add(root.clone(), root, now);
        }
        self.changed();
    }

    fn event(&mut self, kind: &EventKind, path: &Path, report: &mut dyn FnMut(Report)) {
        if let Some(barrier) = &mut self.barrier
            && barrier.owns(path)
        {
            if barrier.is_dir(path) && matches!(kind, EventKind::Remove(_)) {
                // Someone cleaned the temporary directory up: idle goes on without a barrier.
                self.barrier = None;
                return;
            }
            tracing::debug!("barrier {kind:?} {}", path.display());
            let settled = self.pending.is_empty() && (!self.tree.is_polling() || self.polled_clean);
            if matches!(kind, EventKind::Create(_))
                && let Some(as_of) = barrier.arrived(path)
                && settled
            {
                report(Report::Idle { as_of });
                self.dirty = false;
            }
            return;
        }
        if scan::is_own_temp_file(path) {
            return;
        }
        let now = Instant::now();
        tracing::debug!("{kind:?} {}", path.display());
        let renamed_here = matches!(kind, EventKind::Modify(ModifyKind::Name(RenameMode::To)));
        match kind {
            EventKind::Create(CreateKind::Folder) => self.new_dir(path, report),
            _ if renamed_here && path.symlink_metadata().is_ok_and(|m| m.is_dir()) => {
                self.new_dir(path, report)
            }
            EventKind::Create(_) => self.arrived(path, now),
            _ if renamed_here => self.arrived(path, now),
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                self.pending.stop_writing(path);
                self.arrived(path, now);
            }
            // A write in progress: it ends with a close, and is not activity (a log file being
            // written forever must not hold a prefix back).
            EventKind::Modify(ModifyKind::Data(_)) => self.pending.start_writing(path),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                self.pending.stop_writing(path);
                self.own.forget(path);
                self.tree.forget(path);
                self.activity(path, now);
            }
            _ => {}
        }
    }

    fn new_dir(&mut self, dir: &Path, report: &mut dyn FnMut(Report)) {
        let added = self.tree.add(&mut self.watcher, dir, true);
        report_unwatched(&added, report);
        if !added.polled.is_empty() {
            report(Report::LimitReached {
                polled: &added.polled,
            });
        }
        // What was written in it before its watch was added is looked at now; what comes
        // later has events. An empty directory (a `__pycache__`) needs no fix.
        let now = Instant::now();
        for entry in &added.entries {
            self.arrived(entry, now);
        }
        self.activity(dir, now);
    }

    /// A file is in place and its writer is done with it.
    fn arrived(&mut self, path: &Path, now: Instant) {
        if self.own.is_own(path) {
            return;
        }
        let is_link = path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if is_link || scan::starts_with_elf_magic(path, false) {
            self.trigger(path, now);
        } else {
            self.activity(path, now);
        }
    }

    fn trigger(&mut self, path: &Path, now: Instant) {
        if !self.tree.in_package_cache(path)
            && let Some(target) = target_of(path, &self.roots)
        {
            self.pending.add(target, path.to_path_buf(), now);
        }
        self.changed();
    }

    /// A change that needs no fix of its own, but tells that a writer is still busy.
    fn activity(&mut self, path: &Path, now: Instant) {
        if !self.pending.is_empty()
            && let Some(target) = target_of(path, &self.roots)
        {
            self.pending.extend(&target, now);
        }
        self.changed();
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.polled_clean = false;
        self.last_change = Instant::now();
    }

    fn poll(&mut self) {
        self.last_poll = Instant::now();
        let found = self.tree.poll();
        let clean = found.is_empty() && !self.tree.has_changing();
        let now = Instant::now();
        for change in found {
            match change {
                Polled::Writing(p) => {
                    self.pending.start_writing(&p);
                    self.activity(&p, now);
                }
                Polled::Written(p) => {
                    self.pending.stop_writing(&p);
                    self.arrived(&p, now);
                }
                Polled::NewDir(p) | Polled::NewLink(p) => self.trigger(&p, now),
                Polled::Gone(p) => {
                    self.pending.stop_writing(&p);
                    self.activity(&p, now);
                }
            }
        }
        self.polled_clean = clean;
    }

    /// Once nothing is pending: makes sure no change is still on its way (a clean poll pass, a
    /// barrier through the event queue), then reports idle.
    fn settle(&mut self, report: &mut dyn FnMut(Report)) {
        if !self.dirty || !self.pending.is_empty() || self.last_change.elapsed() < QUIET {
            return;
        }
        if self.tree.is_polling() && !self.polled_clean {
            return;
        }
        let sent = match &mut self.barrier {
            Some(barrier) if barrier.sent.is_some() => return,
            Some(barrier) => barrier.send(),
            None => Err(std::io::Error::other("no barrier")),
        };
        if let Err(e) = sent {
            tracing::debug!("idle without a barrier: {e}");
            report(Report::Idle {
                as_of: SystemTime::now(),
            });
            self.dirty = false;
        }
    }

    /// Fixes `targets`, with the package-cache directories their environments link from, and
    /// remembers what it wrote.
    fn fix(&mut self, targets: Vec<PathBuf>, report: &mut dyn FnMut(Report)) {
        let started = Instant::now();
        let mut roots = targets.clone();
        for target in &targets {
            roots.extend(self.links.of(target, &self.roots));
        }
        let roots = outermost(roots);
        let scanned = self.narrow(scan::scan(&roots));
        match fix::fix_scanned(scanned, &roots, &self.options.fix) {
            Ok(outcome) => {
                self.own.record(&outcome);
                report(Report::Fixed {
                    roots: &roots,
                    outcome: &outcome,
                    elapsed: started.elapsed(),
                });
            }
            Err(error) => report(Report::Failed {
                roots: &roots,
                error: &error,
            }),
        }
        // Its own writes in polled directories show in the next passes.
        self.dirty = true;
        self.polled_clean = false;
    }

    /// Leaves out files still being written, and package-cache files no environment links
    /// (a package being extracted is not touched).
    fn narrow(&self, mut scanned: ScanResult) -> ScanResult {
        scanned.elf_inodes.retain(|inode| {
            !inode.names.iter().any(|n| self.pending.is_writing(n))
                && inode.names.iter().any(|n| !self.tree.in_package_cache(n))
        });
        scanned
            .symlinks
            .retain(|link| !self.tree.in_package_cache(link));
        scanned
    }
}

fn report_unwatched(added: &Added, report: &mut dyn FnMut(Report)) {
    for (dir, why) in &added.errors {
        report(Report::Unwatched { dir, why });
    }
}
