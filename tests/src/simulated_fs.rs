//! A file system that loses power on demand, mounted with FUSE, for running the real
//! `foldhost serve` on it.
//!
//! Each file's bytes live on a [`SimulatedDisk`]: durable as of its last `fsync`/`fdatasync`,
//! the rest cached. Directory entries (creating, renaming and removing files) are durable only
//! once the directory itself is synced, as POSIX promises and no more: a file created or
//! renamed into place without syncing its directory may vanish, or come back under its old
//! name, after a cut. [`SimulatedFs::cut`] fails every later operation (the process using it
//! should be killed at the same moment); [`SimulatedFs::image_after_cut`] returns the tree the
//! disk could hold afterwards, to mount again or to write out with [`Tree::write_to`].
//!
//! Mounting needs `/dev/fuse` and root (the mount syscall); see [`SimulatedFs::mount`].

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use foldhost::journal::StorageBackend;
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use rand::Rng;

use crate::simulated_disk::{Fsync, Loss, SimulatedDisk};

/// A directory tree with file contents: what a file system holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree(pub BTreeMap<OsString, Entry>);

/// A file or a directory of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File(Vec<u8>),
    Dir(Tree),
}

impl Tree {
    /// Writes the tree out under `dir` (which must exist).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for (name, entry) in &self.0 {
            let path = dir.join(name);
            match entry {
                Entry::File(bytes) => std::fs::write(&path, bytes)?,
                Entry::Dir(tree) => {
                    std::fs::create_dir(&path)?;
                    tree.write_to(&path)?;
                }
            }
        }
        Ok(())
    }
}

enum Node {
    File(SimulatedDisk),
    Dir {
        /// What lookups see.
        live: BTreeMap<OsString, u64>,
        /// As of the directory's last sync.
        durable: BTreeMap<OsString, u64>,
    },
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    cut: bool,
}

/// The file system; clones share it. See the [module docs](self).
#[derive(Clone)]
pub struct SimulatedFs {
    state: Arc<Mutex<State>>,
}

/// Lookups and attributes are never cached by the kernel: sizes change behind its back.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = INodeNo::ROOT.0;

impl SimulatedFs {
    /// A file system holding `tree`, durably.
    pub fn new(tree: &Tree) -> SimulatedFs {
        let mut state = State {
            nodes: HashMap::new(),
            next_ino: ROOT,
            cut: false,
        };
        state.add_tree(tree);
        SimulatedFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Mounts it at `mountpoint` (an empty directory) until the session is dropped.
    pub fn mount(&self, mountpoint: &Path) -> std::io::Result<BackgroundSession> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("foldhost-powerloss".to_owned()),
            MountOption::DefaultPermissions,
        ];
        fuser::spawn_mount(self.clone(), mountpoint, &config)
    }

    /// Cuts the power: every later operation fails with EIO.
    pub fn cut(&self) {
        let mut state = self.lock();
        state.cut = true;
        for node in state.nodes.values() {
            if let Node::File(disk) = node {
                disk.cut();
            }
        }
    }

    /// Cuts the power (if still on) and returns what the disk could hold afterwards: each
    /// directory as of its last sync (three times in four) or as it was at the cut, each file's
    /// synced bytes plus what `loss` lets through of the rest.
    pub fn image_after_cut(&self, loss: Loss, rng: &mut impl Rng) -> Tree {
        self.cut();
        let state = self.lock();
        state.image(ROOT, loss, rng)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("simulated file system lock")
    }

    /// Runs `op` on the state unless the power is cut.
    fn with<T>(&self, op: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut state = self.lock();
        if state.cut {
            return Err(Errno::EIO);
        }
        op(&mut state)
    }
}

impl State {
    fn add_tree(&mut self, tree: &Tree) -> u64 {
        let ino = self.new_ino();
        let mut entries = BTreeMap::new();
        for (name, entry) in &tree.0 {
            let child = match entry {
                Entry::File(bytes) => self.add_file(bytes.clone()),
                Entry::Dir(tree) => self.add_tree(tree),
            };
            entries.insert(name.clone(), child);
        }
        let node = Node::Dir {
            live: entries.clone(),
            durable: entries,
        };
        self.nodes.insert(ino, node);
        ino
    }

    fn add_file(&mut self, bytes: Vec<u8>) -> u64 {
        let ino = self.new_ino();
        let disk = SimulatedDisk::new(bytes, Fsync::Honest);
        self.nodes.insert(ino, Node::File(disk));
        ino
    }

