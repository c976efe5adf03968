//! The one place the engine uses `unsafe`: mapping files read-only.

use std::fs::File;
use std::io;

use crate::fs::Mapped;

/// Maps `file` read-only.
///
/// The engine maps only files it owns under the store lock, and only
/// sealed segments and index files, which it never writes or truncates
/// while a map of them is alive (a repair that truncates runs with the
/// store closed). If another process truncated the file underneath the map
/// anyway, reading the vanished pages would raise `SIGBUS`; the store lock
/// exists to rule that out.
#[expect(
    unsafe_code,
    reason = "memmap2 cannot map a file safely: the file may change underneath"
)]
pub(crate) fn map_file(file: &File) -> io::Result<Mapped> {
    if file.metadata()?.len() == 0 {
        return Ok(Mapped::empty());
    }
    // SAFETY: see the function docs. The map is read-only and the engine
    // neither writes nor truncates the file while the map lives; a
    // truncation by another process would fault on access, not corrupt
    // memory the engine trusts, and every record read from the map is
    // checked against its CRC before use.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Mapped::from_map(map))
}
