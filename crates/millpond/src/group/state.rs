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
//!
//! First deliveries of consecutive fresh messages with one deadline and one
//! priority (a batch reserve, or reserves within one millisecond) are held
//! as a *run*: a range with a bit per message still reserved, not an entry
//! and a lease each. A run member that is acked clears its bit; any other
//! change first moves it out of its run into the entries. Runs are kept in
//! id order and their deadlines never decrease along them, so the first run
//! holds the first lease to expire.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The most messages one run holds; a longer batch starts another.
const RUN_MAX: u64 = 4096;

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

/// First deliveries (attempt 1) of the fresh ids `first..first + len`,
/// reserved with one deadline at one priority; a set bit is a message still
/// reserved. The first 64 bits are inline, so a short run allocates nothing.
#[derive(Debug, Clone)]
struct Run {
    first: u64,
    deadline: u64,
    len: u32,
    live: u32,
    priority: u32,
    head: u64,
    rest: Vec<u64>,
}

impl Run {
    fn new(first: u64, deadline: u64, priority: u32) -> Run {
        Run {
            first,
            deadline,
            len: 1,
            live: 1,
            priority,
            head: 1,
            rest: Vec::new(),
        }
    }

    fn end(&self) -> u64 {
        self.first + u64::from(self.len)
    }

    fn word(&mut self, i: u64) -> &mut u64 {
        match i / 64 {
            0 => &mut self.head,
            w => &mut self.rest[w as usize - 1],
        }
    }

    fn has(&self, id: u64) -> bool {
        let i = id.wrapping_sub(self.first);
        i < u64::from(self.len)
            && self.words().nth((i / 64) as usize).unwrap_or(0) >> (i % 64) & 1 == 1
    }

    /// The bit words, the inline one first.
    fn words(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.head).chain(self.rest.iter().copied())
    }

    /// Appends the next id, reserved.
    fn push(&mut self) {
        let i = u64::from(self.len);
        if i >= 64 && i % 64 == 0 {
            self.rest.push(0);
        }
        *self.word(i) |= 1 << (i % 64);
        self.len += 1;
        self.live += 1;
    }

    /// Clears `id` (which [`Run::has`]).
    fn take(&mut self, id: u64) {
        let i = id - self.first;
        *self.word(i) &= !(1 << (i % 64));
        self.live -= 1;
    }

    /// The ids still reserved, in order.
    fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.words().enumerate().flat_map(move |(w, word)| {
            let base = self.first + 64 * w as u64;
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(base + u64::from(b))
            })
        })
    }

    fn entry(&self) -> Entry {
        Entry {
            state: EntryState::Reserved(self.deadline),
            attempts: 1,
            priority: self.priority,
        }
    }
}

