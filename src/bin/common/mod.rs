//! What both binaries share.

pub mod generate;

use anyhow::{bail, Context, Result};
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` (an object, a verifier log) to `path`, which the user
/// named on the command line, as root. What `path` is decides how:
///
/// - absent, or a regular file: through a temporary file in the same
///   directory and a rename, so that readers see the old file or the whole
///   new one and a failure leaves nothing half-written. The new file's mode
///   is 0666 less the umask, and less every permission one of `inputs` (the
///   files it was made from) lacks: an object holds its sources' rules and
///   set elements, so it is no more readable than they are.
/// - a character device or a FIFO (`/dev/null`, a pipe): written into, as
///   any program's output would be; renaming over it would replace the
///   device node with a file.
/// - a symbolic link: refused, as a rename would replace the link and an
///   open would follow it to wherever someone pointed it; except one that
///   leads to this process's standard output (`/dev/stdout`, `/dev/fd/1`),
///   a character device or a FIFO, which is written through as above.
/// - one of `inputs` (same device and inode), a directory, a block device
///   or a socket: refused, naming the path.
pub fn write_output(path: &Path, bytes: &[u8], inputs: &[&Path]) -> Result<()> {
    let (way, inputs) = output_way(path, inputs)?;
    match way {
        Way::Replace => replace(path, bytes, &inputs),
        Way::Stdout => write_into(&mut std::io::stdout().lock(), bytes, path),
        Way::Into => write_into(&mut open_special(path)?, bytes, path),
    }
}

/// Refuses `path` now, before any work, when [`write_output`] would
/// refuse it later (`--verifier-log` is written only if the kernel
/// rejects a program).
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<()> {
    output_way(path, inputs).map(|_| ())
}

/// A file written as the data comes (`--pcap-out`), where the user named
/// it, by the rules of [`write_output`] (symbolic links refused unless
/// they lead to standard output, a character device or a FIFO; inputs,
/// directories, block devices and sockets refused): a regular file is
/// written as a temporary file beside it, mode 0600 less the umask (it
/// holds what the packets carried), and renamed over it by
/// [`StreamOutput::finish`], so that readers see the old file or the
/// whole new one; a FIFO, a character device or standard output is
/// written into as the data comes (`tcpdump -r FIFO` reads it live).
// Used by `xpol` only; `xpolc` shares this module.
#[allow(dead_code)]
pub struct StreamOutput {
    to: Stream,
    path: std::path::PathBuf,
}

#[allow(dead_code)]
enum Stream {
    Temp(tempfile::NamedTempFile),
    Into(File),
    Stdout(std::io::Stdout),
}

#[allow(dead_code)]
impl StreamOutput {
    /// Opens `path` for writing, or says why not (before anything runs).
    pub fn create(path: &Path, inputs: &[&Path]) -> Result<StreamOutput> {
        let (way, _) = output_way(path, inputs)?;
        let to = match way {
            Way::Replace => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Stream::Temp(
                    tempfile::Builder::new()
                        .permissions(Permissions::from_mode(0o600))
                        .tempfile_in(dir)
                        .with_context(|| format!("cannot create a file in {}", dir.display()))?,
                )
            }
            Way::Stdout => Stream::Stdout(std::io::stdout()),
            Way::Into => Stream::Into(open_special(path)?),
        };
        Ok(StreamOutput { to, path: path.to_path_buf() })
    }

    /// Whether this is the process's standard output.
    pub fn is_stdout(&self) -> bool {
        matches!(self.to, Stream::Stdout(_))
    }

    /// Flushes what was written and, for a regular file, renames it over
    /// the path.
    pub fn finish(mut self) -> Result<()> {
        self.flush().with_context(|| format!("cannot write {}", self.path.display()))?;
        if let Stream::Temp(tmp) = self.to {
            tmp.as_file().sync_all().with_context(|| format!("cannot write {}", self.path.display()))?;
            tmp.persist(&self.path).with_context(|| format!("cannot write {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Write for StreamOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.to {
            Stream::Temp(t) => t.write(buf),
            Stream::Into(f) => f.write(buf),
            Stream::Stdout(o) => o.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.to {
            Stream::Temp(t) => t.flush(),
            Stream::Into(f) => f.flush(),
            Stream::Stdout(o) => o.flush(),
        }
    }
}

/// How [`write_output`] writes to a path.
enum Way {
    /// A new regular file, renamed over the path.
    Replace,
    /// This process's standard output.
    Stdout,
    /// Opened and written into (a character device, a FIFO).
    Into,
}

/// Opens `path`, found to be a FIFO or a character device, for writing
/// (never creating it), and checks that what it opened still is one: a
/// regular file put in its place since the check is not written into.
fn open_special(path: &Path) -> Result<File> {
    let file = OpenOptions::new().write(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let kind = file.metadata().with_context(|| format!("cannot open {}", path.display()))?.file_type();
    if !(kind.is_fifo() || kind.is_char_device()) {
        bail!("refusing to write {}: it changed while being opened, and is no longer a FIFO or a character device", path.display());
    }
    Ok(file)
}

/// How `path` is to be written (see [`write_output`]), or why not; with
/// the metadata of `inputs`.
fn output_way(path: &Path, inputs: &[&Path]) -> Result<(Way, Vec<Metadata>)> {
    let shown = path.display();
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot write {shown}")),
    };
    let inputs: Vec<Metadata> = inputs.iter().filter_map(|p| std::fs::metadata(p).ok()).collect();
    let same = |a: &Metadata, b: &Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let Some(target) = target else { return Ok((Way::Replace, inputs)) };
    let kind = target.file_type();
    if kind.is_symlink() {
        // `metadata` follows the link (and any chain of links).
        let Ok(followed) = std::fs::metadata(path) else { bail!("refusing to write {shown}: it is a symbolic link that leads nowhere; name a file instead") };
        if let Some(stdout) = stdout_metadata() {
            if same(&followed, &stdout) {
                return Ok((Way::Stdout, inputs));
            }
        }
        let kind = followed.file_type();
        if !(kind.is_char_device() || kind.is_fifo()) {
            bail!("refusing to write {shown}: it is a symbolic link (xpol neither replaces nor follows one); name the file it leads to instead");
        }
    }
    let followed = std::fs::metadata(path).with_context(|| format!("cannot write {shown}"))?;
    if inputs.iter().any(|i| same(i, &followed)) {
        bail!("refusing to write {shown}: it is one of the files being compiled; name another output");
    }
    let kind = followed.file_type();
    if kind.is_dir() {
        bail!("refusing to write {shown}: it is a directory; name a file in it");
    }
    if kind.is_char_device() || kind.is_fifo() {
        return Ok((Way::Into, inputs));
    }
    if !kind.is_file() {
        bail!("refusing to write {shown}: it is neither a regular file, a character device nor a FIFO");
    }
    Ok((Way::Replace, inputs))
}

fn write_into(w: &mut impl Write, bytes: &[u8], path: &Path) -> Result<()> {
    w.write_all(bytes).and_then(|()| w.flush()).with_context(|| format!("cannot write {}", path.display()))
}

/// The file behind this process's standard output, if it has one.
fn stdout_metadata() -> Option<Metadata> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    File::from(fd).metadata().ok()
}

/// Writes a new regular file at `path` atomically (see [`write_output`]).
fn replace(path: &Path, bytes: &[u8], inputs: &[Metadata]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Read permissions only: an input's write bits say nothing about who
    // may read what was made from it.
    let mode = inputs.iter().fold(0o666, |mode, m| mode & (0o222 | (m.mode() & 0o444)));
    // The kernel takes the umask off the mode given to open(2).
    let mut tmp = tempfile::Builder::new()
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
