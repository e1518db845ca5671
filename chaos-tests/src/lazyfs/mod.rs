//! A FUSE file system that loses what was not synced, as LazyFS does for
//! Jepsen: a pass-through to a backing directory, except that file data
//! written since the file's last `fsync`/`fdatasync` lives only in this
//! process's memory (as a page cache would) until then. [`LazyFs::power_cut`]
//! throws all of it away, so the backing directory holds exactly what a
//! machine losing power would have kept: what was synced.
//!
//! The model is the data of files. Directory operations (create, rename,
//! unlink, mkdir) reach the backing directory at once, as if every
//! directory were synced; file sizes follow the data (a file grown by
//! unsynced writes shrinks back). Pages are 4 KiB; a sync writes only the
//! pages that changed. Test-only: it trusts its single user.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

mod dirty;

pub use dirty::{Dirty, PAGE};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// No attribute caching: sizes change underneath the kernel at a power cut.
const TTL: Duration = Duration::ZERO;

struct Inner {
    backing: PathBuf,
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    dirty: HashMap<u64, Dirty>,
}

impl Inner {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths
            .get(&ino.0)
            .map(|p| self.backing.join(p))
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let p = self.paths.get(&parent.0).ok_or(Errno::ENOENT)?;
        Ok(p.join(name))
    }

    fn intern(&mut self, rel: PathBuf) -> u64 {
        if let Some(i) = self.inos.get(&rel) {
            return *i;
        }
        let i = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.clone(), i);
        self.paths.insert(i, rel);
        i
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(i) = self.inos.remove(rel) {
            self.paths.remove(&i);
            self.dirty.remove(&i);
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let path = self.path(INodeNo(ino))?;
        let m = fs::symlink_metadata(&path).map_err(errno)?;
        let kind = if m.is_dir() {
            FileType::Directory
        } else if m.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = self.dirty.get(&ino).map(|d| d.size).unwrap_or(m.len());
        let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns as u32);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: t(m.ctime(), m.ctime_nsec()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn file(&self, ino: INodeNo, write: bool) -> Result<File, Errno> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.path(ino)?)
            .map_err(errno)
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

/// The file system; [`LazyFs::handle`] reaches it after it is mounted.
pub struct LazyFs {
    inner: std::sync::Arc<Mutex<Inner>>,
}

/// Reaches a mounted [`LazyFs`] from another thread.
#[derive(Clone)]
pub struct Handle(std::sync::Arc<Mutex<Inner>>);

impl Handle {
    /// Loses every unsynced write, as a power cut does; returns the files
    /// and pages lost.
    pub fn power_cut(&self) -> (usize, usize) {
        let mut i = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let files = i.dirty.len();
        let pages = i.dirty.values().map(|d| d.pages.len()).sum();
        i.dirty.clear();
        (files, pages)
    }
}

impl LazyFs {
    /// A file system over `backing`.
    pub fn new(backing: &Path) -> Self {
        let mut inner = Inner {
            backing: backing.to_path_buf(),
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: 2,
            dirty: HashMap::new(),
        };
        inner.paths.insert(1, PathBuf::new());
        inner.inos.insert(PathBuf::new(), 1);
        Self {
            inner: std::sync::Arc::new(Mutex::new(inner)),
        }
    }

