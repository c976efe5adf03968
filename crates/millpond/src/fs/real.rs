//! The operating system's file system.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{Fs, FsFile, LockGuard, Mapped, OpenMode};

/// The real file system, through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl Fs for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                o.write(true);
            }
            OpenMode::CreateNew => {
                o.write(true).create_new(true);
            }
            OpenMode::CreateTruncate => {
                o.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(RealFile(o.open(path)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard::new(
                path.to_owned(),
                Box::new(HeldLock(file)),
            ))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// The open lock file. Dropping it unlocks explicitly instead of relying
/// on the close: a child process forked by another thread (before its
/// `exec` closes the inherited descriptor) shares the open file
/// description, and with it the lock, so a close alone could leave the store
/// locked for a moment after [`Store::close`](crate::Store::close).
struct HeldLock(File);

impl Drop for HeldLock {
    fn drop(&mut self) {
        // An unlock that fails leaves the close to release it.
        let _ = self.0.unlock();
    }
}

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    #[cfg(target_os = "linux")]
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
        // Skip what was written: whole buffers, then a part of one.
        let (mut first, mut skip) = (0, 0);
        while first < bufs.len() {
            let slices: Vec<io::IoSlice<'_>> = std::iter::once(&bufs[first][skip..])
                .chain(bufs[first + 1..].iter().copied())
                .take(1024)
                .map(io::IoSlice::new)
                .collect();
            let mut n = match rustix::io::pwritev(&self.0, &slices, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            offset += n as u64;
            while first < bufs.len() && n >= bufs[first].len() - skip {
                n -= bufs[first].len() - skip;
                first += 1;
                skip = 0;
            }
            skip += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn map(&self) -> io::Result<Mapped> {
        crate::mmap::map_file(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::OpenMode;

    /// More buffers than one `pwritev` takes (1,024), of every size from
    /// empty up, written from an offset past the end: the file holds them
    /// one after the other, after zeros.
    #[test]
    fn vectored_write_lands_every_buffer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = RealFs.open(&path, OpenMode::CreateNew).unwrap();
        let bufs: Vec<Vec<u8>> = (0..2_500u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize * 3])
            .collect();
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        file.write_all_vectored_at(&refs, 100).unwrap();
        let want: Vec<u8> = std::iter::repeat_n(0, 100)
            .chain(bufs.iter().flatten().copied())
            .collect();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
