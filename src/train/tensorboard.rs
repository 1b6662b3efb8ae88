//! TensorBoard event files, written by hand: what `tb_dir` holds for MFTCoder's users.
//!
//! A file `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` is a sequence of TFRecords, each
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC32C of those 8 bytes | data | u32 masked CRC32C of data
//! ```
//!
//! around one serialized `tensorboard.Event` protobuf. The first event names the format
//! (`file_version: "brain.Event:2"`); each later one carries a `Summary` of `(tag, simple_value)` scalars
//! at a step. The protobuf subset needed is four wire encodings: varints (step), 64-bit (wall time),
//! 32-bit (an f32 value) and length-delimited (strings, nested messages). proto3 leaves a field at its
//! default out (step 0, wall time 0.0), except a member of a `oneof` such as `simple_value`, which is always
//! written; TensorBoard's own writer does the same, so the bytes match it (`fixtures/tensorboard/`).
//!
//! Every event is written with one `write` and flushed, so a killed run leaves every event before the kill
//! readable. Each run opens a new file whose second event is a `SessionLog` START at the first step it will
//! write (0, or the step after the checkpoint a resumed run continues from): TensorBoard then drops what
//! earlier files hold from that step on — a killed run's steps past its checkpoint, which the resumed run
//! writes again.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

// ANCHOR: crc32c
/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one byte at a time through a 256-entry table.
pub fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *entry = c;
        }
        table
    });
    !bytes.iter().fold(!0u32, |crc, &b| table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8))
}

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant, so a CRC stored inside CRC'd data does
/// not make the outer CRC trivially predictable.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}
// ANCHOR_END: crc32c

// ANCHOR: protobuf
/// The protobuf wire encodings an `Event` needs. A field's key is `number << 3 | wire type`.
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(((field as u64) << 3) | wire_type as u64);
    }
    /// wire type 0 (int64 step, enum status)
    fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64); // a negative int64 takes ten bytes, as protobuf writes it
    }
    /// wire type 1 (double wall_time)
    fn double(&mut self, field: u32, v: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// wire type 5 (float simple_value)
    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// wire type 2 (strings, bytes, nested messages)
    fn bytes(&mut self, field: u32, v: &[u8]) {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
    }
}

/// What an event carries (the `oneof what` of `tensorboard.Event` that we use).
pub enum What<'a> {
    /// field 3: the first event of a file
    FileVersion(&'a str),
    /// field 5: `Summary { repeated Value value = 1 }`, `Value { string tag = 1; float simple_value = 2 }`
    Scalars(&'a [(String, f32)]),
    /// field 7: `SessionLog { status = 1 }` with START (1): a run (re)starting at this step
    SessionStart,
}

/// A serialized `tensorboard.Event { double wall_time = 1; int64 step = 2; oneof what … }`.
pub fn event(wall_time: f64, step: i64, what: What) -> Vec<u8> {
    let mut e = Proto(Vec::new());
    if wall_time != 0.0 {
        e.double(1, wall_time);
    }
    if step != 0 {
        e.int(2, step);
    }
    match what {
        What::FileVersion(version) => e.bytes(3, version.as_bytes()),
        What::Scalars(values) => {
            let mut summary = Proto(Vec::new());
            for (tag, value) in values {
                let mut v = Proto(Vec::new());
                v.bytes(1, tag.as_bytes());
                v.float(2, *value); // a oneof member: written even when 0.0
                summary.bytes(1, &v.0);
            }
            e.bytes(5, &summary.0);
        }
        What::SessionStart => {
            let mut log = Proto(Vec::new());
            log.int(1, 1);
            e.bytes(7, &log.0);
        }
    }
    e.0
}
// ANCHOR_END: protobuf

/// The event file of one run (or one resumed part of it).
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created), its name after every events file already there so TensorBoard
    /// reads it last. `first_step` is the first step this part of the run writes: 0 for a new run, the step
    /// after its checkpoint for a resumed one. TensorBoard drops the events of earlier files from there on.
    pub fn create(dir: &Path, first_step: u64) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the tb_dir", dir.display()))?;
        let now = now();
        let latest_existing = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix("events.out.tfevents.")?.split('.').next()?.parse::<u64>().ok())
            .max();
        let seconds = latest_existing.map_or(now as u64, |s| (now as u64).max(s + 1));
        let path = dir.join(format!("events.out.tfevents.{seconds:010}.{}.{}.0", hostname(), std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let mut writer = EventWriter { file, path };
        writer.write(&event(now, 0, What::FileVersion("brain.Event:2")))?;
        writer.write(&event(now, first_step as i64, What::SessionStart))?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event holding `values` at `step`, on disk when this returns.
    pub fn scalars(&mut self, step: u64, values: &[(String, f32)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(&event(now(), step as i64, What::Scalars(values)))
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        self.file.write_all(&record(event)).with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.file.flush().with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String =
        String::from_utf8_lossy(&buf[..end]).chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if ok && !name.is_empty() { name } else { "localhost".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // the CRC catalogue's check value for "123456789", and RFC 3720's 32 zero bytes / 32 0xFF bytes
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn varints_and_proto3_defaults() {
        let e = event(0.0, 0, What::FileVersion("x"));
        assert_eq!(e, vec![0x1A, 1, b'x'], "wall time 0 and step 0 are left out");
        let e = event(0.0, 300, What::SessionStart);
        assert_eq!(e, vec![0x10, 0xAC, 0x02, 0x3A, 2, 0x08, 1]);
    }
}
