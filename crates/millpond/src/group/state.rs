//! The in-memory ack state of one group: a pure state machine, with time
//! passed in, shared by live operation and journal replay.
//!
//! Messages below `cursor` have been seen by the group: each is either
//! finished (acked or removed; it has no entry) or tracked in `entries`
//! (in flight, ready for a retry, delayed, buried, or a message with a
//! priority or delay that the fresh scan set aside). Messages from `cursor`
//! on are *fresh*: never delivered, and cost no memory until they are
//! delivered or set aside (the scan reads them in id order at the log's
//! priority floor; see `docs/design.md`).

use std::collections::{BTreeMap, BTreeSet};

/// Where a tracked message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Ready for delivery (a retry, or a message with a priority).
    Ready,
    /// Not ready before this time (unix ms).
    Delayed(u64),
    /// Reserved by a consumer until this time (unix ms).
    Reserved(u64),
    /// Dead-lettered within the group.
    Buried,
}

/// One tracked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where it is.
    pub state: EntryState,
    /// Deliveries so far.
    pub attempts: u32,
    /// Its priority (lower first).
    pub priority: u32,
}

/// Why a settle operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The id is not tracked as the operation needs.
    NotReserved,
    /// The id is not buried (or delayed, for kick).
    NotBuried,
}

/// The ack state of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// First id not yet seen by the fresh scan.
    pub cursor: u64,
    entries: BTreeMap<u64, Entry>,
    ready: BTreeSet<(u32, u64)>,
    delayed: BTreeSet<(u64, u64)>,
    leases: BTreeSet<(u64, u64)>,
    buried: BTreeSet<u64>,
    /// Acks so far (since the group was created).
    pub acked_total: u64,
    /// Messages dead-lettered by attempts so far.
    pub dead_lettered_total: u64,
    /// Messages dropped by retention before this group finished them.
    pub retention_lost_total: u64,
    /// The `max_attempts` the group runs with, kept in checkpoints so that
    /// recovery releases leases under the same limit (0: unknown).
    pub max_attempts: u32,
    /// Set in the checkpoint a clean close writes: its leases were not lost
    /// to a crash and are kept until they expire.
    pub closed_cleanly: bool,
    /// Ids buried by running out of attempts since the caller last took
    /// them (to move them to a dead-letter queue). Not persisted.
    pub exhausted: Vec<u64>,
}

impl GroupState {
    /// A group whose fresh scan starts at `cursor`.
    pub fn new(cursor: u64) -> GroupState {
        GroupState {
            cursor,
            ..GroupState::default()
        }
    }

    /// The tracked entry of `id`.
    pub fn entry(&self, id: u64) -> Option<Entry> {
        self.entries.get(&id).copied()
    }

    /// Every tracked entry, by id.
    pub fn entries(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.entries.iter().map(|(id, e)| (*id, *e))
    }

    /// All ids below this are finished.
    pub fn floor(&self) -> u64 {
        self.entries
            .keys()
            .next()
            .map_or(self.cursor, |&id| id.min(self.cursor))
    }

    fn index(&mut self, id: u64, e: Entry) {
        match e.state {
            EntryState::Ready => {
                self.ready.insert((e.priority, id));
            }
            EntryState::Delayed(t) => {
                self.delayed.insert((t, id));
            }
            EntryState::Reserved(t) => {
                self.leases.insert((t, id));
            }
            EntryState::Buried => {
                self.buried.insert(id);
            }
        }
    }

    fn unindex(&mut self, id: u64, e: Entry) {
        match e.state {
            EntryState::Ready => self.ready.remove(&(e.priority, id)),
            EntryState::Delayed(t) => self.delayed.remove(&(t, id)),
            EntryState::Reserved(t) => self.leases.remove(&(t, id)),
            EntryState::Buried => self.buried.remove(&id),
        };
    }

    /// Sets (or inserts) the entry of `id`.
    pub fn set(&mut self, id: u64, e: Entry) {
        if let Some(old) = self.entries.insert(id, e) {
            self.unindex(id, old);
        }
        self.index(id, e);
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        self.unindex(id, e);
        Some(e)
    }

    /// The fresh scan met `id` with a priority or a delay: track it.
    pub fn set_aside(&mut self, id: u64, priority: u32, not_before_ms: u64, now: u64) {
        let state = if not_before_ms > now {
            EntryState::Delayed(not_before_ms)
        } else {
            EntryState::Ready
        };
        self.set(
            id,
            Entry {
                state,
                attempts: 0,
                priority,
            },
        );
    }

