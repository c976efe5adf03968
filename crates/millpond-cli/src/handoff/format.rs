//! The export file codec: a header, one record per message, an end record.
//! The byte layout is documented in docs/format.md, "Export file".
//!
//! ```text
//! header
//! 0       8     magic "MLPDEXP\0"
//! 8       4     format version, u32 (1)
//! 12      1     queue name length q (1..=128)
//! 13      1     group name length g (1..=128)
//! 14      2     reserved, 0
//! 16      8     exported at, unix ms
//! 24      q     queue name
//! 24+q    g     group name
//! 24+q+g  4     crc32 of the header bytes before it
//!
//! message record (kind 1)
//! 0       4     crc32 of bytes [4, 48 + n)
//! 4       1     kind: 1
//! 5       1     state at export: 0 ready, 1 delayed, 2 reserved, 3 buried
//! 6       2     reserved, 0
//! 8       8     id in the exported queue
//! 16      8     enqueued at, unix ms
//! 24      8     remaining delay at export, ms (0: ready)
//! 32      4     priority
//! 36      4     attempts (deliveries so far)
//! 40      4     payload length n
//! 44      4     reserved, 0
//! 48      n     payload
//!
//! end record (kind 2), last in the file
//! 0       4     crc32 of bytes [4, 32)
//! 4       1     kind: 2
//! 5       3     reserved, 0
//! 8       8     message records in the file
//! 16      8     payload bytes in the file
//! 24      4     crc32 of every byte before the end record
//! 28      4     reserved, 0
//! ```

use std::io::{self, Read, Write};

use millpond::MESSAGE_BYTES_LIMIT;

/// Export file magic.
pub const MAGIC: [u8; 8] = *b"MLPDEXP\0";
/// Format version written by this build.
pub const VERSION: u32 = 1;
/// Bytes of the header before the names.
pub const HEADER_FIXED_LEN: usize = 24;
/// Bytes of a message record before its payload.
pub const RECORD_HEAD_LEN: usize = 48;
/// Bytes of the end record.
pub const END_LEN: usize = 32;
/// Record kind: a message.
pub const KIND_MESSAGE: u8 = 1;
/// Record kind: the end.
pub const KIND_END: u8 = 2;
const _: () = assert!(RECORD_HEAD_LEN == 44 + 4 && END_LEN == 28 + 4);

/// State byte: ready.
pub const STATE_READY: u8 = 0;
/// State byte: delayed.
pub const STATE_DELAYED: u8 = 1;
/// State byte: reserved (a lease was live at export).
pub const STATE_RESERVED: u8 = 2;
/// State byte: buried.
pub const STATE_BURIED: u8 = 3;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The exported queue.
    pub queue: String,
    /// The group whose unfinished messages these are.
    pub group: String,
    /// When the export was made, unix ms.
    pub exported_ms: u64,
}

