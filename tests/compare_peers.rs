//! The adapters of the peer comparison (`benches/compare/systems.rs`)
//! behave as the same durable FIFO, so that the bench compares like with
//! like: every pushed message comes back once with its bytes, in push order
//! (raft-engine: in order within each of its raft groups), nothing after
//! the last, and pending messages survive a reopen.

use std::collections::BTreeMap;

#[expect(
    dead_code,
    reason = "shared with benches/compare.rs, which uses all of it"
)]
#[path = "../benches/compare/systems.rs"]
mod systems;

use systems::{ALL, Class, Config, Kind};

/// Every configuration of the bench, and millpond `Interval` (kill rounds).
fn configs() -> Vec<Config> {
    ALL.into_iter()
        .chain([Config::new(Kind::MillpondInterval, Class::Buffered)])
        .collect()
}

/// A 100-byte payload carrying `seq` in its first 8 bytes.
fn payload(seq: u64) -> Vec<u8> {
    let mut p = vec![0x5A; 100];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

fn seq_of(p: &[u8]) -> u64 {
    assert_eq!(p.len(), 100, "payload length");
    u64::from_le_bytes(p[..8].try_into().expect("8 bytes"))
}

#[test]
fn every_peer_hands_back_each_message_once_in_push_order() {
    for cfg in configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let peer = cfg.open(&data);
        for seq in 0..50 {
            peer.push(&payload(seq));
        }
        let batch: Vec<Vec<u8>> = (50..100).map(payload).collect();
        peer.push_batch(&batch);
        peer.flush();
        assert!(
            systems::disk_bytes(&data) >= 100 * 100,
            "{}: {} bytes on disk",
            cfg.id(),
            systems::disk_bytes(&data)
        );

        let mut got = Vec::new();
        for _ in 0..10 {
            let (token, p) = peer.reserve().unwrap_or_else(|| panic!("{}", cfg.id()));
            got.push(seq_of(&p));
            peer.ack(token);
        }
        loop {
            let k = peer.drain_batch(7, &mut |p| got.push(seq_of(p)));
            if k == 0 {
                break;
            }
            assert!(k <= 7, "{}: drain_batch(7) gave {k}", cfg.id());
        }
        assert!(peer.reserve().is_none(), "{}: a 101st message", cfg.id());

        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..100).collect::<Vec<u64>>(),
            "{}: every message exactly once",
            cfg.id()
        );
        if cfg.kind != Kind::RaftEngine {
            assert_eq!(got, sorted, "{}: push order", cfg.id());
        }
    }
}

#[test]
fn every_peer_keeps_pending_messages_across_reopen() {
    for cfg in configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let peer = cfg.open(&data);
        let batch: Vec<Vec<u8>> = (0..20).map(payload).collect();
        peer.push_batch(&batch);
        let mut acked = BTreeMap::new();
        for _ in 0..5 {
            let (token, p) = peer.reserve().unwrap_or_else(|| panic!("{}", cfg.id()));
            acked.insert(seq_of(&p), ());
            peer.ack(token);
        }
        peer.flush();
        drop(peer);

        let peer = cfg.open(&data);
        let mut left = Vec::new();
        while peer.drain_batch(1000, &mut |p| left.push(seq_of(p))) > 0 {}
        left.sort_unstable();
        let expected: Vec<u64> = (0..20).filter(|s| !acked.contains_key(s)).collect();
        assert_eq!(left, expected, "{}: pending after reopen", cfg.id());
    }
}

/// `yaque::recovery::recover` on a queue without segments points the
/// receiver at segment u64::MAX, so nothing is ever received; the adapter
/// must only remove stale lock files.
#[test]
fn yaque_adapter_receives_in_a_fresh_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = Config::new(Kind::Yaque, Class::Buffered).open(&dir.path().join("q"));
    peer.push(&payload(7));
    let (_, p) = peer.reserve().expect("the pushed message");
    assert_eq!(seq_of(&p), 7);
}
