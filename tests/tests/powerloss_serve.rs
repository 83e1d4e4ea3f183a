//! The real `foldhost serve` keeps every acknowledged append through power cuts of the file
//! system under its data directory, where files and directory entries are durable only once
//! synced (see `foldhost_tests::simulated_fs`). This covers what the simulated disk of
//! `powerloss.rs` cannot: the journal file's and the data directory's entries, and the
//! compiled-component cache, written by the real binary through the kernel.
//!
//! Each round mounts the image the last cut left, starts the server on it, checks that it
//! serves every event acknowledged so far exactly as acknowledged, then appends and runs
//! commands over HTTP until the power fails (and the process is killed with it). Files and
//! directories are created on the first boot of a machine, so the test lives several lives,
//! each on a new, empty file system. Needs `/dev/fuse` and root, as CI has. The seed is
//! printed (`FOLDHOST_POWERLOSS_SEED` replays its choices).

use crate::serve;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhost_tests::simulated_disk::Loss;
use foldhost_tests::simulated_fs::{SimulatedFs, Tree};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Client;
use serde_json::{Value, json};
use serve::{Dirs, Server, all_events};
use uuid::Uuid;

/// Machines, each starting empty...
const LIVES: usize = 3;
/// ...and losing power this many times.
const CUTS: usize = 4;
const WRITERS: u64 = 4;
const CUSTOMERS: u64 = 2;

/// An acknowledged event, as the server must serve it from then on.
#[derive(Debug, Clone, PartialEq)]
struct Acknowledged {
    position: u64,
    stream: String,
    version: u64,
    data: Value,
}