/// The ack state of one group.
#[derive(Debug, Clone, Default)]
pub struct GroupState {
    /// First id not yet seen by the fresh scan.
    pub cursor: u64,
    entries: BTreeMap<u64, Entry>,
    /// Runs of fresh first deliveries, by id; none of their ids is in
    /// `entries`. The first and the last hold a reserved message.
    runs: VecDeque<Run>,
    /// Messages reserved in runs.
    run_live: usize,
    /// When `runs` grows to this many, runs emptied by acks between live
    /// ones are dropped (so they cost at most as much as the live ones).
    runs_limit: usize,
    /// Tests only: every entry in `entries`, as before runs existed (the
    /// reference the runs are checked against).
    #[cfg(test)]
    no_runs: bool,
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

/// Two states are equal when they track the same messages the same way,
/// whether as runs or as entries.
impl PartialEq for GroupState {
    fn eq(&self, other: &GroupState) -> bool {
        self.cursor == other.cursor
            && self.acked_total == other.acked_total
            && self.dead_lettered_total == other.dead_lettered_total
            && self.retention_lost_total == other.retention_lost_total
            && self.max_attempts == other.max_attempts
            && self.closed_cleanly == other.closed_cleanly
            && self.exhausted == other.exhausted
            && self.entries().eq(other.entries())
    }
}

impl Eq for GroupState {}

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
        match self.entries.get(&id) {
            Some(e) => Some(*e),
            None => self.run_of(id).map(|i| self.runs[i].entry()),
        }
    }

    /// Every tracked entry, by id.
    pub fn entries(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        let mut tracked = self.entries.iter().map(|(id, e)| (*id, *e)).peekable();
        let mut in_runs = self
            .runs
            .iter()
            .flat_map(|r| r.ids().map(move |id| (id, r.entry())))
            .peekable();
        std::iter::from_fn(move || match (tracked.peek(), in_runs.peek()) {
            (Some(a), Some(b)) if b.0 < a.0 => in_runs.next(),
            (Some(_), _) => tracked.next(),
            (None, _) => in_runs.next(),
        })
    }

    /// All ids below this are finished.
    pub fn floor(&self) -> u64 {
        let tracked = self.entries.keys().next().copied();
        let in_runs = self.runs.front().and_then(|r| r.ids().next());
        [tracked, in_runs]
            .into_iter()
            .flatten()
            .fold(self.cursor, u64::min)
    }

    /// The index of the run that holds `id` reserved.
    fn run_of(&self, id: u64) -> Option<usize> {
        let (front, back) = (self.runs.front()?, self.runs.back()?);
        if id < front.first || id >= back.end() {
            return None;
        }
        let i = self.runs.partition_point(|r| r.first <= id) - 1;
        self.runs[i].has(id).then_some(i)
    }

    /// Drops runs with nothing reserved from both ends.
    fn trim_runs(&mut self) {
        while self.runs.front().is_some_and(|r| r.live == 0) {
            self.runs.pop_front();
        }
        while self.runs.back().is_some_and(|r| r.live == 0) {
            self.runs.pop_back();
        }
    }

    /// Moves `id` out of its run, if it is in one, into the entries: every
    /// change to it but an ack is made there.
    fn unrun(&mut self, id: u64) {
        if let Some(i) = self.run_of(id) {
            let run = &mut self.runs[i];
            run.take(id);
            let e = run.entry();
            self.run_live -= 1;
            self.entries.insert(id, e);
            self.index(id, e);
            self.trim_runs();
        }
    }

    /// Moves every member of the run at `i` into the entries and removes it.
    fn unrun_all(&mut self, i: usize) {
        let Some(run) = self.runs.remove(i) else {
            return;
        };
        let e = run.entry();
        for id in run.ids() {
            self.entries.insert(id, e);
            self.index(id, e);
        }
        self.run_live -= run.live as usize;
        self.trim_runs();
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
        self.unrun(id);
        if let Some(old) = self.entries.insert(id, e) {
            self.unindex(id, old);
        }
        self.index(id, e);
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        self.unrun(id);
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
        // Runs expire in order; their members are released one by one with
        // the other leases below.
        while self.runs.front().is_some_and(|r| r.deadline <= now) {
            self.unrun_all(0);
        }
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
        while !self.runs.is_empty() {
            self.unrun_all(0);
        }
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
        let l = match (l, self.runs.front()) {
            (Some(t), Some(r)) => Some(t.min(r.deadline)),
            (t, r) => t.or(r.map(|r| r.deadline)),
        };
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
        #[cfg(not(test))]
        let in_run = attempts == 1;
        #[cfg(test)]
        let in_run = attempts == 1 && !self.no_runs;
        if in_run {
            match self.runs.back_mut() {
                Some(r)
                    if r.end() == id
                        && r.deadline == deadline
                        && r.priority == priority
                        && u64::from(r.len) < RUN_MAX =>
                {
                    r.push();
                    self.run_live += 1;
                    return;
                }
                // Deadlines never decrease along the runs.
                Some(r) if r.deadline > deadline => {}
                _ => {
                    if self.runs.len() >= self.runs_limit {
                        self.runs.retain(|r| r.live > 0);
                        self.runs_limit = (2 * self.runs.len()).max(64);
                    }
                    self.runs.push_back(Run::new(id, deadline, priority));
                    self.run_live += 1;
                    return;
                }
            }
        }
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
        match self.entry(id) {
            Some(e) if matches!(e.state, EntryState::Reserved(_)) => Ok(e),
            _ => Err(Refused::NotReserved),
        }
    }

    /// Acknowledges a reserved message: it is finished.
    pub fn ack(&mut self, id: u64) -> Result<(), Refused> {
        if let Some(i) = self.run_of(id) {
            self.runs[i].take(id);
            self.run_live -= 1;
            self.trim_runs();
            self.acked_total += 1;
            return Ok(());
        }
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
        match self.entry(id) {
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
        match self.entry(id) {
            Some(mut e) if !matches!(e.state, EntryState::Reserved(_)) => {
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
            self.leases.len() + self.run_live,
            self.delayed.len(),
            self.buried.len(),
        )
    }

    /// Drops entries at or past `end` and pulls the cursor back to it (they
    /// refer to messages the log no longer has). Returns how many.
    pub fn clamp(&mut self, end: u64) -> usize {
        while let Some(i) = self.runs.len().checked_sub(1)
            && self.runs[i].end() > end
        {
            self.unrun_all(i);
        }
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
        while self.runs.front().is_some_and(|r| r.first < first) {
            self.unrun_all(0);
        }
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
        let mut ids: Vec<u64> = self.entries.range(lo..hi).map(|(id, _)| *id).collect();
        for r in &self.runs {
            if r.end() > lo && r.first < hi {
                ids.extend(r.ids().filter(|id| (lo..hi).contains(id)));
            }
        }
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// One step of the differential test.
    #[derive(Debug, Clone)]
    enum Op {
        ReserveFresh {
            gap: u64,
            lease: u64,
            priority: u32,
            attempts: u32,
        },
        SetAside {
            gap: u64,
            priority: u32,
            delay: u64,
        },
        Advance(u64),
        ReserveBest {
            lease: u64,
        },
        Ack(u64),
        Nack {
            id: u64,
            delay: u64,
        },
        Touch {
            id: u64,
            lease: u64,
        },
        Bury(u64),
        Kick(u64),
        Delete(u64),
        Priority {
            id: u64,
            priority: u32,
        },
        ReserveId {
            id: u64,
            lease: u64,
        },
        FinishBuried(u64),
        ReleaseAll,
        Clamp(u64),
        ForgetBelow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0u64..48;
        prop_oneof![
            8 => (0u64..3, 0u64..3, 0u32..2, 1u32..3).prop_map(|(gap, lease, priority, attempts)| {
                Op::ReserveFresh { gap, lease: lease * 10, priority, attempts }
            }),
            2 => (0u64..3, 0u32..3, 0u64..3).prop_map(|(gap, priority, delay)| {
                Op::SetAside { gap, priority, delay: delay * 10 }
            }),
            2 => (0u64..25).prop_map(Op::Advance),
            2 => (0u64..3).prop_map(|l| Op::ReserveBest { lease: l * 10 }),
            8 => id.clone().prop_map(Op::Ack),
            2 => (id.clone(), 0u64..3).prop_map(|(id, d)| Op::Nack { id, delay: d * 10 }),
            2 => (id.clone(), 0u64..3).prop_map(|(id, l)| Op::Touch { id, lease: l * 10 }),
            1 => id.clone().prop_map(Op::Bury),
            1 => id.clone().prop_map(Op::Kick),
            1 => id.clone().prop_map(Op::Delete),
            1 => (id.clone(), 0u32..3).prop_map(|(id, priority)| Op::Priority { id, priority }),
            1 => (id.clone(), 0u64..3).prop_map(|(id, l)| Op::ReserveId { id, lease: l * 10 }),
            1 => id.clone().prop_map(Op::FinishBuried),
            1 => Just(Op::ReleaseAll),
            1 => (0u64..50).prop_map(Op::Clamp),
            1 => (0u64..50).prop_map(Op::ForgetBelow),
        ]
    }

    /// Applies `op` at `now`; returns what a caller could see of it.
    fn apply(s: &mut GroupState, op: &Op, now: &mut u64) -> String {
        let max = 2;
        match *op {
            Op::ReserveFresh {
                gap,
                lease,
                priority,
                attempts,
            } => {
                let id = s.cursor + gap;
                s.reserve_fresh(id, *now + lease, attempts, priority);
                String::new()
            }
            Op::SetAside {
                gap,
                priority,
                delay,
            } => {
                let id = s.cursor + gap;
                s.set_aside(id, priority, *now + delay, *now);
                s.cursor = id + 1;
                String::new()
            }
            Op::Advance(ms) => {
                *now += ms;
                format!("{}", s.tick(*now, max))
            }
            Op::ReserveBest { lease } => match s.best_ready() {
                Some((_, id)) => format!("{}", s.reserve_tracked(id, *now + lease)),
                None => String::new(),
            },
            Op::Ack(id) => format!("{:?}", s.ack(id)),
            Op::Nack { id, delay } => format!("{:?}", s.nack(id, *now + delay, *now, max)),
            Op::Touch { id, lease } => format!("{:?}", s.touch(id, *now + lease)),
            Op::Bury(id) => format!("{:?}", s.bury(id)),
            Op::Kick(id) => format!("{:?}", s.kick_id(id)),
            Op::Delete(id) => format!("{}", s.delete(id)),
            Op::Priority { id, priority } => format!("{}", s.set_priority(id, priority)),
            Op::ReserveId { id, lease } => format!("{:?}", s.reserve_id(id, *now + lease)),
            Op::FinishBuried(id) => format!("{}", s.finish_buried(id)),
            Op::ReleaseAll => {
                s.release_all_leases(max);
                String::new()
            }
            Op::Clamp(end) => format!("{}", s.clamp(end.max(s.floor()))),
            Op::ForgetBelow(first) => format!("{}", s.forget_below(first)),
        }
    }

    /// Everything a caller can ask of the state.
    fn observe(s: &GroupState) -> String {
        format!(
            "cursor {} floor {} counts {:?} best {:?} deadline {:?} delayed {:?} buried {:?} \
             exhausted {:?} totals {} {} {} tracked {:?} entries {:?}",
            s.cursor,
            s.floor(),
            s.counts(),
            s.best_ready(),
            s.next_deadline(),
            s.delayed_first(100),
            s.buried_ids(100),
            s.exhausted,
            s.acked_total,
            s.dead_lettered_total,
            s.retention_lost_total,
            s.tracked_in(0, 64),
            s.entries().collect::<Vec<_>>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Runs are a representation only: every operation answers and
        /// leaves the state exactly as with one entry per message.
        #[test]
        fn runs_behave_as_one_entry_per_message(ops in proptest::collection::vec(op(), 1..80)) {
            let mut runs = GroupState::new(1);
            let mut plain = GroupState::new(1);
            plain.no_runs = true;
            let (mut now_a, mut now_b) = (100, 100);
            for (i, op) in ops.iter().enumerate() {
                let a = apply(&mut runs, op, &mut now_a);
                let b = apply(&mut plain, op, &mut now_b);
                prop_assert_eq!(&a, &b, "step {}: {:?}", i, op);
                prop_assert_eq!(observe(&runs), observe(&plain), "after step {}: {:?}", i, op);
                prop_assert_eq!(&runs, &plain);
                for id in 0..64 {
                    prop_assert_eq!(runs.entry(id), plain.entry(id), "entry {}", id);
                }
            }
        }
    }

    #[test]
    fn a_batch_of_fresh_reserves_is_one_run_and_acks_clear_it() {
        let mut s = GroupState::new(1);
        for id in 1..=5000 {
            s.reserve_fresh(id, 500, 1, 0);
        }
        // RUN_MAX ids to a run.
        assert_eq!(s.runs.len(), 2);
        assert!(s.entries.is_empty() && s.leases.is_empty());
        assert_eq!(s.counts(), (0, 5000, 0, 0));
        assert_eq!(s.floor(), 1);
        assert_eq!(s.next_deadline(), Some(500));
        s.ack(1).unwrap();
        s.ack(3).unwrap();
        assert_eq!(s.floor(), 2);
        assert_eq!(s.ack(3), Err(Refused::NotReserved));
        // A change other than an ack moves the message out of its run.
        s.nack(2, 0, 0, 5).unwrap();
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entry(2).unwrap().state, EntryState::Ready);
        for id in 4..=5000 {
            s.ack(id).unwrap();
        }
        assert!(s.runs.is_empty());
        assert_eq!(s.acked_total, 4999);
        assert_eq!(s.floor(), 2);
    }

    #[test]
    fn runs_acked_behind_a_held_one_do_not_pile_up() {
        let mut s = GroupState::new(1);
        // Held (never acked): the first run stays.
        s.reserve_fresh(1, 500, 1, 0);
        // Then single reserves, each at a new millisecond, each acked after
        // the next one is reserved: the acked run is between live ones.
        for id in 2..100_002 {
            s.reserve_fresh(id, 1000 + id, 1, 0);
            if id > 2 {
                s.ack(id - 1).unwrap();
            }
        }
        assert!(s.runs.len() <= 128, "{} runs", s.runs.len());
        assert_eq!(s.counts(), (0, 2, 0, 0));
        assert_eq!(s.floor(), 1);
        assert_eq!(
            s.entries().map(|(id, _)| id).collect::<Vec<_>>(),
            [1, 100_001]
        );
    }

    #[test]
    fn an_expired_run_releases_each_member_with_its_attempt() {
        let mut s = GroupState::new(1);
        for id in 1..=3 {
            s.reserve_fresh(id, 50, 1, 4);
        }
        s.ack(2).unwrap();
        assert_eq!(s.tick(49, 1), 0);
        assert_eq!(s.tick(50, 1), 2);
        assert_eq!(s.counts(), (0, 0, 0, 2));
        assert_eq!(s.exhausted, vec![1, 3]);
        assert_eq!(s.entry(3).unwrap().priority, 4);
    }
}
