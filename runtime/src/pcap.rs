//! Reading and writing packet captures, with the pcap-file crate (pure Rust,
//! reads classic pcap and pcapng; no libpcap needed on the host).

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: link type {link} is not Ethernet; xpol programs see Ethernet frames")]
    NotEthernet { path: String, link: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// The frames of a capture, in order, and why reading stopped early.
#[derive(Debug, Default)]
pub struct Capture {
    pub frames: Vec<Vec<u8>>,
    /// Set when a record could not be read (a capture cut short while it
    /// was written, or damaged): which, and why. `frames` holds the records
    /// before it, which are still worth running.
    pub stopped: Option<String>,
}

/// The frames of a pcap or pcapng file (a regular file, at most
/// [`xpol_lang::input::DATA_LIMIT`] bytes).
pub fn read_frames(path: &Path) -> Result<Capture, PcapError> {
    let name = path.display().to_string();
    let bytes = xpol_lang::input::read_file(path, xpol_lang::input::DATA_LIMIT)
        .map_err(|e| PcapError::Read { path: name.clone(), message: e.to_string() })?;
    parse_frames(&bytes, &name)
}

/// The frames of a capture in memory; `name` names it in errors. A header
/// that cannot be read, or a link type other than Ethernet, is an error; a
/// record that cannot be read ends the capture there ([`Capture::stopped`]).
pub fn parse_frames(bytes: &[u8], name: &str) -> Result<Capture, PcapError> {
    let err = |e: &dyn std::fmt::Display| PcapError::Read { path: name.to_string(), message: e.to_string() };
    let stopped = |record: usize, read: usize, e: &dyn std::fmt::Display| {
        format!("{name}: record {record} cannot be read ({e}; the capture may be cut short); the {read} frames before it were read")
    };
    let mut out = Capture::default();
    // pcapng starts with a section header block, 0x0A0D0D0A.
    if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNgReader::new(bytes).map_err(|e| err(&e))?;
        // Blocks, counted from 2 (the section header is the first).
        let mut record = 1;
        while let Some(block) = r.next_block() {
            record += 1;
            match block {
                Err(e) => {
                    out.stopped = Some(stopped(record, out.frames.len(), &e));
                    break;
                }
                Ok(Block::InterfaceDescription(i)) if i.linktype != DataLink::ETHERNET => {
                    return Err(PcapError::NotEthernet { path: name.to_string(), link: format!("{:?}", i.linktype) });
                }
                Ok(Block::EnhancedPacket(p)) => out.frames.push(p.data.into_owned()),
                Ok(Block::SimplePacket(p)) => out.frames.push(p.data.into_owned()),
                Ok(_) => {}
            }
        }
        return Ok(out);
    }
    let mut r = PcapReader::new(bytes).map_err(|e| err(&e))?;
    if r.header().datalink != DataLink::ETHERNET {
        return Err(PcapError::NotEthernet { path: name.to_string(), link: format!("{:?}", r.header().datalink) });
    }
    while let Some(p) = r.next_packet() {
        match p {
            Ok(p) => out.frames.push(p.data.into_owned()),
            Err(e) => {
                out.stopped = Some(stopped(out.frames.len() + 1, out.frames.len(), &e));
                break;
            }
        }
    }
    Ok(out)
}

/// Writes frames as a classic Ethernet pcap (one per millisecond).
pub fn write_frames(path: &Path, frames: &[Vec<u8>]) -> Result<(), PcapError> {
    let name = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| PcapError::Write { path: name.clone(), message: e.to_string() };
    let file = std::fs::File::create(path).map_err(|e| err(&e))?;
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(file, header).map_err(|e| err(&e))?;
    for (i, f) in frames.iter().enumerate() {
        let packet = PcapPacket::new(Duration::from_millis(i as u64), f.len() as u32, f);
        w.write_packet(&packet).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// The snaplen of a streamed capture's header: libpcap's largest
/// (`MAXIMUM_SNAPLEN`). Readers (pcap-file's among them) refuse a packet
/// whose original length exceeds the header's snaplen, so the header does
/// not give the capture's own size (a log record's 128 bytes); packets
/// longer than this (BIG TCP's aggregates on TC) are recorded as this long.
pub const STREAM_SNAPLEN: u32 = 262_144;

/// A classic Ethernet pcap written packet by packet, as packets arrive
/// (`xpol run --pcap-out`, `xpol log --pcap-out`): microsecond
/// timestamps, which every reader of pcap takes; each packet keeps its
/// original length, so that readers show it cut where it was captured.
pub struct PcapStream<W: std::io::Write> {
    writer: PcapWriter<W>,
    name: String,
}

impl<W: std::io::Write> PcapStream<W> {
    /// Writes the file header to `w`; `name` names it in errors.
    pub fn new(w: W, name: &str) -> Result<PcapStream<W>, PcapError> {
        let header = PcapHeader { datalink: DataLink::ETHERNET, snaplen: STREAM_SNAPLEN, ..PcapHeader::default() };
        let writer = PcapWriter::with_header(w, header).map_err(|e| PcapError::Write { path: name.to_string(), message: e.to_string() })?;
        Ok(PcapStream { writer, name: name.to_string() })
    }

    /// One packet: when it was seen (nanoseconds since the Unix epoch),
    /// its length, and its bytes as captured.
    pub fn write(&mut self, unix_ns: u64, orig_len: u32, data: &[u8]) -> Result<(), PcapError> {
        let data = &data[..data.len().min(STREAM_SNAPLEN as usize)];
        let orig_len = orig_len.clamp(data.len() as u32, STREAM_SNAPLEN);
        let packet = PcapPacket::new(Duration::from_nanos(unix_ns), orig_len, data);
        self.writer.write_packet(&packet).map(|_| ()).map_err(|e| PcapError::Write { path: self.name.clone(), message: e.to_string() })
    }

    /// The writer, to finish the file with.
    pub fn into_inner(self) -> W {
        self.writer.into_writer()
    }
}

#[cfg(test)]
mod tests {
    /// A stream of packets, cut or whole, reads back as written.
    #[test]
    fn streamed_packets_read_back() {
        let mut s = super::PcapStream::new(Vec::new(), "test").expect("header");
        let long: Vec<u8> = (0..200u8).collect();
        s.write(1_700_000_000_123_456_789, 200, &long[..128]).expect("write");
        s.write(1_700_000_001_000_000_000, 60, &long[..60]).expect("write");
        let bytes = s.into_inner();
        let capture = super::parse_frames(&bytes, "test").expect("reads");
        assert_eq!(capture.frames, vec![long[..128].to_vec(), long[..60].to_vec()]);
        assert!(capture.stopped.is_none());
    }
}