type Acks = Arc<Mutex<HashMap<Uuid, Acknowledged>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_every_acknowledged_append_through_power_cuts() {
    let seed = std::env::var("FOLDHOST_POWERLOSS_SEED")
        .map(|seed| seed.parse().expect("FOLDHOST_POWERLOSS_SEED is a number"))
        .unwrap_or_else(|_| rand::rng().random());
    eprintln!("power-loss seed {seed} (FOLDHOST_POWERLOSS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dirs = Dirs::new(); // its plugin directory, outside the simulated file system
    let mountpoint = tempfile::tempdir().unwrap();
    let mut total = 0;
    for life in 1..=LIVES {
        eprintln!("life {life}: a new machine");
        total += one_life(&mut rng, seed, &dirs, mountpoint.path()).await;
    }
    eprintln!("{LIVES} machines, {CUTS} power cuts each: {total} acknowledged events, all served");
}

/// One machine: boots on an empty file system, loses power `CUTS` times, boots once more.
/// Returns how many events were acknowledged.
async fn one_life(rng: &mut StdRng, seed: u64, dirs: &Dirs, mountpoint: &Path) -> usize {
    let client = Client::new();
    let acks: Acks = Arc::default();
    let mut tree = Tree::default();
    for cut in 0..=CUTS {
        let fs = SimulatedFs::new(&tree);
        let mounted = fs
            .mount(mountpoint)
            .expect("mounting needs /dev/fuse and root");
        let server = Server::start_with(&mountpoint.join("data"), Some(&dirs.plugins), None);
        let acknowledged = acks.lock().unwrap().clone();
        let lost = check(&client, &server, &acknowledged).await;
        assert!(
            lost.is_empty(),
            "after power cut {cut} (seed {seed}):\n  {}",
            lost.join("\n  ")
        );
        if cut == CUTS {
            break;
        }

        let before = acks.lock().unwrap().len();
        let mut workers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let (client, url, acks) = (client.clone(), server.url(""), acks.clone());
            workers.spawn(append_until_failure(
                client,
                url,
                acks,
                writer,
                rng.random(),
            ));
        }
        for customer in 0..CUSTOMERS {
            let (client, url, acks) = (client.clone(), server.url(""), acks.clone());
            workers.spawn(command_until_failure(
                client,
                url,
                acks,
                customer,
                rng.random(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        // The power fails: the file system first, so the process cannot write past the cut.
        fs.cut();
        drop(server); // SIGKILL
        tokio::time::timeout(serve::PATIENCE, workers.join_all())
            .await
            .expect("the clients did not notice the server was gone");
        let loss = match rng.random_range(0..3) {
            0 => Loss::Nothing,
            1 => Loss::InOrder,
            _ => Loss::Reordered,
        };
        tree = fs.image_after_cut(loss, rng);
        drop(mounted);
        eprintln!(
            "cut {:>2}: {:>4} events acknowledged, {loss:?}",
            cut + 1,
            acks.lock().unwrap().len() - before
        );
    }
    acks.lock().unwrap().len()
}

/// Every acknowledged event is served at its position, exactly once, with its data; the log
/// has no gap. Returns what is wrong.
async fn check(
    client: &Client,
    server: &Server,
    acks: &HashMap<Uuid, Acknowledged>,
) -> Vec<String> {
    let log = all_events(client, server).await;
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    for (event, position) in log.iter().zip(1..) {
        if event["position"] != position {
            problems.push(format!("position {position} holds {event}"));
        }
        if !ids.insert(event["id"].as_str().unwrap().to_owned()) {
            problems.push(format!("event {} occurs twice", event["id"]));
        }
    }
    let mut lost = 0;
    for (id, ack) in acks {
        let served = log
            .get(ack.position as usize - 1)
            .map(|event| Acknowledged {
                position: event["position"].as_u64().unwrap(),
                stream: event["stream"].as_str().unwrap().to_owned(),
                version: event["version"].as_u64().unwrap(),
                data: event["data"].clone(),
            });
        match served {
            Some(served)
                if served == *ack && log[ack.position as usize - 1]["id"] == id.to_string() => {}
            _ => lost += 1,
        }
    }
    if lost > 0 {
        problems.push(format!(
            "{lost} of {} acknowledged events are lost or changed; the log ends at {}",
            acks.len(),
            log.len()
        ));
    }
    problems
}

/// Appends 1–3 events at a time to its own stream until the server stops answering.
async fn append_until_failure(client: Client, url: String, acks: Acks, writer: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let stream = format!("ledger-{writer}");
    loop {
        let events: Vec<(Uuid, Value)> = (0..rng.random_range(1..=3))
            .map(|_| {
                let pad = "x".repeat(rng.random_range(10..3000));
                (Uuid::from_u128(rng.random()), json!({ "pad": pad }))
            })
            .collect();
        let body = json!({ "events": events
            .iter()
            .map(|(id, data)| json!({ "id": id, "type": "Noted", "data": data }))
            .collect::<Vec<_>>() });
        let Ok(response) = client
            .post(format!("{url}/streams/{stream}/events"))
            .json(&body)
            .send()
            .await
        else {
            return;
        };
        if response.status() != 200 {
            return;
        }
        let Ok(result) = response.json::<Value>().await else {
            return;
        };
        let (version, position) = (&result["first_version"], &result["first_position"]);
        let mut acks = acks.lock().unwrap();
        for (n, (id, data)) in (0..).zip(events) {
            let ack = Acknowledged {
                position: position.as_u64().unwrap() + n,
                stream: stream.clone(),
                version: version.as_u64().unwrap() + n,
                data,
            };
            acks.insert(id, ack);
        }
    }
}

/// Deposits to its accounts (opening them first) until the server stops answering.
async fn command_until_failure(client: Client, url: String, acks: Acks, customer: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let id = format!("{customer}-{}", rng.random_range(0..3));
        let command = |command: Value| {
            client
                .post(format!("{url}/aggregates/bank-account/{id}/commands"))
                .json(&command)
                .send()
        };
        let deposit = json!({ "type": "Deposit", "data": { "amount": rng.random_range(1..100) } });
        let Ok(mut response) = command(deposit).await else {
            return;
        };
        if response.status() == 422 {
            let open =
                json!({ "type": "Open", "data": { "owner": format!("customer {customer}") } });
            let Ok(opened) = command(open).await else {
                return;
            };
            response = opened;
        }
        if response.status() != 200 {
            return;
        }
        let Ok(outcome) = response.json::<Value>().await else {
            return;
        };
        let mut acks = acks.lock().unwrap();
        for event in outcome["events"].as_array().unwrap() {
            let ack = Acknowledged {
                position: event["position"].as_u64().unwrap(),
                stream: event["stream"].as_str().unwrap().to_owned(),
                version: event["version"].as_u64().unwrap(),
                data: event["data"].clone(),
            };
            acks.insert(event["id"].as_str().unwrap().parse().unwrap(), ack);
        }
    }
}
