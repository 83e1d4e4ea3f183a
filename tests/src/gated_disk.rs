//! An in-memory disk whose syncs a test can hold and fail, and whose reads it can fail, for a
//! redb journal opened with [`Journal::open_on`](foldhost::journal::Journal::open_on).
//!
//! Holding the syncs holds the journal's writer inside a commit: appends queued meanwhile wait
//! for the next commit, and commands queued on a stream wait for its next round. That lets a
//! test line work up exactly, then release it. [`Gate::fail_next_sync`] makes the next sync fail
//! as a real disk error would; [`Gate::fail_reads_after`] makes reads fail from a given one on,
//! until [`Gate::heal_reads`].

use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use foldhost::journal::StorageBackend;

/// The disk; clones share it.
#[derive(Clone, Default)]
pub struct GatedDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    gate: Arc<Gate>,
}

/// What a test controls: whether syncs wait, and whether the next one fails.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    held: bool,
    /// Syncs waiting for the gate to open.
    waiting: usize,
    /// Syncs allowed through while the gate stays held.
    passes: usize,
    fail_next: bool,
    /// Reads so far.
    reads: usize,
    /// Reads still allowed before every later one fails; `None`: no limit.
    reads_left: Option<usize>,
}

impl GatedDisk {
    /// An empty disk with an open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gate of this disk.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }
}

impl Gate {
    /// Makes every later sync wait until [`release`](Self::release).
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// Lets every waiting and later sync through.
    pub fn release(&self) {
        self.lock().held = false;
        self.changed.notify_all();
    }

    /// Lets one waiting (or the next) sync through and keeps holding the others.
    pub fn pass_one(&self) {
        self.lock().passes += 1;
        self.changed.notify_all();
    }

    /// Makes the next sync fail with an I/O error.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next = true;
    }

    /// Lets the next `reads` reads through and fails every later one, until
    /// [`heal_reads`](Self::heal_reads).
    pub fn fail_reads_after(&self, reads: usize) {
        self.lock().reads_left = Some(reads);
    }

    /// Lets every read through again.
    pub fn heal_reads(&self) {
        self.lock().reads_left = None;
    }

    /// How many reads the disk has served or failed.
    pub fn reads(&self) -> usize {
        self.lock().reads
    }

    /// Counts a read; fails it once the reads allowed are used up.
    fn read(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.reads += 1;
        match &mut state.reads_left {
            Some(0) => Err(io::Error::other("the disk failed to read (injected)")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// How many syncs are waiting for the gate.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().expect("gate lock")
    }

    /// Waits while the gate is held, then fails if a failure is armed.
    fn sync(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.waiting += 1;
        while state.held && state.passes == 0 {
            state = self.changed.wait(state).expect("gate lock");
        }
        state.waiting -= 1;
        if state.held {
            state.passes -= 1;
        }
        if std::mem::take(&mut state.fail_next) {
            return Err(io::Error::other("the disk failed (injected)"));
        }
        Ok(())
    }
}

impl fmt::Debug for GatedDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedDisk").finish_non_exhaustive()
    }
}

impl StorageBackend for GatedDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().expect("disk lock").len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.gate.read()?;
        let bytes = self.bytes.lock().expect("disk lock");
        let start = offset as usize;
        let stored = bytes
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(stored);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.bytes
            .lock()
            .expect("disk lock")
            .resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.gate.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.lock().expect("disk lock");
        let (start, end) = (offset as usize, offset as usize + data.len());
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}
