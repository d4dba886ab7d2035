//! Seed inputs for zone-core's fuzz targets, in each target's own input format: what a guest
//! really sends (hypercalls the guest runtime makes, the requests Linux's virtio-blk driver
//! makes, a vsock session as the agent runs it). The ELF loader's seeds are the guest programs
//! the build produces (written by the `zones` crate's seed test).

use super::{DATA, RODATA};

/// `(target, name, bytes)` for hypercall_args, blk_request, vsock_packets and oci_layer.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, input) in hypercalls() {
        seeds.push(("hypercall_args", name.to_string(), input));
    }
    for (name, input) in block_requests() {
        seeds.push(("blk_request", name.to_string(), input));
    }
    seeds.push(("vsock_packets", "session".into(), vsock_session()));
    for (name, input) in layers() {
        seeds.push(("oci_layer", name.to_string(), input));
    }
    for (name, input) in pci_accesses() {
        seeds.push(("pci_config", name.to_string(), input));
    }
    seeds
}

/// Configuration accesses as Linux's PCI core and its MSI-X code make them: enumeration
/// (vendor, class, header), BAR sizing (write all ones, read, restore), the capability walk,
/// enabling memory and bus mastering, and MSI-X set-up (mask all, program entries, unmask,
/// enable), in [`super::pci_config`]'s record format.
fn pci_accesses() -> Vec<(&'static str, Vec<u8>)> {
    // kind: 0 read, 1 write, 2 table write, 3 table/PBA read, 4 trigger; len index: 0=1 1=2 2=4 3=8.
    let rec = |kind: u8, len: u8, offset: u16, value: u32| {
        let mut r = vec![kind, len];
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&value.to_le_bytes());
        r
    };
    let mut enumerate = Vec::new();
    for (offset, len) in [
        (0u16, 2u8),
        (0, 1),
        (8, 2),
        (0x0e, 0),
        (0x2c, 2),
        (0x34, 0),
        (0x3d, 0),
    ] {
        enumerate.extend(rec(0, len, offset, 0));
    }
    let mut sizing = Vec::new();
    for bar in 0..6u16 {
        let at = 0x10 + 4 * bar;
        sizing.extend(rec(0, 2, at, 0));
        sizing.extend(rec(1, 2, at, u32::MAX));
        sizing.extend(rec(0, 2, at, 0));
        sizing.extend(rec(1, 2, at, 0xfe00_0000 + u32::from(bar) * 0x10_0000));
    }
    sizing.extend(rec(1, 1, 4, 0x0006));
    let mut msix = Vec::new();
    msix.extend(rec(0, 0, 0x34, 0));
    msix.extend(rec(0, 1, 0x40, 0));
    msix.extend(rec(1, 1, 0x42, 0xc000));
    for vector in 0..4u16 {
        let at = vector * 16;
        msix.extend(rec(2, 2, at, 0xfee0_0000));
        msix.extend(rec(2, 2, at + 4, 0));
        msix.extend(rec(2, 2, at + 8, 0x40 + u32::from(vector)));
        msix.extend(rec(4, 0, vector, 0));
        msix.extend(rec(2, 2, at + 12, 0));
    }
    msix.extend(rec(1, 1, 0x42, 0x8000));
    msix.extend(rec(3, 3, 0x1000, 0));
    msix.extend(rec(4, 0, 1, 0));
    // The bus as Linux walks it through ECAM (the second half of the target): the vendor of
    // devices 0-3 (device in bits 4-5 of the second byte), the function's BAR sizing, memory
    // decoding on, then reads and writes in both BAR windows (bit 6: the 64-bit window).
    let mut bus = Vec::new();
    for device in 0..4u8 {
        bus.extend(rec(0, 2 | (device << 4), 0, 0));
        bus.extend(rec(0, 2 | (device << 4), 8, 0));
    }
    for bar in 0..6u16 {
        let at = 0x10 + 4 * bar;
        bus.extend(rec(1, 2 | 0x10, at, u32::MAX));
        bus.extend(rec(0, 2 | 0x10, at, 0));
    }
    bus.extend(rec(4, 0, 0, 0x0006));
    bus.extend(rec(3, 2, 0, 0x8));
    bus.extend(rec(2, 2, 0, 0x2000));
    bus.extend(rec(3, 3 | 0x40, 0, 0x10));
    bus.extend(rec(2, 2 | 0x40, 0, 0x0));
    vec![
        ("enumerate", enumerate),
        ("bar-sizing", sizing),
        ("msix-setup", msix),
        ("bus-walk", bus),
    ]
}

