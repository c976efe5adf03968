//! Walking a segment file: its frames in order, and the damaged ranges
//! between them, the way the engine's recovery scan sees them (a bad frame
//! followed by a valid one is interior damage; bad bytes up to the end of
//! the file are a bad tail).

use std::path::{Path, PathBuf};

use millpond::MESSAGE_BYTES_LIMIT;
use millpond::log::frame::{self, Decoded, FrameRef};
use millpond::log::segment;

use crate::failure::Error;
use crate::open;

/// What the walk finds at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A frame whose checksum matches, with an id above the previous one.
    Frame {
        /// Offset of the frame in the file.
        offset: u64,
        /// The decoded frame.
        frame: FrameRef<'a>,
    },
    /// Bytes that are not a valid frame, followed by a valid frame.
    Damage {
        /// Offset of the first bad byte.
        offset: u64,
        /// Bytes up to the next valid frame.
        len: u64,
        /// Why the bytes at `offset` are not a valid frame.
        detail: String,
    },
    /// Bytes that are not a valid frame, up to the end of the file.
    Tail {
        /// Offset of the first bad byte.
        offset: u64,
        /// Bytes up to the end of the file.
        len: u64,
        /// Why the bytes at `offset` are not a valid frame.
        detail: String,
    },
    /// Zero bytes from here to the end of the file: in the newest segment,
    /// space the writer preallocated ahead of its frames (or unsynced
    /// writes that reached the disk as zeros); no frame was there.
    Zeros {
        /// Offset of the first zero byte.
        offset: u64,
        /// Bytes up to the end of the file.
        len: u64,
    },
    /// A frame with a valid checksum but flags this build does not know (a
    /// newer millpond wrote it); the walk stops.
    Newer {
        /// Offset of the frame.
        offset: u64,
        /// Its flags.
        flags: u32,
    },
}

impl Item<'_> {
    /// Where in the file the item starts.
    pub fn offset(&self) -> u64 {
        match self {
            Item::Frame { offset, .. }
            | Item::Damage { offset, .. }
            | Item::Tail { offset, .. }
            | Item::Zeros { offset, .. }
            | Item::Newer { offset, .. } => *offset,
        }
    }
}

/// Where the next open scans the newest segment from: past what its index
/// file describes, if that is valid for it, else from its first frame.
fn scanned_from(first_id: u64, segment_len: u64, index: Option<&[u8]>) -> u64 {
    index
        .and_then(|b| millpond::log::index::decode(b).ok())
        .filter(|m| {
            m.first_id == first_id
                && m.covered_bytes >= segment::HEADER_LEN
                && m.covered_bytes <= segment_len
        })
        .map_or(segment::HEADER_LEN, |m| m.covered_bytes)
}

/// A hole of unsynced writes that reached the disk out of order in the
/// newest segment, where the next open cuts it as at a torn tail: the first
/// damaged range at or past [`scanned_from`], when it is one by the
/// engine's rule (`segment::unsynced_gap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Offset of the hole: the segment ends here after the next open.
    pub offset: u64,
    /// Bytes from `offset` to the end of the sector that did not land.
    pub lost: u64,
    /// Bytes of the damaged range (zeros, then the rest of a frame).
    pub damaged: u64,
    /// Valid frames after it, which the open drops.
    pub frames_after: u64,
}

impl Cut {
    /// What the hole is, for a report: the text the open reports it with.
    pub fn detail(&self) -> String {
        segment::unsynced_gap_detail(self.lost, self.damaged, self.frames_after)
    }
}

/// The [`Cut`] of the newest segment's `bytes`, if it has one; `index` is
/// its index file's bytes, if it has one.
pub fn unsynced_cut(bytes: &[u8], first_id: u64, index: Option<&[u8]>) -> Option<Cut> {
    let from = scanned_from(first_id, bytes.len() as u64, index);
    let mut items = Frames::new(bytes, first_id).skip_while(|i| i.offset() < from);
    let (offset, lost, damaged) = loop {
        match items.next()? {
            Item::Frame { .. } => {}
            Item::Damage { offset, len, .. } => {
                let lost = segment::unsynced_gap(bytes, offset, len)?;
                break (offset, lost, len);
            }
            _ => return None,
        }
    };
    let frames_after = items.filter(|i| matches!(i, Item::Frame { .. })).count() as u64;
    Some(Cut {
        offset,
        lost,
        damaged,
        frames_after,
    })
}

/// An iterator over the frames of a segment file's bytes.
#[derive(Debug)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    next_id: u64,
    done: bool,
}

