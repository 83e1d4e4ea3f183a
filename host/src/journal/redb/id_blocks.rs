//! The id index's entries as blocks of ids (storage format 6): a run (see `id_runs`) stores
//! its ids as values of up to [`BLOCK_IDS`] (id, position) pairs sorted by id, each keyed
//! (run, its least id). A flush or a merge then moves bytes, and redb touches one entry per
//! block rather than one per id (format 5: ~2.8k instructions per id moved by a merge).
//!
//! A run's blocks never overlap: every id of a block is below the next block's key. A block
//! that loses ids (its least to a merge, any to a scavenge) is written again under its new
//! least id, so keys only ever grow; the filter's scan of the index relies on it (see
//! `id_filter`).

use std::cmp::Ordering;
use std::ops::Bound;

use redb::{Key, ReadableTable, Table, TypeName, Value};

use super::JournalError;

/// Most ids a block holds (~3 KB): a plain-redb prototype cost 1.48k instructions per id for
/// making, flushing and merging once at 128, 1.49k at 64, 1.34k at 256 (and a lookup ranges
/// to the block, then searches it).
pub(super) const BLOCK_IDS: usize = 128;
/// An (id, position) pair in a block: the id big-endian, then the position.
const PAIR_BYTES: usize = 24;

/// An id and the position of its event.
pub(super) type Pair = (u128, u64);

/// A key of the id index: (run, least id of the block), stored big-endian so that its bytes
/// sort as it does (redb's tuple keys cost ~0.4k instructions per id of a flush more).
#[derive(Debug)]
pub(super) struct IdKey;

impl Value for IdKey {
    type SelfType<'a> = (u64, u128);
    type AsBytes<'a> = [u8; 24];

    fn fixed_width() -> Option<usize> {
        Some(24)
    }

    fn from_bytes<'a>(data: &'a [u8]) -> (u64, u128)
    where
        Self: 'a,
    {
        let (run, id) = data.split_at(8);
        let run = u64::from_be_bytes(run.try_into().expect("8 bytes"));
        (run, u128::from_be_bytes(id.try_into().expect("16 bytes")))
    }

    fn as_bytes<'a, 'b: 'a>(&(run, id): &'a (u64, u128)) -> [u8; 24]
    where
        Self: 'b,
    {
        let mut bytes = [0; 24];
        bytes[..8].copy_from_slice(&run.to_be_bytes());
        bytes[8..].copy_from_slice(&id.to_be_bytes());
        bytes
    }

    fn type_name() -> TypeName {
        TypeName::new("foldhost::IdKey")
    }
}

impl Key for IdKey {
    fn compare(data1: &[u8], data2: &[u8]) -> Ordering {
        data1.cmp(data2)
    }
}

/// A value of the id index: a block's pairs, [`PAIR_BYTES`] each, ascending by id.
#[derive(Debug)]
pub(super) struct IdBlock;

impl Value for IdBlock {
    type SelfType<'a> = &'a [u8];
    type AsBytes<'a> = &'a [u8];

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> &'a [u8]
    where
        Self: 'a,
    {
        data
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a &'b [u8]) -> &'a [u8]
    where
        Self: 'b,
    {
        value
    }

    fn type_name() -> TypeName {
        TypeName::new("foldhost::IdBlock")
    }
}

/// The pairs of the block stored under `key`, ascending; `Corrupt` unless its bytes are
/// whole pairs, at least one, the first of the key's least id.
pub(super) fn pairs(
    key: (u64, u128),
    block: &[u8],
) -> Result<impl Iterator<Item = Pair> + '_, JournalError> {
    Ok(checked(key, block)?.iter().map(decode))
}

/// A block's bytes as pairs, once checked (see [`pairs`]).
fn checked((run, least): (u64, u128), block: &[u8]) -> Result<&[[u8; PAIR_BYTES]], JournalError> {
    let (pairs, rest) = block.as_chunks::<PAIR_BYTES>();
    let malformed = match pairs.first().map(decode) {
        _ if !rest.is_empty() => format!("{} bytes, not whole pairs of {PAIR_BYTES}", block.len()),
        None => "no ids".to_owned(),
        Some((first, _)) if first != least => format!("its first id is {first:032x}"),
        Some(_) => return Ok(pairs),
    };
    Err(JournalError::Corrupt {
        position: 0,
        reason: format!(
            "the event-id block of run {run} keyed {least:032x} is malformed: {malformed}"
        ),
    })
}

