//! The page model of one file's unsynced writes (see the module above).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Page size of the model.
pub const PAGE: u64 = 4096;

/// A file's unsynced state: its logical size and the pages written since
/// its last sync.
#[derive(Debug, Default)]
pub struct Dirty {
    pub(super) size: u64,
    /// Bytes of the backing file still valid below this offset (a
    /// truncation since the last sync hides what lay beyond).
    backing_valid: u64,
    pub(super) pages: BTreeMap<u64, Vec<u8>>,
}

impl Dirty {
    /// No unsynced change over a file of `backing_len` bytes.
    pub fn new(backing_len: u64) -> Self {
        Self {
            size: backing_len,
            backing_valid: backing_len,
            pages: BTreeMap::new(),
        }
    }

    fn page<'a>(&'a mut self, file: &File, n: u64) -> io::Result<&'a mut Vec<u8>> {
        if !self.pages.contains_key(&n) {
            let mut p = vec![0u8; PAGE as usize];
            let start = n * PAGE;
            if start < self.backing_valid {
                let len = (self.backing_valid - start).min(PAGE) as usize;
                read_full(file, &mut p[..len], start)?;
            }
            self.pages.insert(n, p);
        }
        Ok(self.pages.get_mut(&n).expect("inserted above"))
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (n, within) = (at / PAGE, (at % PAGE) as usize);
            let take = (PAGE as usize - within).min(data.len() - done);
            self.page(file, n)?[within..within + take].copy_from_slice(&data[done..done + take]);
            done += take;
        }
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (n, within) = (at / PAGE, at % PAGE);
            let take = (PAGE - within).min(end - at);
            match self.pages.get(&n) {
                Some(p) => out.extend_from_slice(&p[within as usize..(within + take) as usize]),
                None => {
                    let mut buf = vec![0u8; take as usize];
                    if at < self.backing_valid {
                        let valid = (self.backing_valid - at).min(take) as usize;
                        read_full(file, &mut buf[..valid], at)?;
                    }
                    out.extend_from_slice(&buf);
                }
            }
            at += take;
        }
        Ok(out)
    }

    /// Sets the logical size (truncating or extending with zeros).
    pub fn set_size(&mut self, file: &File, size: u64) -> io::Result<()> {
        if size < self.size {
            let keep = size.div_ceil(PAGE);
            self.pages.retain(|n, _| *n < keep);
            if !size.is_multiple_of(PAGE) {
                let within = (size % PAGE) as usize;
                self.page(file, size / PAGE)?[within..].fill(0);
            }
            self.backing_valid = self.backing_valid.min(size);
        }
        self.size = size;
        Ok(())
    }

    /// Writes the changed pages and the size to `file`, and syncs it.
    pub fn sync(&self, file: &File) -> io::Result<()> {
        // What a truncation hid must not come back as the file regrows.
        if self.backing_valid < file.metadata()?.len() {
            file.set_len(self.backing_valid)?;
        }
        for (n, p) in &self.pages {
            let start = n * PAGE;
            if start >= self.size {
                continue;
            }
            let len = (self.size - start).min(PAGE) as usize;
            file.write_all_at(&p[..len], start)?;
        }
        file.set_len(self.size)?;
        file.sync_all()
    }
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break, // past the end: zeros
            n => done += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_pages_are_read_back_and_only_a_sync_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut d = Dirty::new(5000);
        d.write(&f, 4090, b"XXXXXXXXXXXX").unwrap();
        d.write(&f, 9000, b"tail").unwrap();
        let back = d.read(&f, 4088, 20).unwrap();
        assert_eq!(&back, b"aaXXXXXXXXXXXXaaaaaa");
        assert_eq!(
            d.read(&f, 5000, 10).unwrap(),
            vec![0u8; 10],
            "a hole reads as zeros"
        );
        assert_eq!(d.read(&f, 9000, 100).unwrap(), b"tail");
        // Nothing reached the file yet.
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'a'; 5000]);
        // A truncation hides what lay beyond, even if it grows again.
        d.set_size(&f, 4092).unwrap();
        d.set_size(&f, 4100).unwrap();
        assert_eq!(d.read(&f, 4088, 20).unwrap(), b"aaXX\0\0\0\0\0\0\0\0");
        d.sync(&f).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 4100);
        assert_eq!(&on_disk[4088..], b"aaXX\0\0\0\0\0\0\0\0");
    }
}
