//! What the runtime reads from files a user hands it: object metadata
//! (`xpol_runtime::loader::read_meta`, on arbitrary bytes and on a valid
//! object whose `.xpol.meta` section holds the fuzzer's bytes) and packet
//! captures (`xpol_runtime::pcap::parse_frames`). Never a panic; whatever
//! `read_meta` accepts passes `ObjectMeta::check`, which the loader's
//! indexing relies on. The first byte picks what the rest is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use object::{Object, ObjectSection};
use std::sync::OnceLock;

/// A valid object (a set, a map, two hooks) and the file range of its
/// metadata section, built once.
fn seed() -> &'static (Vec<u8>, std::ops::Range<usize>) {
    static SEED: OnceLock<(Vec<u8>, std::ops::Range<usize>)> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.xpol");
        let text = "set s: cidr = { 198.51.100.0/24, 2001:db8::/32 }\n\
                    xdp /ip.src in s/ { @seen[ip.src, tcp.dport] = count(); drop }\n\
                    tc:ingress /tcp.dport in {22, 80..90}/ { pass }\n";
        std::fs::write(&path, text).expect("write seed policy");
        let b = xpol_compiler::build(&path, &xpol_compiler::BuildOptions::default());
        let object = b.output.expect("the seed policy compiles").object;
        let file = object::File::parse(&object[..]).expect("an ELF object");
        let section = file.section_by_name(xpol_lang::meta::META_SECTION).expect("a metadata section");
        let (offset, size) = section.file_range().expect("in the file");
        let range = offset as usize..(offset + size) as usize;
        (object, range)
    })
}

fn read_meta(object: &[u8]) {
    if let Ok(meta) = xpol_runtime::loader::read_meta(object) {
        assert!(meta.check().is_ok(), "read_meta accepted metadata that ObjectMeta::check refuses");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => read_meta(rest),
        1 => {
            // The section keeps its size (offsets stay valid): the bytes,
            // cut or padded with spaces (JSON whitespace).
            let (object, range) = seed();
            let mut object = object.clone();
            let section = &mut object[range.clone()];
            section.fill(b' ');
            let n = rest.len().min(section.len());
            section[..n].copy_from_slice(&rest[..n]);
            read_meta(&object);
        }
        _ => {
            if let Ok(capture) = xpol_runtime::pcap::parse_frames(rest, "fuzz") {
                assert!(capture.frames.iter().map(Vec::len).sum::<usize>() <= rest.len(), "more frame bytes than input");
            }
        }
    }
});
