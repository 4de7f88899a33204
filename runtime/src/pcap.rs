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

/// The frames of a pcap or pcapng file, in order.
pub fn read_frames(path: &Path) -> Result<Vec<Vec<u8>>, PcapError> {
    let name = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| PcapError::Read { path: name.clone(), message: e.to_string() };
    let bytes = xpol_lang::input::read_file(path, xpol_lang::input::DATA_LIMIT).map_err(|e| err(&e))?;
    // pcapng starts with a section header block, 0x0A0D0D0A.
    if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNgReader::new(&bytes[..]).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        while let Some(block) = r.next_block() {
            match block.map_err(|e| err(&e))? {
                Block::InterfaceDescription(i) if i.linktype != DataLink::ETHERNET => {
                    return Err(PcapError::NotEthernet { path: name, link: format!("{:?}", i.linktype) });
                }
                Block::EnhancedPacket(p) => out.push(p.data.into_owned()),
                Block::SimplePacket(p) => out.push(p.data.into_owned()),
                _ => {}
            }
        }
        return Ok(out);
    }
    let mut r = PcapReader::new(&bytes[..]).map_err(|e| err(&e))?;
    if r.header().datalink != DataLink::ETHERNET {
        return Err(PcapError::NotEthernet { path: name, link: format!("{:?}", r.header().datalink) });
    }
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.map_err(|e| err(&e))?.data.into_owned());
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