    /// Moves due delays to ready and expired leases back to ready (or to
    /// buried once `max_attempts` deliveries were made). Returns how many
    /// moved.
    pub fn tick(&mut self, now: u64, max_attempts: u32) -> usize {
        let mut moved = 0;
        while let Some(&(t, id)) = self.delayed.first() {
            if t > now {
                break;
            }
            let mut e = self.entries[&id];
            e.state = EntryState::Ready;
            self.set(id, e);
            moved += 1;
        }
        while let Some(&(t, id)) = self.leases.first() {
            if t > now {
                break;
            }
            self.release_lost_lease(id, max_attempts);
            moved += 1;
        }
        moved
    }

    /// A lease ended without a settle (expiry, crash): back to ready with
    /// the attempt counted, or buried when attempts are used up.
    pub fn release_lost_lease(&mut self, id: u64, max_attempts: u32) {
        let mut e = self.entries[&id];
        if e.attempts >= max_attempts {
            e.state = EntryState::Buried;
            self.dead_lettered_total += 1;
            self.exhausted.push(id);
        } else {
            e.state = EntryState::Ready;
        }
        self.set(id, e);
    }

    /// Buries ready messages that have had `max_attempts` deliveries.
    pub fn bury_exhausted(&mut self, max_attempts: u32) {
        let ids: Vec<u64> = self
            .ready
            .iter()
            .map(|&(_, id)| id)
            .filter(|id| self.entries[id].attempts >= max_attempts)
            .collect();
        for id in ids {
            let mut e = self.entries[&id];
            e.state = EntryState::Buried;
            self.set(id, e);
            self.dead_lettered_total += 1;
            self.exhausted.push(id);
        }
    }

    /// Buried messages with at least `max_attempts` deliveries (the ones a
    /// dead-letter queue takes).
    pub fn buried_exhausted(&self, max_attempts: u32) -> Vec<u64> {
        self.buried
            .iter()
            .copied()
            .filter(|id| self.entries[id].attempts >= max_attempts)
            .collect()
    }

    /// Removes a buried message from the group without counting an ack
    /// (it moved to a dead-letter queue).
    pub fn finish_buried(&mut self, id: u64) -> bool {
        if matches!(
            self.entry(id),
            Some(Entry {
                state: EntryState::Buried,
                ..
            })
        ) {
            self.remove(id);
            true
        } else {
            false
        }
    }

    /// Every live lease becomes a lost lease (recovery after a crash).
    pub fn release_all_leases(&mut self, max_attempts: u32) {
        let ids: Vec<u64> = self.leases.iter().map(|&(_, id)| id).collect();
        for id in ids {
            self.release_lost_lease(id, max_attempts);
        }
    }

    /// The best tracked ready message: (priority, id).
    pub fn best_ready(&self) -> Option<(u32, u64)> {
        self.ready.first().copied()
    }