/// A pair of a block.
fn decode(pair: &[u8; PAIR_BYTES]) -> Pair {
    let (id, position) = pair.split_at(16);
    let id = u128::from_be_bytes(id.try_into().expect("16 bytes"));
    (
        id,
        u64::from_be_bytes(position.try_into().expect("8 bytes")),
    )
}

/// The bytes of a block of `pairs` (ascending, at most [`BLOCK_IDS`]).
pub(super) fn encode(pairs: &[Pair]) -> Vec<u8> {
    let mut block = Vec::with_capacity(pairs.len() * PAIR_BYTES);
    for (id, position) in pairs {
        block.extend_from_slice(&id.to_be_bytes());
        block.extend_from_slice(&position.to_be_bytes());
    }
    block
}

/// The position of `id` in a block's pairs, if it holds it.
fn search(pairs: &[[u8; PAIR_BYTES]], id: u128) -> Option<u64> {
    let wanted = id.to_be_bytes();
    let found = pairs
        .binary_search_by(|pair| pair[..16].cmp(&wanted))
        .ok()?;
    Some(decode(&pairs[found]).1)
}

/// The block of `run` in `table` that holds `id`, if one does: its key's least id and the
/// position of `id`. `Corrupt` if the block it searches is malformed (see [`pairs`]).
pub(super) fn holding(
    table: &impl ReadableTable<IdKey, IdBlock>,
    run: u64,
    id: u128,
) -> Result<Option<(u128, u64)>, JournalError> {
    let Some(entry) = table.range((run, 0)..=(run, id))?.next_back() else {
        return Ok(None);
    };
    let (key, block) = entry?;
    let pairs = checked(key.value(), block.value())?;
    Ok(search(pairs, id).map(|position| (key.value().1, position)))
}