impl<'a> Frames<'a> {
    /// Walks `bytes` (a whole segment file) from its first frame; ids must
    /// be at least `first_id` and ascend.
    pub fn new(bytes: &'a [u8], first_id: u64) -> Frames<'a> {
        Frames {
            bytes,
            pos: segment::HEADER_LEN as usize,
            next_id: first_id,
            done: false,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.done || self.pos >= self.bytes.len() {
            return None;
        }
        let pos = self.pos;
        if self.bytes[pos..].iter().all(|&b| b == 0) {
            self.done = true;
            return Some(Item::Zeros {
                offset: pos as u64,
                len: (self.bytes.len() - pos) as u64,
            });
        }
        let detail = match frame::decode(&self.bytes[pos..], MESSAGE_BYTES_LIMIT) {
            Decoded::Frame(f) if f.id >= self.next_id => {
                self.next_id = f.id + 1;
                self.pos += f.len;
                return Some(Item::Frame {
                    offset: pos as u64,
                    frame: f,
                });
            }
            Decoded::Bad(frame::Bad::Flags(flags)) => {
                self.done = true;
                return Some(Item::Newer {
                    offset: pos as u64,
                    flags,
                });
            }
            Decoded::Frame(f) => format!(
                "frame id {} does not follow id {}",
                f.id,
                self.next_id.saturating_sub(1)
            ),
            Decoded::Incomplete => format!(
                "incomplete frame: the file ends {} bytes after it starts",
                self.bytes.len() - pos
            ),
            Decoded::Bad(bad) => bad.to_string(),
        };
        match segment::resync(self.bytes, pos + 1, self.next_id, MESSAGE_BYTES_LIMIT) {
            Some(next) => {
                self.pos = next;
                Some(Item::Damage {
                    offset: pos as u64,
                    len: (next - pos) as u64,
                    detail,
                })
            }
            None => {
                self.done = true;
                Some(Item::Tail {
                    offset: pos as u64,
                    len: (self.bytes.len() - pos) as u64,
                    detail,
                })
            }
        }
    }
}

/// A segment file of a queue.
#[derive(Debug, Clone)]
pub struct SegmentPaths {
    /// Its first id (from its name).
    pub first_id: u64,
    /// The segment file.
    pub path: PathBuf,
    /// Its index file (which may not exist).
    pub index_path: PathBuf,
}

/// The segment files in a queue's directory, by first id.
///
/// # Errors
///
/// I/O errors.
pub fn segments(queue_dir: &Path) -> Result<Vec<SegmentPaths>, Error> {
    let mut out: Vec<SegmentPaths> = open::list_files(queue_dir)?
        .iter()
        .filter_map(|name| segment::parse_file_name(name))
        .map(|first_id| {
            let (path, index_path) = segment::paths(queue_dir, first_id);
            SegmentPaths {
                first_id,
                path,
                index_path,
            }
        })
        .collect();
    out.sort_by_key(|s| s.first_id);
    Ok(out)
}

/// A header problem, as the engine reports it.
pub fn header_problem(e: &segment::HeaderError) -> String {
    match e {
        segment::HeaderError::Short => "segment shorter than its header".to_owned(),
        segment::HeaderError::Invalid(why) => why.clone(),
        segment::HeaderError::Version(v) => format!(
            "segment format version {v}, this build reads up to {}: upgrade millpond",
            segment::VERSION
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millpond::log::frame::{Attrs, encode};

    fn segment_bytes(first: u64, n: u64) -> Vec<u8> {
        let mut b = segment::encode_header(first).to_vec();
        for id in first..first + n {
            encode(&mut b, id, 1000 + id, &Attrs::default(), &[id as u8; 40]);
        }
        b
    }

    const FRAME_LEN: u64 = 28 + 40;

    #[test]
    fn walks_every_frame() {
        let b = segment_bytes(5, 4);
        let ids: Vec<u64> = Frames::new(&b, 5)
            .map(|item| match item {
                Item::Frame { frame, .. } => frame.id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![5, 6, 7, 8]);
    }

    #[test]
    fn reports_interior_damage_and_continues() {
        let mut b = segment_bytes(1, 5);
        let damaged_at = segment::HEADER_LEN + 2 * FRAME_LEN;
        b[(damaged_at + 30) as usize] ^= 0x01;
        let items: Vec<Item<'_>> = Frames::new(&b, 1).collect();
        assert_eq!(items.len(), 5);
        match &items[2] {
            Item::Damage {
                offset,
                len,
                detail,
            } => {
                assert_eq!((*offset, *len), (damaged_at, FRAME_LEN));
                assert!(detail.contains("checksum"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(items[3], Item::Frame { frame, .. } if frame.id == 4));
    }

    #[test]
    fn zeros_to_the_end_are_not_a_bad_tail() {
        let mut b = segment_bytes(1, 3);
        let end = b.len() as u64;
        b.extend_from_slice(&[0; 700]);
        let items: Vec<Item<'_>> = Frames::new(&b, 1).collect();
        assert_eq!(items.len(), 4);
        assert_eq!(
            items[3],
            Item::Zeros {
                offset: end,
                len: 700
            }
        );
        // Zeros with anything after them are not.
        b.push(1);
        let items: Vec<Item<'_>> = Frames::new(&b, 1).collect();
        assert!(matches!(&items[3], Item::Tail { offset, .. } if *offset == end));
    }

    #[test]
    fn reports_a_bad_tail() {
        let mut b = segment_bytes(1, 3);
        let len = b.len();
        b.truncate(len - 5);
        let items: Vec<Item<'_>> = Frames::new(&b, 1).collect();
        assert_eq!(items.len(), 3);
        assert!(matches!(
            &items[2],
            Item::Tail { offset, len, .. } if *offset == segment::HEADER_LEN + 2 * FRAME_LEN && *len == FRAME_LEN - 5
        ));
    }
}
