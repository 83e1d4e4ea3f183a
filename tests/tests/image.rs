//! The example plugins' memory images stay small. Every live instance maps its plugin's whole
//! copy-on-write image (the kernel's fault-around maps all of it on the guest's first read), so
//! each page of initialized data costs a page of RSS per live state: a dependency that brings
//! tables into the SDK (serde_json ≥ 1.0.147's zmij, ryu without `small`) costs 16 KiB per
//! instance, 16 MiB at 1,000 live states (docs/performance.md → Memory).

use wasmparser::{DataKind, Operator, Parser, Payload};

/// Host pages, the unit in which the image is mapped and counted.
const PAGE: u64 = 4096;

/// Host pages spanned by the active data segments of the core module holding the most data
/// in `component`.
fn image_pages(component: &[u8]) -> u64 {
    let mut most = 0;
    for payload in Parser::new(0).parse_all(component) {
        let Payload::DataSection(segments) = payload.unwrap() else {
            continue;
        };
        let (mut start, mut end) = (u64::MAX, 0);
        for segment in segments {
            let segment = segment.unwrap();
            let DataKind::Active { offset_expr, .. } = segment.kind else {
                continue;
            };
            let Operator::I32Const { value } = offset_expr.get_operators_reader().read().unwrap()
            else {
                panic!("a data segment at a computed offset");
            };
            let offset = u64::from(value as u32);
            start = start.min(offset);
            end = end.max(offset + segment.data.len() as u64);
        }
        if end > 0 {
            most = most.max(end.div_ceil(PAGE) - start / PAGE);
        }
    }
    most
}

#[test]
fn the_example_plugins_memory_images_stay_within_six_pages() {
    for plugin in foldhost_plugins::EXAMPLES {
        let component = std::fs::read(foldhost_plugins::path(plugin)).unwrap();
        let pages = image_pages(&component);
        assert!(pages > 0, "{plugin}: no data segments found");
        assert!(
            pages <= 6,
            "{plugin}'s memory image spans {pages} pages of 4 KiB, each resident once per live \
             instance: what new tables did its dependencies bring?"
        );
    }
}
