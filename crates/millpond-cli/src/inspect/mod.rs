//! The inspect commands: stats, queues, groups and dump.

pub mod dump;
pub mod list;
pub mod stats;

use millpond::{GroupStats, LogStats, Queue, Store};
use serde_json::{Value, json};

use crate::failure::Error;
use crate::open;

/// One queue's figures and its groups'.
#[derive(Debug)]
pub struct QueueFigures {
    pub name: String,
    pub log: LogStats,
    pub groups: Vec<(String, GroupStats)>,
}

impl QueueFigures {
    /// Messages in the log: ids from the oldest kept to the last pushed.
    pub fn messages(&self) -> u64 {
        self.log.next_id.saturating_sub(self.log.first_id)
    }

    pub fn to_json(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|(name, s)| group_json(name, s))
            .collect();
        json!({
            "name": self.name,
            "first_id": self.log.first_id,
            "next_id": self.log.next_id,
            "messages": self.messages(),
            "segments": self.log.segments,
            "bytes_on_disk": self.log.bytes_on_disk,
            "groups": groups,
        })
    }
}

/// A group's figures as JSON.
pub fn group_json(name: &str, s: &GroupStats) -> Value {
    json!({
        "name": name,
        "ready": s.ready,
        "reserved": s.reserved,
        "delayed": s.delayed,
        "buried": s.buried,
        "acked_total": s.acked_total,
        "dead_lettered_total": s.dead_lettered_total,
        "retention_lost_total": s.retention_lost_total,
        "oldest_ready_age_ms": s.oldest_ready_age_ms,
    })
}

/// Figures of the queue `only`, or of every queue.
///
/// # Errors
///
/// No such queue; the engine's errors.
pub fn figures(store: &Store, only: Option<&str>) -> Result<Vec<QueueFigures>, Error> {
    let queues: Vec<Queue> = match only {
        Some(name) => vec![open::queue(store, name)?],
        None => store
            .queue_names()
            .iter()
            .map(|n| store.queue(n))
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::with_capacity(queues.len());
    for queue in queues {
        let mut groups = Vec::new();
        for name in queue.group_names() {
            let stats = queue.group(&name)?.stats()?;
            groups.push((name, stats));
        }
        out.push(QueueFigures {
            name: queue.name().to_owned(),
            log: queue.log_stats()?,
            groups,
        });
    }
    Ok(out)
}
