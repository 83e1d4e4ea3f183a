//! A disk that loses power on demand, for a redb journal opened with
//! [`Journal::open_on`](foldhost::journal::Journal::open_on).
//!
//! It keeps the bytes the way a disk with a volatile write cache does: what the last completed
//! `sync_data` made durable, plus the writes and length changes issued since, which only sit in
//! the cache. A power cut freezes it: every later operation fails, so nothing more can be
//! acknowledged. [`SimulatedDisk::image_after_cut`] then returns what the platters could hold:
//! everything synced, plus the cached writes a [`Loss`] lets through, cut into pages, the page
//! being written torn at a sector boundary (a sector is written whole or not at all). Opening a
//! journal on that image is booting after the power came back.
//!
//! [`Fsync::Ignored`] makes a disk that lies about `sync_data` (it returns at once and makes
//! nothing durable), to show that a test using this disk notices lost writes.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhost::journal::StorageBackend;
use rand::Rng;

/// The unit a disk writes all or nothing.
pub const SECTOR: u64 = 512;
/// The unit in which cached writes reach the platters, in any order.
pub const PAGE: u64 = 4096;

/// What `sync_data` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Makes every write issued before it durable before returning.
    Honest,
    /// Returns at once and makes nothing durable (a disk that lies, or a missing fsync).
    Ignored,
}

/// Which of the writes still cached at the cut reach the platters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// None is lost: the cache was written back just before the cut.
    Nothing,
    /// The pages in the order they were written, up to a random one, which is torn.
    InOrder,
    /// Any pages, in any order: each one is written, lost or torn at random.
    Reordered,
}

/// A cached change.
#[derive(Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Change {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Change::Write { offset, data } => {
                let (start, end) = (*offset as usize, *offset as usize + data.len());
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[start..end].copy_from_slice(data);
            }
            Change::SetLen(len) => bytes.resize(*len as usize, 0),
        }
    }

    /// The change split at page boundaries: what reaches the platters one piece at a time.
    fn pages(&self) -> Vec<Change> {
        let Change::Write { offset, data } = self else {
            return vec![self.clone()];
        };
        let mut pages = Vec::new();
        let mut at = *offset;
        let end = offset + data.len() as u64;
        while at < end {
            let next = ((at / PAGE + 1) * PAGE).min(end);
            let range = (at - offset) as usize..(next - offset) as usize;
            pages.push(Change::Write {
                offset: at,
                data: data[range].to_vec(),
            });
            at = next;
        }
        pages
    }

    /// A random part of this change that a power cut may leave: the sectors written before it.
    fn torn(&self, rng: &mut impl Rng) -> Option<Change> {
        let Change::Write { offset, data } = self else {
            return None; // a length change happens or not
        };
        let end = offset + data.len() as u64;
        let boundaries: Vec<u64> = (offset / SECTOR + 1..)
            .map(|sector| sector * SECTOR)
            .take_while(|&at| at < end)
            .collect();
        if boundaries.is_empty() {
            return None;
        }
        let cut = boundaries[rng.random_range(0..boundaries.len())];
        Some(Change::Write {
            offset: *offset,
            data: data[..(cut - offset) as usize].to_vec(),
        })
    }
}

/// Operations left before the cut, counting only syncs or every mutation.
#[derive(Clone, Copy)]
struct Countdown {
    left: u64,
    syncs_only: bool,
}

struct State {
    /// What survives any power cut.
    durable: Vec<u8>,
    /// What reads see: `durable` with `cached` applied.
    live: Vec<u8>,
    /// Changes since the last sync, in the order they were issued.
    cached: Vec<Change>,
    fsync: Fsync,
    /// Operations left before the power fails by itself.
    cut_in: Option<Countdown>,
    cut: bool,
}

/// A simulated disk; clones share it. See the [module docs](self).
#[derive(Clone)]
pub struct SimulatedDisk {
    state: Arc<Mutex<State>>,
}

