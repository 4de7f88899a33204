//! Following a policy's files, for `apply --watch` and `run --watch`:
//! compile the policy, learn the files the build read (the policy, its
//! includes, its set files), and wait until one of them changes.

use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A policy ready to load: its object, and the build it came from (for
/// showing a kernel rejection at its source), or `None` when the compiler
/// reported why not; and the files it read (the policy, its includes, its
/// set files).
pub struct Compiled {
    pub object: Option<(Vec<u8>, Option<xpol_compiler::Build>)>,
    pub files: Vec<PathBuf>,
}

/// Compiles a source policy, printing its diagnostics, or reads an object.
pub fn compile(policy: &Path) -> Result<Compiled> {
    if policy.extension().is_some_and(|e| e == "o") {
        let object = xpol_lang::input::read_file(policy, xpol_lang::input::DATA_LIMIT).with_context(|| format!("cannot read {}", policy.display()))?;
        return Ok(Compiled { object: Some((object, None)), files: vec![policy.to_path_buf()] });
    }
    let build = xpol_compiler::build(policy, &xpol_compiler::BuildOptions::default());
    if !build.diagnostics.is_empty() {
        eprint!("{}", xpol_lang::render::render_human(&build.diagnostics, &build.sources, std::io::stderr().is_terminal()));
    }
    let files = files_read(policy, Some(&build));
    let object = build.output.as_ref().map(|o| o.object.clone());
    Ok(Compiled { object: object.map(|o| (o, Some(build))), files })
}

/// The files a build of `policy` read; the policy alone for an object, or
/// for a build that failed before reading it.
pub fn files_read(policy: &Path, build: Option<&xpol_compiler::Build>) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = build.into_iter().flat_map(|b| b.sources.files().filter_map(|(_, f)| f.path.clone())).collect();
    if files.is_empty() {
        vec![policy.to_path_buf()]
    } else {
        files
    }
}

/// One file watcher for the whole life of a `--watch` command, started
/// before the first compile, so that a change made while a version
/// compiles or loads is not missed. It watches the files' directories, so
/// that editors that save by renaming a new file over the old one are seen.
pub struct Follower {
    watcher: notify::RecommendedWatcher,
    events: std::sync::mpsc::Receiver<notify::Result<notify::Event>>,
    dirs: Vec<PathBuf>,
    /// The files of the latest compile, canonical where they exist.
    files: Vec<PathBuf>,
}

fn dir_of(f: &Path) -> Option<PathBuf> {
    f.canonicalize().unwrap_or_else(|_| f.to_path_buf()).parent().map(Path::to_path_buf)
}

impl Follower {
    pub fn new(policy: &Path) -> Result<Follower> {
        let (tx, events) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(tx).context("starting the file watcher")?;
        let mut follower = Follower { watcher, events, dirs: Vec::new(), files: Vec::new() };
        follower.follow(&[policy.to_path_buf()])?;
        Ok(follower)
    }

    /// From now on, a change to one of `files` counts (those of the latest
    /// compile: an include may have been added or removed).
    pub fn follow(&mut self, files: &[PathBuf]) -> Result<()> {
        use notify::Watcher;
        for d in files.iter().filter_map(|f| dir_of(f)) {
            if !self.dirs.contains(&d) {
                self.watcher.watch(&d, notify::RecursiveMode::NonRecursive).with_context(|| format!("watching {}", d.display()))?;
                self.dirs.push(d);
            }
        }
        self.files = files.iter().map(|f| f.canonicalize().unwrap_or_else(|_| f.clone())).collect();
        Ok(())
    }

    /// How many files a change of which counts.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether one of the files changed, waiting at most `timeout` for it.
    /// Changes within 200 ms count as one (an editor's save, a script's
    /// writes).
    pub fn changed(&self, timeout: Duration) -> Result<bool> {
        let ours = |e: &notify::Event| {
            !e.kind.is_access() && e.paths.iter().any(|p| self.files.iter().any(|f| f == p || f.file_name() == p.file_name() && f.parent() == p.parent()))
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(event)) if ours(&event) => {
                    std::thread::sleep(Duration::from_millis(200));
                    while self.events.try_recv().is_ok() {}
                    return Ok(true);
                }
                Ok(_) if !left.is_zero() => {}
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return Ok(false),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("the file watcher stopped"),
            }
        }
    }

    /// Waits until one of the files changes (true) or `stop` is set (false).
    pub fn wait(&self, stop: &std::sync::atomic::AtomicBool) -> Result<bool> {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if self.changed(Duration::from_millis(100))? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