/// Image layers as image builders write them: files, directories, symbolic and hard links,
/// whiteouts and an opaque directory, long names (GNU and PAX headers), and the links a
/// hostile layer uses to climb out.
fn layers() -> Vec<(&'static str, Vec<u8>)> {
    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        data: &[u8],
        link: &str,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if link.is_empty() {
            let _ = b.append_data(&mut h, path, data);
        } else {
            let _ = b.append_link(&mut h, path, link);
        }
    }
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
    let build = |entries: &[(tar::EntryType, &str, &[u8], &str)]| {
        let mut b = tar::Builder::new(Vec::new());
        for (kind, path, data, link) in entries {
            entry(&mut b, *kind, path, data, link);
        }
        b.into_inner().unwrap_or_default()
    };
    let long = format!("usr/share/{}/file.txt", "deep-directory-name".repeat(8));
    vec![
        (
            "base",
            build(&[
                (D, "etc", b"", ""),
                (F, "etc/os-release", b"ID=debian\n", ""),
                (D, "usr/bin", b"", ""),
                (F, "usr/bin/python3", b"\x7fELF", ""),
                (S, "bin", b"", "usr/bin"),
                (H, "usr/bin/python", b"", "usr/bin/python3"),
                (F, &long, b"long name", ""),
            ]),
        ),
        (
            "whiteouts",
            build(&[
                (F, "etc/.wh.os-release", b"", ""),
                (D, "opt/app", b"", ""),
                (F, "opt/app/main.py", b"print(42)\n", ""),
                (F, "opt/app/.wh..wh..opq", b"", ""),
                (F, "bin/tool", b"through the link", ""),
            ]),
        ),
        (
            "climbing-links",
            build(&[
                (S, "etc", b"", "/"),
                (S, "up", b"", "../../../.."),
                (F, "etc/passwd", b"root::0:0::/:/bin/sh\n", ""),
                (F, "up/escaped", b"x", ""),
                (S, "loop", b"", "loop"),
                (F, "loop/x", b"", ""),
                (H, "hard", b"", "etc/passwd"),
            ]),
        ),
    ]
}

/// A hypercall input: number, six argument words, then the read-only page (after the names)
/// and the data page.
fn hypercall(nr: u32, args: [u64; 6], data: &[u8]) -> Vec<u8> {
    let mut v = nr.to_le_bytes().to_vec();
    for a in args {
        v.extend_from_slice(&a.to_le_bytes());
    }
    if !data.is_empty() {
        // The read-only part fills its page (minus the names), then the data page starts.
        v.resize(52 + zone_guest::abi::PAGE_SIZE as usize - 16, 0);
        v.extend_from_slice(data);
    }
    v
}

fn hypercalls() -> Vec<(&'static str, Vec<u8>)> {
    let two_words: Vec<u8> = [40u64, 2].iter().flat_map(|w| w.to_le_bytes()).collect();
    vec![
        (
            "console",
            hypercall(1, [DATA, 12, 0, 0, 0, 0], b"hello, zone\n"),
        ),
        (
            "host-add",
            hypercall(4, [RODATA, 3, DATA, 16, DATA + 64, 8], &two_words),
        ),
        (
            "host-echo",
            hypercall(4, [RODATA + 4, 4, DATA, 5, DATA + 64, 64], b"bytes"),
        ),
        (
            "host-unknown",
            hypercall(4, [DATA, 4, DATA, 0, DATA + 64, 8], b"nope"),
        ),
        (
            "host-small-output",
            hypercall(4, [RODATA + 4, 4, DATA, 32, DATA + 64, 2], &[7; 32]),
        ),
        ("bad-pointer", hypercall(1, [0, 64, 0, 0, 0, 0], &[])),
        ("too-large", hypercall(1, [DATA, 1 << 30, 0, 0, 0, 0], b"x")),
        ("exit", hypercall(2, [7, 0, 0, 0, 0, 0], &[])),
        ("panic", hypercall(3, [DATA, 4, 0, 0, 0, 0], b"boom")),
        ("idle", hypercall(5, [0; 6], &[])),
        ("unknown", hypercall(99, [0; 6], &[])),
    ]
}