/// Writes `pairs` (ascending, each above every id of `run` in `table`) as blocks at the end of
/// `run`, through a cursor at that gap; returns how many it wrote.
pub(super) fn append(
    table: &mut Table<'_, IdKey, IdBlock>,
    run: u64,
    pairs: impl IntoIterator<Item = Result<Pair, JournalError>>,
) -> Result<u64, JournalError> {
    let mut gap = table.upper_bound_mut(Bound::Included((run, u128::MAX)))?;
    let (mut block, mut written) = (Vec::with_capacity(BLOCK_IDS), 0);
    for pair in pairs {
        block.push(pair?);
        if block.len() == BLOCK_IDS {
            gap.insert_before((run, block[0].0), encode(&block).as_slice())?;
            written += block.len() as u64;
            block.clear();
        }
    }
    if let Some(&(least, _)) = block.first() {
        gap.insert_before((run, least), encode(&block).as_slice())?;
        written += block.len() as u64;
    }
    gap.close()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use crate::journal::redb::store::EVENT_ID_BLOCKS;

    /// A block's bytes give back its pairs, and a search finds each of its ids and no other.
    #[test]
    fn a_block_is_searched_for_its_ids() {
        let pairs: Vec<Pair> = (1..=BLOCK_IDS as u128).map(|n| (n * 3, n as u64)).collect();
        let block = encode(&pairs);
        let key = (1, pairs[0].0);
        assert_eq!(
            super::pairs(key, &block).unwrap().collect::<Vec<_>>(),
            pairs
        );
        let checked = checked(key, &block).unwrap();
        for &(id, position) in &pairs {
            assert_eq!(search(checked, id), Some(position));
            assert_eq!(search(checked, id + 1), None);
        }
        assert_eq!(search(checked, 0), None);
        assert_eq!(search(&[], 3), None);
    }

    /// A database whose id index holds `runs` (run, its pairs ascending), written as a flush
    /// writes them.
    fn index(runs: &[(u64, Vec<Pair>)]) -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("ids.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
            for (run, pairs) in runs {
                append(&mut table, *run, pairs.iter().copied().map(Ok)).unwrap();
            }
        }
        txn.commit().unwrap();
        (dir, db)
    }

    /// A lookup finds the first and the last id of each block in that block, and no id
    /// between two blocks, nor one of another run; ids 0 and `u128::MAX` are found where held.
    #[test]
    fn ids_at_the_edges_of_blocks_are_found_in_their_block() {
        // Run 2: 0, 3, 6, ..., u128::MAX in blocks of 128, 128 and 44; runs 1 and 3 hold ids
        // next to each of them.
        let mut held: Vec<u128> = (0..299).map(|n| n * 3).collect();
        held.push(u128::MAX);
        let pairs =
            |ids: &[u128]| -> Vec<Pair> { ids.iter().map(|&id| (id, !id as u64)).collect() };
        let (beside, after): (Vec<u128>, Vec<u128>) = (
            held[..299].iter().map(|id| id + 1).collect(),
            held[..299].iter().map(|id| id + 2).collect(),
        );
        let runs = [(1, pairs(&beside)), (2, pairs(&held)), (3, pairs(&after))];
        let (_dir, db) = index(&runs);
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        let found = |run: u64, id: u128| holding(&table, run, id).unwrap();

        let blocks: Vec<&[u128]> = held.chunks(BLOCK_IDS).collect();
        assert_eq!(blocks.len(), 3);
        for block in &blocks {
            let (first, last) = (block[0], block[block.len() - 1]);
            assert_eq!(found(2, first), Some((first, !first as u64)), "{first:x}");
            assert_eq!(found(2, last), Some((first, !last as u64)), "{last:x}");
        }
        for pair in blocks.windows(2) {
            let (last, next) = (pair[0][pair[0].len() - 1], pair[1][0]);
            for between in [last + 1, next - 1] {
                assert_eq!(found(2, between), None, "{between:x}");
            }
        }
        assert_eq!(found(2, u128::MAX - 1), None);
        for (run, ids) in [(1, &beside), (3, &after)] {
            for &id in ids {
                assert_eq!(found(2, id), None, "{id:x} of run {run}");
                assert_eq!(found(run, id), Some((found_key(ids, id), !id as u64)));
            }
            assert_eq!(found(run, 0), None);
            assert_eq!(found(run, u128::MAX), None);
        }
        assert_eq!(found(4, 0), None);
        assert_eq!(found(4, u128::MAX), None);
    }

    /// The key of the block holding `id` among `ids` written as one run.
    fn found_key(ids: &[u128], id: u128) -> u128 {
        let at = ids.binary_search(&id).unwrap();
        ids[at / BLOCK_IDS * BLOCK_IDS]
    }

    /// A block that is not whole pairs, holds none, or whose first id is not its key is
    /// reported `Corrupt` by a lookup reaching it, whatever id it looks for.
    #[test]
    fn a_malformed_block_is_corrupt() {
        let (_dir, db) = index(&[(1, vec![(5, 50), (9, 90)])]);
        let pair = encode(&[(5, 50)]);
        let malformed: [(&[u8], &str); 4] = [
            (&pair[..23], "23 bytes, not whole pairs of 24"),
            (
                &[pair.as_slice(), &[0]].concat(),
                "25 bytes, not whole pairs of 24",
            ),
            (&[], "no ids"),
            (
                &encode(&[(6, 60)]),
                "its first id is 00000000000000000000000000000006",
            ),
        ];
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
            for (run, (bytes, _)) in (2..).zip(&malformed) {
                table.insert((run, 5), *bytes).unwrap();
            }
        }
        txn.commit().unwrap();

        let txn = db.begin_read().unwrap();
        let table = txn.open_table(EVENT_ID_BLOCKS).unwrap();
        for (run, (bytes, why)) in (2..).zip(&malformed) {
            for id in [5, 6, u128::MAX] {
                let Err(JournalError::Corrupt { reason, .. }) = holding(&table, run, id) else {
                    panic!("run {run}, id {id}: not Corrupt");
                };
                let key = format!("run {run} keyed 00000000000000000000000000000005");
                assert!(reason.contains(&key) && reason.ends_with(why), "{reason}");
            }
            assert!(super::pairs((run, 5), bytes).is_err());
            assert_eq!(holding(&table, run, 4).unwrap(), None, "below the block");
        }
        assert_eq!(holding(&table, 1, 9).unwrap(), Some((5, 90)));
    }
}
