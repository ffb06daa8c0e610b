//! The Raft thread's time per snapshot with a large state: `cargo bench -p fifty --bench snapshot
//! [-- HOSTS [LOGS [LOG_KIB]]]` (defaults 10,000 hosts, no job logs, 16 KiB per log).
//!
//! Fills a store with HOSTS host records and LOGS job output tails of LOG_KIB each, then asks the
//! real `RaftLog` for a snapshot as raft-rs does (`Storage::snapshot`, on the Raft thread), five
//! times each way, each time on a fresh log (no cached snapshot):
//!
//! - inline (`SnapshotBuild::Inline`, the simulation's; the same work as before snapshots were
//!   built off the Raft thread: every record read and encoded during the call);
//! - background (`SnapshotBuild::Background`, `fifty server`'s): the call copies the records and
//!   returns; then the time until a later call gets the built snapshot.

use std::time::{Duration, Instant, SystemTime};

use raft::eraftpb::{ConfState, Entry};
use raft::{Storage, StorageError};

use fifty::state::HostRecord;
use fifty::store::raft_log::{RaftLog, SnapshotBuild};
use fifty::store::{Batch, Store};
use fifty_shared::ids::{HostName, Labels};

const ROUNDS: usize = 5;

fn arg(n: usize, default: usize) -> usize {
    std::env::args().skip(1).filter(|a| !a.starts_with('-')).nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn fill(store: &Store, hosts: usize, logs: usize, log_kib: usize) -> u64 {
    let mut batch = Batch::default();
    for i in 0..hosts {
        let mut labels = Labels::default();
        labels.0.insert("role".into(), "web".into());
        labels.0.insert("zone".into(), format!("z{}", i % 3));
        batch.put_host(&HostRecord {
            name: HostName::new(&format!("web-{i:05}")).expect("a valid host name"),
            labels,
            serial: format!("{:032x}", i as u128 * 0x9E37_79B9_7F4A_7C15),
            enrolled_at: SystemTime::now(),
            token_accessor: format!("acc-{i:08x}"),
        });
        if i % 1000 == 999 {
            store.apply(std::mem::take(&mut batch)).expect("write hosts");
        }
    }
    let tail: Vec<u8> = (0..log_kib * 1024).map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27]).collect();
    for job in 0..logs {
        batch.put_log(job as u64, 1, &tail);
        if job % 100 == 99 {
            store.apply(std::mem::take(&mut batch)).expect("write logs");
        }
    }
    // The applied index, its entry (for its term) and a conf state naming the follower.
    let log = RaftLog::new(store.clone());
    let mut entry = Entry::default();
    entry.index = 1;
    entry.term = 1;
    log.append(&mut batch, &[entry]).expect("append");
    RaftLog::set_applied(&mut batch, 1);
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2];
    RaftLog::set_conf_state(&mut batch, &cs);
    store.apply(batch).expect("write");
    store.flush_blocking().expect("flush");
    store.state_digest().map(|_| ()).expect("read the state once, so every round finds it cached");
    let mut bytes = 0;
    let inline = RaftLog::with_snapshot_build(store.clone(), SnapshotBuild::Inline);
    if let Ok(s) = inline.snapshot(0, 2) {
        bytes = s.data.len() as u64;
    }
    bytes
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    println!(
        "  {name}: median {:.2} ms, min {:.2} ms, max {:.2} ms ({} rounds)",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

fn main() {
    let (hosts, logs, log_kib) = (arg(0, 10_000), arg(1, 0), arg(2, 16));
    let dir = std::env::temp_dir().join(format!("fifty-bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("open a store");
    let bytes = fill(&store, hosts, logs, log_kib);
    println!("{hosts} host records, {logs} job logs of {log_kib} KiB: snapshot {:.1} MiB", bytes as f64 / 1048576.0);

    let mut inline = Vec::new();
    for _ in 0..ROUNDS {
        let log = RaftLog::with_snapshot_build(store.clone(), SnapshotBuild::Inline);
        let started = Instant::now();
        let snap = log.snapshot(0, 2).expect("an inline snapshot");
        inline.push(ms(started.elapsed()));
        assert_eq!(snap.data.len() as u64, bytes);
    }
    let (mut call, mut built) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let log = RaftLog::with_snapshot_build(store.clone(), SnapshotBuild::Background);
        let started = Instant::now();
        let first = log.snapshot(0, 2);
        call.push(ms(started.elapsed()));
        assert!(matches!(first, Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))));
        let deadline = started + Duration::from_secs(600);
        let snap = loop {
            match log.snapshot(0, 2) {
                Ok(snap) => break snap,
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)) => {}
                Err(e) => panic!("snapshot: {e}"),
            }
            assert!(Instant::now() < deadline, "no snapshot built in 10 minutes");
            std::thread::sleep(Duration::from_micros(200));
        };
        built.push(ms(started.elapsed()));
        assert_eq!(snap.data.len() as u64, bytes);
    }
    summary("inline (before): the Raft thread's call, copy and encode", inline);
    summary("background (now): the Raft thread's call, copy only", call);
    summary("background (now): call -> snapshot built, off the Raft thread", built);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