    /// The earliest time a delay falls due or a lease expires.
    pub fn next_deadline(&self) -> Option<u64> {
        let d = self.delayed.first().map(|&(t, _)| t);
        let l = self.leases.first().map(|&(t, _)| t);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reserves a tracked ready message; returns its attempt number.
    pub fn reserve_tracked(&mut self, id: u64, deadline: u64) -> u32 {
        let mut e = self.entries[&id];
        debug_assert_eq!(e.state, EntryState::Ready);
        e.attempts += 1;
        e.state = EntryState::Reserved(deadline);
        self.set(id, e);
        e.attempts
    }

    /// Reserves the fresh message `id` (at or after the cursor), with
    /// `attempts` deliveries counted (1 live; the journal's number on replay).
    pub fn reserve_fresh(&mut self, id: u64, deadline: u64, attempts: u32, priority: u32) {
        debug_assert!(id >= self.cursor);
        self.cursor = id + 1;
        self.set(
            id,
            Entry {
                state: EntryState::Reserved(deadline),
                attempts,
                priority,
            },
        );
    }

    /// The smallest id among tracked ready messages.
    pub fn min_ready_id(&self) -> Option<u64> {
        self.ready.iter().map(|&(_, id)| id).min()
    }

    /// Journal replay of a dead-lettering: buried, counted unless it already
    /// was buried.
    pub fn replay_dead_letter(&mut self, id: u64) {
        if let Some(mut e) = self.entry(id)
            && e.state != EntryState::Buried
        {
            e.state = EntryState::Buried;
            self.set(id, e);
            self.dead_lettered_total += 1;
        }
    }

    /// Sets the attempt count of a reserved entry (journal replay).
    pub fn set_attempts(&mut self, id: u64, attempts: u32) {
        if let Some(mut e) = self.entry(id) {
            e.attempts = attempts;
            self.set(id, e);
        }
    }

    fn reserved(&self, id: u64) -> Result<Entry, Refused> {
        match self.entries.get(&id) {
            Some(e) if matches!(e.state, EntryState::Reserved(_)) => Ok(*e),
            _ => Err(Refused::NotReserved),
        }
    }

    /// Acknowledges a reserved message: it is finished.
    pub fn ack(&mut self, id: u64) -> Result<(), Refused> {
        self.reserved(id)?;
        self.remove(id);
        self.acked_total += 1;
        Ok(())
    }

    /// Releases a reserved message for a retry at `until` (ready at once if
    /// `until <= now`); buried instead when its attempts are used up.
    pub fn nack(
        &mut self,
        id: u64,
        until: u64,
        now: u64,
        max_attempts: u32,
    ) -> Result<(), Refused> {
        let mut e = self.reserved(id)?;
        e.state = if e.attempts >= max_attempts {
            self.dead_lettered_total += 1;
            self.exhausted.push(id);
            EntryState::Buried
        } else if until > now {
            EntryState::Delayed(until)
        } else {
            EntryState::Ready
        };
        self.set(id, e);
        Ok(())
    }

    /// Extends a lease.
    pub fn touch(&mut self, id: u64, deadline: u64) -> Result<(), Refused> {
        let mut e = self.reserved(id)?;
        e.state = EntryState::Reserved(deadline);
        self.set(id, e);
        Ok(())
    }

    /// Dead-letters a reserved message within the group.
    pub fn bury(&mut self, id: u64) -> Result<(), Refused> {
        let mut e = self.reserved(id)?;
        e.state = EntryState::Buried;
        self.set(id, e);
        Ok(())
    }

    /// Revives a buried (or delayed) message: ready now, attempts reset.
    pub fn kick_id(&mut self, id: u64) -> Result<(), Refused> {
        match self.entries.get(&id) {
            Some(e) if matches!(e.state, EntryState::Buried | EntryState::Delayed(_)) => {
                let e = Entry {
                    state: EntryState::Ready,
                    attempts: 0,
                    priority: e.priority,
                };
                self.set(id, e);
                Ok(())
            }
            _ => Err(Refused::NotBuried),
        }
    }

    /// Finishes a tracked message whatever its state (beanstalkd's
    /// `delete`); counted with the acks. False if `id` is not tracked.
    pub fn delete(&mut self, id: u64) -> bool {
        if self.remove(id).is_some() {
            self.acked_total += 1;
            true
        } else {
            false
        }
    }

    /// Gives a tracked message a new priority. False if `id` is not
    /// tracked.
    pub fn set_priority(&mut self, id: u64, priority: u32) -> bool {
        match self.entry(id) {
            Some(mut e) => {
                e.priority = priority;
                self.set(id, e);
                true
            }
            None => false,
        }
    }

    /// Reserves a tracked message that is ready, delayed or buried (by
    /// id, out of order); returns its attempt number.
    pub fn reserve_id(&mut self, id: u64, deadline: u64) -> Result<u32, Refused> {
        match self.entries.get(&id) {
            Some(e) if !matches!(e.state, EntryState::Reserved(_)) => {
                let mut e = *e;
                e.attempts = e.attempts.saturating_add(1);
                e.state = EntryState::Reserved(deadline);
                self.set(id, e);
                Ok(e.attempts)
            }
            _ => Err(Refused::NotReserved),
        }
    }

    /// The first `n` delayed ids, due first first.
    pub fn delayed_ids(&self, n: usize) -> Vec<u64> {
        self.delayed.iter().take(n).map(|&(_, id)| id).collect()
    }

    /// The first `n` delayed entries, soonest due first: (due, id).
    pub fn delayed_first(&self, n: usize) -> Vec<(u64, u64)> {
        self.delayed.iter().take(n).copied().collect()
    }

    /// The first `n` buried ids (the ones `kick(n)` revives).
    pub fn buried_ids(&self, n: usize) -> Vec<u64> {
        self.buried.iter().take(n).copied().collect()
    }

    /// The first delayed message: (due time, id).
    pub fn first_delayed(&self) -> Option<(u64, u64)> {
        self.delayed.first().copied()
    }

    /// Counts by state: (ready tracked, reserved, delayed, buried).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.ready.len(),
            self.leases.len(),
            self.delayed.len(),
            self.buried.len(),
        )
    }

    /// Drops entries at or past `end` and pulls the cursor back to it (they
    /// refer to messages the log no longer has). Returns how many.
    pub fn clamp(&mut self, end: u64) -> usize {
        let ids: Vec<u64> = self.entries.range(end..).map(|(id, _)| *id).collect();
        for id in &ids {
            self.remove(*id);
        }
        self.cursor = self.cursor.min(end);
        ids.len()
    }

    /// Forgets one entry (its message is gone from the log).
    pub fn clamp_one(&mut self, id: u64) {
        self.remove(id);
    }

    /// Forgets everything below `first` (messages removed from the log by
    /// retention or compaction) and returns how many of them the group had
    /// not finished: those count as lost to retention.
    pub fn forget_below(&mut self, first: u64) -> u64 {
        let ids: Vec<u64> = self.entries.range(..first).map(|(id, _)| *id).collect();
        let mut lost = ids.len() as u64;
        for id in ids {
            self.remove(id);
        }
        if self.cursor < first {
            lost += first - self.cursor;
            self.cursor = first;
        }
        self.retention_lost_total += lost;
        lost
    }

    /// Ids tracked in `[lo, hi)`.
    pub fn tracked_in(&self, lo: u64, hi: u64) -> Vec<u64> {
        if lo >= hi {
            return Vec::new();
        }
        self.entries.range(lo..hi).map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_consumption_tracks_only_in_flight() {
        let mut s = GroupState::new(1);
        for id in 1..=100 {
            s.reserve_fresh(id, 1000, 1, 0);
            s.ack(id).unwrap();
        }
        assert_eq!(s.entries().count(), 0);
        assert_eq!(s.floor(), 101);
        assert_eq!(s.acked_total, 100);
    }

    #[test]
    fn expired_lease_counts_attempt_and_buries_at_max() {
        let mut s = GroupState::new(1);
        s.reserve_fresh(1, 100, 1, 0);
        assert_eq!(s.tick(100, 2), 1);
        assert_eq!(s.entry(1).unwrap().state, EntryState::Ready);
        assert_eq!(s.reserve_tracked(1, 200), 2);
        s.tick(200, 2);
        assert_eq!(s.entry(1).unwrap().state, EntryState::Buried);
        assert_eq!(s.dead_lettered_total, 1);
        s.kick_id(1).unwrap();
        assert_eq!(
            s.entry(1).unwrap(),
            Entry {
                state: EntryState::Ready,
                attempts: 0,
                priority: 0
            }
        );
    }

    #[test]
    fn settling_unreserved_is_refused() {
        let mut s = GroupState::new(1);
        assert_eq!(s.ack(1), Err(Refused::NotReserved));
        s.reserve_fresh(1, 10, 1, 0);
        s.ack(1).unwrap();
        assert_eq!(s.ack(1), Err(Refused::NotReserved));
        assert_eq!(s.kick_id(1), Err(Refused::NotBuried));
    }

    #[test]
    fn delete_finishes_any_state_and_counts() {
        let mut s = GroupState::new(10);
        s.set_aside(1, 0, 0, 0);
        s.set_aside(2, 0, 50, 0);
        s.set_aside(3, 0, 0, 0);
        s.bury(3).unwrap_err();
        s.reserve_tracked(3, 100);
        s.bury(3).unwrap();
        s.reserve_fresh(10, 100, 1, 0);
        for id in [1, 2, 3, 10] {
            assert!(s.delete(id), "{id}");
        }
        assert!(!s.delete(1));
        assert_eq!(s.counts(), (0, 0, 0, 0));
        assert_eq!(s.acked_total, 4);
    }

    #[test]
    fn reserve_by_id_takes_ready_delayed_buried_not_reserved() {
        let mut s = GroupState::new(10);
        s.set_aside(1, 5, 0, 0);
        s.set_aside(2, 0, 50, 0);
        assert_eq!(s.reserve_id(2, 99), Ok(1));
        assert_eq!(s.reserve_id(2, 99), Err(Refused::NotReserved));
        s.bury(2).unwrap();
        assert_eq!(s.reserve_id(2, 99), Ok(2));
        assert_eq!(s.reserve_id(1, 99), Ok(1));
        assert_eq!(s.reserve_id(7, 99), Err(Refused::NotReserved));
        assert!(s.set_priority(1, 9));
        assert_eq!(s.entry(1).unwrap().priority, 9);
        assert!(!s.set_priority(7, 9));
    }

    #[test]
    fn ready_order_is_priority_then_id() {
        let mut s = GroupState::new(10);
        s.set_aside(5, 3, 0, 0);
        s.set_aside(3, 3, 0, 0);
        s.set_aside(7, 1, 0, 0);
        assert_eq!(s.best_ready(), Some((1, 7)));
        s.reserve_tracked(7, 9);
        assert_eq!(s.best_ready(), Some((3, 3)));
    }
}