/// A block request in the target's encoding: options, head, count, then 4 bytes a descriptor,
/// then the request buffers (the 16-byte header first).
fn block_request(options: u8, descs: &[[u8; 4]], request_type: u32, sector: u64) -> Vec<u8> {
    let mut v = vec![options, 0, descs.len() as u8];
    for d in descs {
        v.extend_from_slice(d);
    }
    v.extend_from_slice(&request_type.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&sector.to_le_bytes());
    v
}

fn block_requests() -> Vec<(&'static str, Vec<u8>)> {
    // Descriptor bytes: address slot (64-byte units), then length class | 0x10 device-writable
    // | 0x20 next.
    let header = [0, 0x20, 0, 0];
    let status = [10, 0x11, 0, 0];
    let data_in = [1, 0x34, 0, 0];
    let data_out = [1, 0x24, 0, 0];
    let id = [1, 0x32, 0, 0];
    vec![
        ("read", block_request(2, &[header, data_in, status], 0, 1)),
        ("write", block_request(2, &[header, data_out, status], 1, 2)),
        (
            "write-read-only",
            block_request(3, &[header, data_out, status], 1, 2),
        ),
        ("flush", block_request(2, &[header, [10, 0x11, 0, 0]], 4, 0)),
        ("get-id", block_request(2, &[header, id, status], 8, 0)),
        (
            "beyond-the-disk",
            block_request(2, &[header, data_in, status], 0, 1 << 40),
        ),
        ("no-status", block_request(2, &[header, data_in], 0, 1)),
    ]
}

/// A vsock session: the host opens a stream, the guest answers, data both ways, credit, drains,
/// shutdown and reset.
fn vsock_session() -> Vec<u8> {
    let packet = |op: u16, len: u32| {
        let mut h = [0u8; 44];
        h[24..28].copy_from_slice(&len.to_le_bytes());
        h[28] = 1; // stream
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h[36..40].copy_from_slice(&65536u32.to_le_bytes());
        h
    };
    // Script ops: 4 open, 0xc0 a well-addressed packet to the first stream, 1 (7) read, 2
    // (8) write, 3 (9) drain toward the guest, 5 drop the stream.
    let mut s = vec![4u8, 9, 0xc0];
    s.extend_from_slice(&packet(2, 0)); // RESPONSE
    s.push(0xc0);
    s.extend_from_slice(&packet(5, 5)); // RW "hello"
    s.extend_from_slice(b"hello");
    s.extend_from_slice(&[7, 8, 9, 0xc0]);
    s.extend_from_slice(&packet(6, 0)); // CREDIT_UPDATE
    s.push(0xc0);
    s.extend_from_slice(&packet(4, 0)); // SHUTDOWN
    s.extend_from_slice(&[7, 9, 0xc0]);
    s.extend_from_slice(&packet(3, 0)); // RST
    s.extend_from_slice(&[5, 9]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_through_their_targets() {
        for (target, name, bytes) in seeds() {
            match target {
                "hypercall_args" => super::super::hypercall(&bytes),
                "blk_request" => super::super::blk_request(&bytes),
                "vsock_packets" => super::super::vsock(&bytes),
                "oci_layer" => super::super::oci_layer(&bytes),
                "pci_config" => super::super::pci_config(&bytes),
                other => panic!("unknown target {other} ({name})"),
            }
        }
    }
}