    /// A handle for power cuts.
    pub fn handle(&self) -> Handle {
        Handle(self.inner.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes a file or directory from the backing directory, and forgets it.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        rm: fn(&Path) -> io::Result<()>,
    ) {
        let mut i = self.lock();
        let r = i.child(parent, name).and_then(|rel| {
            rm(&i.backing.join(&rel)).map_err(errno)?;
            i.forget_path(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn entry(&self, rel: PathBuf, reply: ReplyEntry) {
        let mut i = self.lock();
        let ino = i.intern(rel);
        match i.attr(ino) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let rel = match self.lock().child(parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let exists = fs::symlink_metadata(self.lock().backing.join(&rel)).is_ok();
        if !exists {
            return reply.error(Errno::ENOENT);
        }
        self.entry(rel, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut i = self.lock();
        let r = (|| {
            let path = i.path(ino)?;
            if let Some(m) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(m & 0o7777))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&path, uid, gid).map_err(errno)?;
            }
            if let Some(s) = size {
                let f = i.file(ino, false)?;
                let len = f.metadata().map_err(errno)?.len();
                let d = i.dirty.entry(ino.0).or_insert_with(|| Dirty::new(len));
                d.set_size(&f, s).map_err(errno)?;
            }
            i.attr(ino.0)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let rel = match self.lock().child(parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let path = self.lock().backing.join(&rel);
        let made = fs::create_dir(&path).and_then(|_| {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))
        });
        match made {
            Ok(()) => self.entry(rel, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut i = self.lock();
        let r = (|| {
            let from = i.child(parent, name)?;
            let to = i.child(newparent, newname)?;
            fs::rename(i.backing.join(&from), i.backing.join(&to)).map_err(errno)?;
            i.forget_path(&to);
            // Everything at or under `from` moves under `to`, keeping its inode.
            let moved: Vec<(PathBuf, u64)> = i
                .inos
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, n)| (p.clone(), *n))
                .collect();
            for (p, n) in moved {
                let rest = p
                    .strip_prefix(&from)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let new = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
                i.inos.remove(&p);
                i.inos.insert(new.clone(), n);
                i.paths.insert(n, new);
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Direct I/O: the kernel keeps no page cache that could outlive a
        // power cut.
        match self.lock().path(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let i = self.lock();
        let r = i.file(ino, false).and_then(|f| {
            let d = match i.dirty.get(&ino.0) {
                Some(d) => return d.read(&f, offset, u64::from(size)).map_err(errno),
                None => Dirty::new(f.metadata().map_err(errno)?.len()),
            };
            d.read(&f, offset, u64::from(size)).map_err(errno)
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut i = self.lock();
        let r = i.file(ino, false).and_then(|f| {
            let len = f.metadata().map_err(errno)?.len();
            let d = i.dirty.entry(ino.0).or_insert_with(|| Dirty::new(len));
            d.write(&f, offset, data).map_err(errno)
        });
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut i = self.lock();
        let r = match i.dirty.get(&ino.0) {
            None => Ok(()),
            Some(d) => i.file(ino, true).and_then(|f| d.sync(&f).map_err(errno)),
        };
        match r {
            Ok(()) => {
                i.dirty.remove(&ino.0);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut i = self.lock();
        let r = (|| {
            let rel = i.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)?;
            let mut names: Vec<(String, FileType)> = fs::read_dir(i.backing.join(&rel))
                .map_err(errno)?
                .flatten()
                .map(|e| {
                    let dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    let kind = if dir {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    (e.file_name().to_string_lossy().into_owned(), kind)
                })
                .collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let mut all = vec![
                (".".to_string(), FileType::Directory, ino.0),
                ("..".to_string(), FileType::Directory, 1),
            ];
            for (n, k) in names {
                let child = i.intern(rel.join(&n));
                all.push((n, k, child));
            }
            Ok(all)
        })();
        match r {
            Ok(all) => {
                for (k, (name, kind, child)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (k + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            1 << 24,
            1 << 23,
            1 << 23,
            1 << 20,
            1 << 19,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut i = self.lock();
        let r = (|| {
            let rel = i.child(parent, name)?;
            let path = i.backing.join(&rel);
            let excl = flags & 0o200 != 0; // O_EXCL
            let mut o = OpenOptions::new();
            o.write(true).create(true);
            if excl {
                o.create_new(true);
            }
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode & !umask & 0o7777);
            o.open(&path).map_err(errno)?;
            let ino = i.intern(rel);
            i.attr(ino)
        })();
        match r {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}