impl SimulatedDisk {
    /// A disk holding `image` (empty for a new journal), durably.
    pub fn new(image: Vec<u8>, fsync: Fsync) -> Self {
        let state = State {
            live: image.clone(),
            durable: image,
            cached: Vec::new(),
            fsync,
            cut_in: None,
            cut: false,
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Cuts the power during the `operations`-th write, length change or sync from now (which
    /// then fails).
    pub fn cut_after(&self, operations: u64) {
        self.lock().cut_in = Some(Countdown {
            left: operations.max(1),
            syncs_only: false,
        });
    }

    /// Cuts the power during the `syncs`-th sync from now: everything written before it is
    /// still only cached (the moment that leaves an append's outcome unknown).
    pub fn cut_during_sync(&self, syncs: u64) {
        self.lock().cut_in = Some(Countdown {
            left: syncs.max(1),
            syncs_only: true,
        });
    }

    /// Cuts the power now.
    pub fn cut(&self) {
        self.lock().cut = true;
    }

    /// Whether the power is off.
    pub fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// Bytes written since the last sync that a power cut may lose.
    pub fn cached_bytes(&self) -> usize {
        let state = self.lock();
        state
            .cached
            .iter()
            .map(|change| match change {
                Change::Write { data, .. } => data.len(),
                Change::SetLen(_) => 0,
            })
            .sum()
    }

    /// Cuts the power (if still on) and returns what the disk could hold afterwards: the
    /// durable bytes plus the cached pages that `loss` lets through.
    pub fn image_after_cut(&self, loss: Loss, rng: &mut impl Rng) -> Vec<u8> {
        let mut state = self.lock();
        state.cut = true;
        let pages: Vec<Change> = state.cached.iter().flat_map(Change::pages).collect();
        let mut image = state.durable.clone();
        match loss {
            Loss::Nothing => pages.iter().for_each(|page| page.apply(&mut image)),
            Loss::InOrder => {
                let written = rng.random_range(0..=pages.len());
                pages[..written]
                    .iter()
                    .for_each(|page| page.apply(&mut image));
                if let Some(torn) = pages.get(written).and_then(|page| page.torn(rng)) {
                    torn.apply(&mut image);
                }
            }
            Loss::Reordered => {
                for page in &pages {
                    match rng.random_range(0..10) {
                        0..5 => page.apply(&mut image),
                        5 => page
                            .torn(rng)
                            .iter()
                            .for_each(|torn| torn.apply(&mut image)),
                        _ => {}
                    }
                }
            }
        }
        image
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("simulated disk lock")
    }

    /// Counts `sync` or another mutation down to the cut; fails once the power is off.
    fn operate(state: &mut State, sync: bool) -> io::Result<()> {
        match &mut state.cut_in {
            Some(countdown) if sync || !countdown.syncs_only => {
                countdown.left -= 1;
                if countdown.left == 0 {
                    (state.cut_in, state.cut) = (None, true);
                }
            }
            _ => {}
        }
        powered(state)
    }
}

fn powered(state: &State) -> io::Result<()> {
    if state.cut {
        Err(io::Error::other("the power is cut"))
    } else {
        Ok(())
    }
}

impl fmt::Debug for SimulatedDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimulatedDisk")
            .field("len", &state.live.len())
            .field("cached_changes", &state.cached.len())
            .field("fsync", &state.fsync)
            .field("cut", &state.cut)
            .finish()
    }
}

impl StorageBackend for SimulatedDisk {
    fn len(&self) -> io::Result<u64> {
        let state = self.lock();
        powered(&state)?;
        Ok(state.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.lock();
        powered(&state)?;
        let start = offset as usize;
        let bytes = state
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        Self::operate(&mut state, false)?;
        let change = Change::SetLen(len);
        change.apply(&mut state.live);
        state.cached.push(change);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock();
        Self::operate(&mut state, true)?;
        if state.fsync == Fsync::Honest {
            let cached = std::mem::take(&mut state.cached);
            cached
                .iter()
                .for_each(|change| change.apply(&mut state.durable));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        Self::operate(&mut state, false)?;
        let change = Change::Write {
            offset,
            data: data.to_vec(),
        };
        change.apply(&mut state.live);
        state.cached.push(change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn disk_with_cached_page() -> SimulatedDisk {
        let disk = SimulatedDisk::new(vec![1; PAGE as usize], Fsync::Honest);
        disk.write(0, &[2; PAGE as usize]).unwrap();
        disk.sync_data().unwrap();
        disk.write(0, &[3; 2 * PAGE as usize]).unwrap();
        disk
    }

    #[test]
    fn synced_writes_survive_and_cached_ones_may_not() {
        let mut rng = StdRng::seed_from_u64(7);
        let disk = disk_with_cached_page();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let image = disk.image_after_cut(Loss::Reordered, &mut rng);
            assert!((PAGE..=2 * PAGE).contains(&(image.len() as u64)));
            assert_eq!(image.len() as u64 % SECTOR, 0, "a torn sector");
            for sector in image.chunks(SECTOR as usize) {
                assert!(sector.iter().all(|&b| b == sector[0]), "a torn sector");
                assert!(sector[0] == 2 || sector[0] == 3, "a synced write was lost");
                seen.insert((image.len(), sector[0]));
            }
        }
        // Both outcomes of the cached write occur.
        assert!(seen.contains(&(PAGE as usize, 2)) && seen.contains(&(2 * PAGE as usize, 3)));
    }

    #[test]
    fn in_order_loss_keeps_a_prefix_of_the_cached_writes() {
        let mut rng = StdRng::seed_from_u64(7);
        let disk = disk_with_cached_page();
        for _ in 0..100 {
            let image = disk.image_after_cut(Loss::InOrder, &mut rng);
            let new = image.iter().take_while(|&&b| b == 3).count();
            assert_eq!(new % SECTOR as usize, 0);
            assert!(
                image[new..PAGE.max(new as u64) as usize]
                    .iter()
                    .all(|&b| b == 2)
            );
        }
    }

    #[test]
    fn after_the_cut_nothing_more_is_written_or_read() {
        let disk = SimulatedDisk::new(Vec::new(), Fsync::Honest);
        disk.cut_after(2);
        disk.write(0, b"acknowledged").unwrap();
        assert!(
            disk.sync_data().is_err(),
            "the second operation meets the cut"
        );
        assert!(disk.is_cut());
        assert!(disk.write(0, b"late").is_err());
        assert!(disk.len().is_err());
        // The write was never synced, and it lies within one sector: all or nothing.
        let mut rng = StdRng::seed_from_u64(1);
        let images: std::collections::BTreeSet<Vec<u8>> = (0..50)
            .map(|_| disk.image_after_cut(Loss::Reordered, &mut rng))
            .collect();
        assert_eq!(images, [Vec::new(), b"acknowledged".to_vec()].into());
    }

    #[test]
    fn a_cut_during_a_sync_leaves_what_preceded_it_cached() {
        let disk = SimulatedDisk::new(Vec::new(), Fsync::Honest);
        disk.cut_during_sync(2);
        disk.write(0, b"synced").unwrap();
        disk.sync_data().unwrap();
        disk.write(0, b"cached").unwrap();
        disk.set_len(6).unwrap();
        assert!(disk.sync_data().is_err());
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(disk.image_after_cut(Loss::Nothing, &mut rng), b"cached");
        assert_eq!(disk.image_after_cut(Loss::InOrder, &mut rng).len(), 6);
    }

    #[test]
    fn a_disk_that_ignores_fsync_keeps_nothing_for_sure() {
        let disk = SimulatedDisk::new(Vec::new(), Fsync::Ignored);
        disk.write(0, b"acknowledged").unwrap();
        disk.sync_data().unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let lost = (0..50).any(|_| disk.image_after_cut(Loss::InOrder, &mut rng).is_empty());
        assert!(lost);
    }
}