    fn new_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn image(&self, ino: u64, loss: Loss, rng: &mut impl Rng) -> Tree {
        let Some(Node::Dir { live, durable }) = self.nodes.get(&ino) else {
            unreachable!("the image starts at a directory");
        };
        // Unsynced changes to a directory are usually lost, sometimes kept.
        let entries = if rng.random_ratio(3, 4) {
            durable
        } else {
            live
        };
        let mut tree = Tree::default();
        for (name, child) in entries {
            let entry = match &self.nodes[child] {
                Node::File(disk) => Entry::File(disk.image_after_cut(loss, rng)),
                Node::Dir { .. } => Entry::Dir(self.image(*child, loss, rng)),
            };
            tree.0.insert(name.clone(), entry);
        }
        tree
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn entries(&mut self, ino: INodeNo) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino.0) {
            Some(Node::Dir { live, .. }) => Ok(live),
            Some(Node::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn disk(&self, ino: INodeNo) -> Result<&SimulatedDisk, Errno> {
        match self.node(ino)? {
            Node::File(disk) => Ok(disk),
            Node::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let (kind, perm, size) = match self.nodes.get(&ino).ok_or(Errno::ENOENT)? {
            Node::File(disk) => (FileType::RegularFile, 0o644, disk.len().map_err(io)?),
            Node::Dir { live, .. } => (FileType::Directory, 0o755, live.len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        match self.node(parent)? {
            Node::Dir { live, .. } => self.attr(*live.get(name).ok_or(Errno::ENOENT)?),
            Node::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Adds a new node named `name` in `parent`.
    fn create(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<FileAttr, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = if dir {
            self.add_tree(&Tree::default())
        } else {
            self.add_file(Vec::new())
        };
        self.entries(parent)?.insert(name.to_owned(), ino);
        self.attr(ino)
    }
}

fn io(error: std::io::Error) -> Errno {
    error.into()
}

fn reply_empty(reply: ReplyEmpty, outcome: Result<(), Errno>) {
    match outcome {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(errno),
    }
}

fn reply_entry(reply: ReplyEntry, outcome: Result<FileAttr, Errno>) {
    match outcome {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(errno) => reply.error(errno),
    }
}

impl Filesystem for SimulatedFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.with(|state| state.lookup(parent, name)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|state| state.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let outcome = self.with(|state| {
            if let Some(size) = size {
                state.disk(ino)?.set_len(size).map_err(io)?;
            }
            state.attr(ino.0)
        });
        match outcome {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.with(|state| state.create(parent, name, true)));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|state| state.create(parent, name, false)) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let outcome = self.with(|state| {
            let entries = state.entries(parent)?;
            entries.remove(name).map(drop).ok_or(Errno::ENOENT)
        });
        reply_empty(reply, outcome);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let outcome = self.with(|state| {
            let ino = *state.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
            if !state.entries(INodeNo(ino))?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            state.entries(parent)?.remove(name);
            Ok(())
        });
        reply_empty(reply, outcome);
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
        let outcome = self.with(|state| {
            let ino = state.entries(parent)?.remove(name).ok_or(Errno::ENOENT)?;
            state.entries(newparent)?.insert(newname.to_owned(), ino);
            Ok(())
        });
        reply_empty(reply, outcome);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|state| state.node(ino).map(drop)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
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
        let outcome = self.with(|state| {
            let disk = state.disk(ino)?;
            let len = disk.len().map_err(io)?;
            let end = len.min(offset + u64::from(size));
            let mut bytes = vec![0; end.saturating_sub(offset) as usize];
            disk.read(offset, &mut bytes).map_err(io)?;
            Ok(bytes)
        });
        match outcome {
            Ok(bytes) => reply.data(&bytes),
            Err(errno) => reply.error(errno),
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
        match self.with(|state| state.disk(ino)?.write(offset, data).map_err(io)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.with(|_| Ok(())));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.with(|state| state.disk(ino)?.sync_data().map_err(io)),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.with(|state| {
            let entries = state.entries(ino)?.clone();
            let mut listed = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ino.0, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in entries {
                let kind = state.attr(child)?.kind;
                listed.push((child, kind, name));
            }
            Ok(listed)
        });
        match listed {
            Ok(listed) => {
                for (index, (child, kind, name)) in
                    listed.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let outcome = self.with(|state| match state.nodes.get_mut(&ino.0) {
            Some(Node::Dir { live, durable }) => {
                *durable = live.clone();
                Ok(())
            }
            Some(Node::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        });
        reply_empty(reply, outcome);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}
