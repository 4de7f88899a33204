//! Reading the files xpol is given (policies, includes, set files,
//! objects, captures), as root, safely: only regular files, and only up to
//! a size limit.
//!
//! A FIFO would hang the reader until someone writes to it, `/dev/zero`
//! would grow memory until the process is killed, `/dev/urandom` never
//! ends: none of them is a policy or a list of prefixes. Symbolic links
//! are followed (an include or a set file may well be one); what they lead
//! to must be a regular file.

use std::io::Read;
use std::path::Path;

/// The most bytes read from a policy source (the root file or an include).
pub const SOURCE_LIMIT: u64 = 16 << 20;
/// The most bytes read from a data file: a set file, an object, a capture,
/// a `xpol set replace` list. 256 MiB holds some 15 million IPv4 prefixes.
pub const DATA_LIMIT: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is larger than {} MiB, the most xpol reads from such a file", .0 >> 20)]
    TooLarge(u64),
    #[error("it is not UTF-8 text")]
    NotUtf8,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The bytes of the regular file at `path` (links followed), at most
/// `limit` of them.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer,
    // before the type can be checked. It changes nothing for a regular file.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(InputError::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a special file"
        }));
    }
    // The size first, so that a huge file is refused without reading it;
    // the cap while reading still holds for one that grows meanwhile.
    if file.metadata()?.len() > limit {
        return Err(InputError::TooLarge(limit));
    }
    read_capped(file, limit)
}

/// As [`read_file`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, InputError> {
    String::from_utf8(read_file(path, limit)?).map_err(|_| InputError::NotUtf8)
}

/// At most `limit` bytes of `reader` (a file, standard input); more is an error.
pub fn read_capped(reader: impl Read, limit: u64) -> Result<Vec<u8>, InputError> {
    let mut bytes = Vec::new();
    reader.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge(limit));
    }
    Ok(bytes)
}
