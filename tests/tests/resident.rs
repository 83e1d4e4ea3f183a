//! What a live aggregate instance keeps resident of its linear memory, page by page, read from
//! the kernel (`/proc/self/smaps`). The host keeps one instance per live state, so each page
//! here costs a page of RSS per state: 4 MiB at the 1,000 states of the memory bench
//! (docs/performance.md → Memory).

use std::sync::Arc;

use foldhost::journal::NewEvent;
use foldhost::runtime::{AggregateInstance, Plugin, PluginEngine};
use serde_json::json;

/// Host pages, the unit in which memory is resident.
const PAGE: u64 = 4096;
/// Live instances measured; each is counted on its own.
const INSTANCES: usize = 8;

/// A mapping of this process: its address range and resident bytes.
struct Mapping {
    start: u64,
    end: u64,
    rss: u64,
    /// A copy-on-write mapping of a plugin's memory image.
    image: bool,
}

fn mappings() -> Vec<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut found: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            found.push(Mapping {
                start,
                end,
                rss: 0,
                image: line.contains("wasm-memory-image"),
            });
        } else if first == "Rss:" {
            let kib: u64 = fields.next().unwrap().parse().unwrap();
            found.last_mut().unwrap().rss = kib * 1024;
        }
    }
    found
}

/// For each plugin memory image mapped in this process: the resident pages of the image and
/// of the memory around it (the stack below, the heap above), each contiguous with it.
fn linear_memories() -> Vec<(u64, u64)> {
    let maps = mappings();
    let mut memories = Vec::new();
    for (i, image) in maps.iter().enumerate().filter(|(_, m)| m.image) {
        let below = maps[..i]
            .last()
            .filter(|m| m.end == image.start && !m.image);
        let above = maps.get(i + 1).filter(|m| m.start == image.end && !m.image);
        let around: u64 = below.into_iter().chain(above).map(|m| m.rss).sum();
        memories.push((image.rss / PAGE, around / PAGE));
    }
    memories
}

/// An instance of bank-account that opened its account and took a deposit, as a live state in
/// the memory bench does.
fn live_account(plugin: &Arc<Plugin>, n: usize) -> AggregateInstance {
    let mut instance =
        AggregateInstance::new(plugin.clone(), &format!("account-{n}"), None).unwrap();
    let mut head = 0;
    for (command, data) in [
        ("Open", json!({"owner": format!("owner {n}")})),
        ("Deposit", json!({"amount": 25})),
    ] {
        let events: Vec<NewEvent> = instance
            .handle(command, data.to_string().as_bytes())
            .unwrap();
        let recorded = instance.provisional(head, &events);
        head += recorded.len() as u64;
        instance.apply(&recorded).unwrap();
    }
    instance
}

#[test]
fn a_live_bank_account_instance_writes_at_most_one_page_besides_its_image_and_stack() {
    let engine = PluginEngine::new(Default::default(), None).unwrap();
    let bytes = std::fs::read(foldhost_plugins::path(foldhost_plugins::BANK_ACCOUNT)).unwrap();
    let plugin = Plugin::load(&engine, &bytes, "bank-account").unwrap();
    let before = linear_memories().len();
    let instances: Vec<AggregateInstance> =
        (0..INSTANCES).map(|n| live_account(&plugin, n)).collect();

    let memories = linear_memories();
    assert_eq!(memories.len(), before + INSTANCES, "{memories:?}");
    for (image, around) in &memories[memories.len() - INSTANCES..] {
        assert!(*image > 0, "the image is not resident: {memories:?}");
        // The stack's top page, and at most one heap page: the SDK's heap starts in the
        // image's last page and grows a page at a time (today bank-account's fits there: 1).
        // Std's dlmalloc wrote two more here, both ends of its first 64 KiB `memory.grow`.
        assert!(
            *around <= 2,
            "a live bank-account keeps {around} pages resident besides its image's {image}: \
             the stack's top and at most one heap page expected"
        );
    }
    drop(instances);
}