/// One exported message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Id in the exported queue.
    pub id: u64,
    /// One of the `STATE_` values.
    pub state: u8,
    /// When it was pushed, unix ms.
    pub enqueued_ms: u64,
    /// Delay left at export, ms.
    pub delay_ms: u64,
    /// Priority.
    pub priority: u32,
    /// Deliveries so far.
    pub attempts: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why a file cannot be read.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes at `offset` are damaged or missing.
    Damage {
        /// Offset of the first byte that fails.
        offset: u64,
        /// What failed.
        detail: String,
    },
    /// A newer version of millpond wrote the file.
    Version(u32),
    /// Reading failed.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Damage { offset, detail } => write!(f, "at offset {offset}: {detail}"),
            ReadError::Version(v) => write!(
                f,
                "export format version {v}, this build reads up to {VERSION}: upgrade millpond"
            ),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn u32_at(b: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(b[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(b[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Encodes a header.
pub fn encode_header(h: &Header) -> Vec<u8> {
    let (q, g) = (h.queue.as_bytes(), h.group.as_bytes());
    let q_len = u8::try_from(q.len()).expect("queue names are at most 128 bytes");
    let g_len = u8::try_from(g.len()).expect("group names are at most 128 bytes");
    let mut out = Vec::with_capacity(HEADER_FIXED_LEN + q.len() + g.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[q_len, g_len, 0, 0]);
    out.extend_from_slice(&h.exported_ms.to_le_bytes());
    out.extend_from_slice(q);
    out.extend_from_slice(g);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Appends an encoded message record to `out`.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    let n = u32::try_from(r.payload.len()).expect("payloads are at most MESSAGE_BYTES_LIMIT");
    assert!(n <= MESSAGE_BYTES_LIMIT, "payload of {n} bytes");
    assert!(r.state <= STATE_BURIED, "state {}", r.state);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[KIND_MESSAGE, r.state, 0, 0]);
    out.extend_from_slice(&r.id.to_le_bytes());
    out.extend_from_slice(&r.enqueued_ms.to_le_bytes());
    out.extend_from_slice(&r.delay_ms.to_le_bytes());
    out.extend_from_slice(&r.priority.to_le_bytes());
    out.extend_from_slice(&r.attempts.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&r.payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes the end record.
pub fn encode_end(records: u64, payload_bytes: u64, body_crc: u32) -> [u8; END_LEN] {
    let mut b = [0u8; END_LEN];
    b[4] = KIND_END;
    b[8..16].copy_from_slice(&records.to_le_bytes());
    b[16..24].copy_from_slice(&payload_bytes.to_le_bytes());
    b[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Writes an export file: the header, then [`Writer::record`] for each
/// message, then [`Writer::finish`].
#[derive(Debug)]
pub struct Writer<W: Write> {
    inner: W,
    body: crc32fast::Hasher,
    records: u64,
    payload_bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes the header.
    ///
    /// # Errors
    ///
    /// A failed write.
    pub fn new(mut inner: W, header: &Header) -> io::Result<Writer<W>> {
        let bytes = encode_header(header);
        inner.write_all(&bytes)?;
        let mut body = crc32fast::Hasher::new();
        body.update(&bytes);
        Ok(Writer {
            inner,
            body,
            records: 0,
            payload_bytes: 0,
            buf: Vec::new(),
        })
    }

    /// Writes one message record.
    ///
    /// # Errors
    ///
    /// A failed write.
    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        self.buf.clear();
        encode_record(r, &mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.body.update(&self.buf);
        self.records += 1;
        self.payload_bytes += r.payload.len() as u64;
        Ok(())
    }

    /// Writes the end record and returns the writer.
    ///
    /// # Errors
    ///
    /// A failed write.
    pub fn finish(mut self) -> io::Result<W> {
        let end = encode_end(
            self.records,
            self.payload_bytes,
            self.body.clone().finalize(),
        );
        self.inner.write_all(&end)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Reads an export file, checking every byte: [`Reader::open`], then
/// [`Reader::next`] until it returns `None` (after checking the end
/// record and that nothing follows it).
#[derive(Debug)]
pub struct Reader<R: Read> {
    inner: R,
    offset: u64,
    body: crc32fast::Hasher,
    records: u64,
    payload_bytes: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    ///
    /// Damage with its offset, a newer version, I/O errors.
    pub fn open(inner: R) -> Result<(Reader<R>, Header), ReadError> {
        let mut r = Reader {
            inner,
            offset: 0,
            body: crc32fast::Hasher::new(),
            records: 0,
            payload_bytes: 0,
            done: false,
        };
        let mut fixed = [0u8; HEADER_FIXED_LEN];
        r.fill(&mut fixed, 0, "header")?;
        if fixed[..8] != MAGIC {
            return Err(ReadError::Damage {
                offset: 0,
                detail: "not a millpond export file (bad magic)".into(),
            });
        }
        let (q_len, g_len) = (usize::from(fixed[12]), usize::from(fixed[13]));
        let mut rest = vec![0u8; q_len + g_len + 4];
        r.fill(&mut rest, 0, "header")?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed);
        hasher.update(&rest[..q_len + g_len]);
        let (stored, computed) = (u32_at(&rest, q_len + g_len), hasher.finalize());
        if stored != computed {
            return Err(ReadError::Damage {
                offset: 0,
                detail: format!(
                    "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                ),
            });
        }
        let version = u32_at(&fixed, 8);
        if version > VERSION {
            return Err(ReadError::Version(version));
        }
        let name = |bytes: &[u8], offset: usize, what: &str| -> Result<String, ReadError> {
            std::str::from_utf8(bytes)
                .ok()
                .filter(|n| millpond::validate_name(n).is_ok())
                .map(str::to_owned)
                .ok_or_else(|| ReadError::Damage {
                    offset: offset as u64,
                    detail: format!("the {what} name is not a valid name"),
                })
        };
        let header = Header {
            queue: name(&rest[..q_len], HEADER_FIXED_LEN, "queue")?,
            group: name(
                &rest[q_len..q_len + g_len],
                HEADER_FIXED_LEN + q_len,
                "group",
            )?,
            exported_ms: u64_at(&fixed, 16),
        };
        r.body.update(&fixed);
        r.body.update(&rest);
        Ok((r, header))
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The checksum of the whole file (the one its end record holds, which
    /// `next` has checked), once `next` has returned `None`.
    pub fn checksum(&self) -> Option<u32> {
        self.done.then(|| self.body.clone().finalize())
    }

    /// Reads exactly `buf.len()` bytes of the `what` that starts at `start`.
    fn fill(&mut self, buf: &mut [u8], start: u64, what: &str) -> Result<(), ReadError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    let end = self.offset + got as u64;
                    let detail = if end == start {
                        format!("the file ends here, where a {what} should start: it is truncated")
                    } else {
                        format!(
                            "the file ends at offset {end}, inside the {what} that starts here: \
                             it is truncated"
                        )
                    };
                    return Err(ReadError::Damage {
                        offset: start,
                        detail,
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        self.offset += got as u64;
        Ok(())
    }

    /// The next message record, or `None` after a valid end record.
    ///
    /// # Errors
    ///
    /// Damage with its offset (a record or the end record that fails its
    /// checksum, a truncated file, bytes after the end), I/O errors.
    pub fn next(&mut self) -> Result<Option<Record>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let start = self.offset;
        let mut head = [0u8; RECORD_HEAD_LEN];
        self.fill(&mut head[..8], start, "record (or the end record)")?;
        match head[4] {
            KIND_MESSAGE => {}
            KIND_END => return self.end(start, &head[..8]).map(|()| None),
            kind => {
                return Err(ReadError::Damage {
                    offset: start,
                    detail: format!("unknown record kind {kind}: the record is damaged"),
                });
            }
        }
        self.fill(&mut head[8..], start, "record")?;
        let n = u32_at(&head, 40);
        if n > MESSAGE_BYTES_LIMIT {
            return Err(ReadError::Damage {
                offset: start,
                detail: format!(
                    "payload length {n} exceeds the {} MiB limit: the record is damaged",
                    MESSAGE_BYTES_LIMIT >> 20
                ),
            });
        }
        let mut payload = vec![0u8; n as usize];
        self.fill(&mut payload, start, "record")?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head[4..]);
        hasher.update(&payload);
        let (stored, computed) = (u32_at(&head, 0), hasher.finalize());
        if stored != computed {
            return Err(ReadError::Damage {
                offset: start,
                detail: format!(
                    "record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                ),
            });
        }
        let state = head[5];
        if state > STATE_BURIED {
            return Err(ReadError::Damage {
                offset: start + 5,
                detail: format!("unknown message state {state}"),
            });
        }
        self.body.update(&head);
        self.body.update(&payload);
        self.records += 1;
        self.payload_bytes += u64::from(n);
        Ok(Some(Record {
            id: u64_at(&head, 8),
            state,
            enqueued_ms: u64_at(&head, 16),
            delay_ms: u64_at(&head, 24),
            priority: u32_at(&head, 32),
            attempts: u32_at(&head, 36),
            payload,
        }))
    }

    fn end(&mut self, start: u64, first: &[u8]) -> Result<(), ReadError> {
        let mut b = [0u8; END_LEN];
        b[..8].copy_from_slice(first);
        self.fill(&mut b[8..], start, "end record")?;
        let (stored, computed) = (u32_at(&b, 0), crc32fast::hash(&b[4..]));
        if stored != computed {
            return Err(ReadError::Damage {
                offset: start,
                detail: format!(
                    "end record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                ),
            });
        }
        let (records, payload_bytes) = (u64_at(&b, 8), u64_at(&b, 16));
        if records != self.records || payload_bytes != self.payload_bytes {
            return Err(ReadError::Damage {
                offset: start,
                detail: format!(
                    "the end record counts {records} records of {payload_bytes} payload bytes, \
                     the file holds {} of {}: records are missing or duplicated",
                    self.records, self.payload_bytes
                ),
            });
        }
        let (stored, computed) = (u32_at(&b, 24), self.body.clone().finalize());
        if stored != computed {
            return Err(ReadError::Damage {
                offset: start + 24,
                detail: format!(
                    "checksum of the whole file mismatch: stored {stored:#010x}, computed \
                     {computed:#010x}: records were changed or reordered"
                ),
            });
        }
        let mut extra = [0u8; 1];
        loop {
            match self.inner.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(ReadError::Damage {
                        offset: self.offset,
                        detail: "bytes after the end record".into(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        self.done = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<Record>, Vec<u8>) {
        let header = Header {
            queue: "jobs".into(),
            group: "default".into(),
            exported_ms: 1_700_000_000_000,
        };
        let records: Vec<Record> = (0..5u8)
            .map(|i| Record {
                id: 10 + u64::from(i),
                state: i % 4,
                enqueued_ms: 1_600_000_000_000 + u64::from(i),
                delay_ms: u64::from(i) * 1000,
                priority: u32::from(i) * 3,
                attempts: u32::from(i),
                payload: vec![i; usize::from(i) * 7],
            })
            .collect();
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        for r in &records {
            w.record(r).unwrap();
        }
        let bytes = w.finish().unwrap();
        (header, records, bytes)
    }

    fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Record>), ReadError> {
        let (mut reader, header) = Reader::open(bytes)?;
        let mut records = Vec::new();
        while let Some(r) = reader.next()? {
            records.push(r);
        }
        Ok((header, records))
    }

    /// The worked example of docs/format.md ("Export file"), produced by an
    /// independent Python encoder.
    const GOLDEN_HEX: &str = "4d4c50444558500001000000010700000068e5cf8b0100007164656661756c74\
        c643e3631842eb390100000001000000000000000068e5cf8b01000000000000000000000000000000\
        000000050000000000000068656c6c6fd073e7750200000001000000000000000500000000000000d2\
        06b7b100000000";

    #[test]
    fn encodes_the_documented_example() {
        let golden: Vec<u8> = (0..GOLDEN_HEX.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN_HEX[i..i + 2], 16).unwrap())
            .collect();
        let header = Header {
            queue: "q".into(),
            group: "default".into(),
            exported_ms: 1_700_000_000_000,
        };
        let record = Record {
            id: 1,
            state: STATE_READY,
            enqueued_ms: 1_700_000_000_000,
            delay_ms: 0,
            priority: 0,
            attempts: 0,
            payload: b"hello".to_vec(),
        };
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        w.record(&record).unwrap();
        assert_eq!(w.finish().unwrap(), golden);
        let (h, r) = read_all(&golden).unwrap();
        assert_eq!((h, r), (header, vec![record]));
    }

    #[test]
    fn round_trip() {
        let (header, records, bytes) = sample();
        let (h, r) = read_all(&bytes).unwrap();
        assert_eq!(h, header);
        assert_eq!(r, records);
        assert_eq!(
            bytes.len(),
            HEADER_FIXED_LEN
                + 4
                + 7
                + 4
                + records
                    .iter()
                    .map(|r| RECORD_HEAD_LEN + r.payload.len())
                    .sum::<usize>()
                + END_LEN
        );
    }

    #[test]
    fn every_truncation_is_refused_with_an_offset_inside_the_file() {
        let (_, _, bytes) = sample();
        for len in 0..bytes.len() {
            match read_all(&bytes[..len]) {
                Err(ReadError::Damage { offset, detail }) => {
                    assert!(offset <= len as u64, "len {len}: offset {offset}");
                    assert!(
                        detail.contains("truncated") || len < 8,
                        "len {len}: {detail}"
                    );
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let (_, _, bytes) = sample();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[i] ^= bit;
                match read_all(&damaged) {
                    Err(ReadError::Damage { offset, .. }) => {
                        assert!(offset <= i as u64, "byte {i}: offset {offset}");
                    }
                    // A flipped version bit may read as a newer version.
                    Err(ReadError::Version(_)) if (8..12).contains(&i) => {}
                    other => panic!("byte {i} bit {bit:#x}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn bytes_after_the_end_are_refused() {
        let (_, _, mut bytes) = sample();
        let len = bytes.len() as u64;
        bytes.push(0);
        match read_all(&bytes) {
            Err(ReadError::Damage { offset, .. }) => assert_eq!(offset, len),
            other => panic!("{other:?}"),
        }
    }
}
