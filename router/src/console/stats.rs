//! `GET /v1/stats`: what the router saw in the last 60 minutes, in fixed-size memory.
//!
//! Every count is a [`Ring`] of 60 per-minute cells, each one atomic word holding its
//! minute and its count, so recording is a compare-and-swap with no lock and an old
//! minute is overwritten in place. Counters exist only for what the catalog names
//! (event × version × environment, plus `_unknown` for the rest), so memory is bounded by
//! the catalog, never by what clients send. Validation errors, which only flagged events
//! carry, go to a small table under a lock, capped at [`MAX_ERRORS`] distinct messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use weir_proto::event::{EventHead, EventView};
use weir_proto::Catalog;

/// Minutes kept.
pub const MINUTES: usize = 60;
/// Distinct validation error messages kept; past it new ones count as `_other`.
pub const MAX_ERRORS: usize = 512;
/// The name counted for events and environments the catalog does not know.
pub const UNKNOWN: &str = "_unknown";

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The current minute since the epoch.
pub fn minute_now() -> u64 {
    weir_proto::event::now_micros().max(0) as u64 / 60_000_000
}

/// Per-minute counts of the last [`MINUTES`] minutes.
pub struct Ring([AtomicU64; MINUTES]);

impl Default for Ring {
    fn default() -> Self {
        Ring(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Ring {
    /// Adds `n` to `minute`'s count (a cell still holding an older minute starts over).
    pub fn add(&self, minute: u64, n: u64) {
        if n == 0 {
            return;
        }
        let stamp = minute & ((1 << (64 - COUNT_BITS)) - 1);
        let cell = &self.0[minute as usize % MINUTES];
        let mut cur = cell.load(Ordering::Relaxed);
        loop {
            let next = if cur >> COUNT_BITS == stamp {
                (stamp << COUNT_BITS) | ((cur & COUNT_MASK) + n).min(COUNT_MASK)
            } else {
                (stamp << COUNT_BITS) | n.min(COUNT_MASK)
            };
            match cell.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The counts of the [`MINUTES`] minutes up to `now`, oldest first.
    pub fn read(&self, now: u64) -> Vec<u64> {
        (0..MINUTES as u64)
            .map(|back| {
                let minute = now.saturating_sub(MINUTES as u64 - 1 - back);
                let stamp = minute & ((1 << (64 - COUNT_BITS)) - 1);
                let v = self.0[minute as usize % MINUTES].load(Ordering::Relaxed);
                if v >> COUNT_BITS == stamp && minute + (MINUTES as u64) > now {
                    v & COUNT_MASK
                } else {
                    0
                }
            })
            .collect()
    }
}

/// The counters of one event × version × environment.
#[derive(Default)]
struct Slot {
    valid: Ring,
    flagged: Ring,
}

type Key = (String, u32, String);

/// The counters the catalog of one revision names.
#[derive(Default)]
struct Table {
    revision: String,
    /// event → (version, env, slot); `_unknown` holds what the catalog does not name.
    events: HashMap<String, Vec<(u32, String, Arc<Slot>)>>,
}

impl Table {
    /// Slots for every (event, version, env) of `catalog`, keeping `old`'s counters.
    fn build(catalog: &Catalog, old: &Table) -> Table {
        let mut keep: HashMap<Key, Arc<Slot>> = HashMap::new();
        for (event, slots) in &old.events {
            for (v, env, slot) in slots {
                keep.insert((event.clone(), *v, env.clone()), slot.clone());
            }
        }
        let mut events: HashMap<String, Vec<(u32, String, Arc<Slot>)>> = HashMap::new();
        let mut add = |event: &str, v: u32, env: &str| {
            let slot = keep
                .remove(&(event.to_string(), v, env.to_string()))
                .unwrap_or_default();
            events
                .entry(event.to_string())
                .or_default()
                .push((v, env.to_string(), slot));
        };
        let envs: Vec<&str> = catalog
            .environments
            .keys()
            .map(String::as_str)
            .chain([UNKNOWN])
            .collect();
        for (name, def) in &catalog.events {
            for v in &def.versions {
                for env in &envs {
                    add(name, v.version, env);
                }
            }
            // An unknown version, or none given.
            for env in &envs {
                add(name, 0, env);
            }
        }
        for env in &envs {
            add(UNKNOWN, 0, env);
        }
        Table {
            revision: catalog.revision.clone(),
            events,
        }
    }

    fn slot(&self, event: &str, version: u32, env: &str) -> Option<&Slot> {
        fn find<'a>(slots: &'a [(u32, String, Arc<Slot>)], v: u32, env: &str) -> Option<&'a Slot> {
            slots
                .iter()
                .find(|(sv, se, _)| *sv == v && se == env)
                .map(|(_, _, s)| s.as_ref())
        }
        let (event, slots) = match self.events.get(event) {
            Some(s) => (true, s),
            None => (false, self.events.get(UNKNOWN)?),
        };
        let version = if event { version } else { 0 };
        find(slots, version, env)
            .or_else(|| find(slots, version, UNKNOWN))
            .or_else(|| find(slots, 0, env))
            .or_else(|| find(slots, 0, UNKNOWN))
    }
}

/// One validation error message's count.
struct ErrorCount {
    event: String,
    count: u64,
    sample_id: String,
    last_minute: u64,
}

/// A recipient's state as the console shows it; the recipient runner keeps it.
#[derive(Default)]
pub struct Tally {
    /// Events delivered, per minute.
    pub delivered: Ring,
    /// Events dead-lettered, per minute.
    pub dead_lettered: Ring,
    /// Whether the last delivery attempt succeeded.
    pub up: AtomicBool,
    /// What its source reports (the backlog among it).
    pub source: Arc<crate::source::Stats>,
}

/// Everything `/v1/stats` reports.
pub struct Stats {
    table: ArcSwap<Table>,
    rebuild: Mutex<()>,
    errors: Mutex<HashMap<String, ErrorCount>>,
    recipients: Mutex<Vec<(String, Arc<Tally>)>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            table: ArcSwap::from_pointee(Table::default()),
            rebuild: Mutex::new(()),
            errors: Mutex::new(HashMap::new()),
            recipients: Mutex::new(Vec::new()),
        }
    }
}

/// What the console counts an event under: name, version, env, validity.
type Kind<'a> = (&'a str, u32, &'a str, bool);

/// A batch's counts, taken as its events are read: runs of events with the same name,
/// version, env and validity (one table lookup a run), and the flagged events, for their
/// errors.
#[derive(Default)]
pub struct BatchCounts<'a> {
    runs: Vec<(Kind<'a>, u64)>,
    flagged: Vec<EventView<'a>>,
}

impl<'a> BatchCounts<'a> {
    /// Counts one decoded event.
    pub fn add(&mut self, view: &EventView<'a>) {
        self.count(view.event, view.version, view.env, view.valid);
        if !view.valid {
            self.flagged.push(view.clone());
        }
    }

    fn count(&mut self, event: &'a str, version: u32, env: &'a str, valid: bool) {
        let key = (event, version, env, valid);
        match self.runs.last_mut() {
            Some((k, n)) if *k == key => *n += 1,
            _ => self.runs.push((key, 1)),
        }
    }
}

impl Stats {
    /// The tally of recipient `name`, created on first use.
    pub fn tally(&self, name: &str) -> Arc<Tally> {
        let mut g = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = g.iter().find(|(n, _)| n == name) {
            return t.clone();
        }
        let t = Arc::new(Tally {
            up: AtomicBool::new(true),
            ..Tally::default()
        });
        g.push((name.to_string(), t.clone()));
        t
    }

    fn table_for(&self, catalog: &Catalog) -> arc_swap::Guard<Arc<Table>> {
        let t = self.table.load();
        if t.revision == catalog.revision && !t.events.is_empty() {
            return t;
        }
        let _g = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.table.load();
        if cur.revision != catalog.revision || cur.events.is_empty() {
            self.table.store(Arc::new(Table::build(catalog, &cur)));
        }
        self.table.load()
    }

    /// Counts `events` (encoded `weir.v1.Event`s) in the current minute. Only an
    /// event's head is read (the whole event only when it is flagged, for its errors).
    pub fn record<'a>(&self, catalog: &Catalog, events: impl IntoIterator<Item = &'a [u8]>) {
        let mut tally = BatchCounts::default();
        for ev in events {
            let Ok(head) = EventHead::decode(ev) else { continue };
            tally.count(head.event, head.version, head.env, head.valid);
            if !head.valid {
                if let Ok(view) = EventView::decode(ev) {
                    tally.flagged.push(view);
                }
            }
        }
        self.record_tally(catalog, &tally);
    }

    /// Counts what `tally` took in the current minute.
    pub fn record_tally(&self, catalog: &Catalog, tally: &BatchCounts<'_>) {
        let table = self.table_for(catalog);
        let minute = minute_now();
        for &((event, version, env, valid), n) in &tally.runs {
            if let Some(slot) = table.slot(event, version, env) {
                if valid {
                    slot.valid.add(minute, n);
                } else {
                    slot.flagged.add(minute, n);
                }
            }
        }
        for view in &tally.flagged {
            self.record_errors(view, minute);
        }
    }

    fn record_errors(&self, view: &EventView<'_>, minute: u64) {
        let mut g = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        for e in &view.errors {
            let known = g.contains_key(*e);
            let key = if known || g.len() < MAX_ERRORS { *e } else { "_other" };
            let entry = g.entry(key.to_string()).or_insert_with(|| ErrorCount {
                event: view.event.to_string(),
                count: 0,
                sample_id: String::new(),
                last_minute: minute,
            });
            entry.count += 1;
            entry.sample_id = view.id.to_string();
            entry.event = view.event.to_string();
            entry.last_minute = minute;
        }
        // Messages not seen for an hour make room.
        if g.len() >= MAX_ERRORS {
            g.retain(|_, c| c.last_minute + MINUTES as u64 > minute);
        }
    }

    /// The report, with minute `now` last.
    pub fn report(&self, now: u64, top_errors: usize) -> Report {
        let table = self.table.load();
        let mut events = Vec::new();
        for (name, slots) in &table.events {
            for (version, env, slot) in slots {
                let (valid, flagged) = (slot.valid.read(now), slot.flagged.read(now));
                if valid.iter().chain(&flagged).all(|n| *n == 0) {
                    continue;
                }
                events.push(EventCounts {
                    event: name.clone(),
                    version: *version,
                    env: env.clone(),
                    total_valid: valid.iter().sum(),
                    total_flagged: flagged.iter().sum(),
                    valid,
                    flagged,
                });
            }
        }
        events.sort_by(|a, b| (&a.event, a.version, &a.env).cmp(&(&b.event, b.version, &b.env)));
        let mut errors: Vec<ErrorReport> = {
            let g = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            g.iter()
                .filter(|(_, c)| c.last_minute + MINUTES as u64 > now)
                .map(|(msg, c)| ErrorReport {
                    error: msg.clone(),
                    event: c.event.clone(),
                    count: c.count,
                    sample_id: c.sample_id.clone(),
                })
                .collect()
        };
        errors.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.error.cmp(&b.error)));
        errors.truncate(top_errors);
        let recipients = {
            let g = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
            g.iter()
                .map(|(name, t)| RecipientReport {
                    name: name.clone(),
                    up: t.up.load(Ordering::Relaxed),
                    backlog_events: t.source.backlog.load(Ordering::Relaxed),
                    delivered: t.delivered.read(now),
                    dead_lettered: t.dead_lettered.read(now),
                })
                .collect()
        };
        Report {
            minute: now,
            minutes: MINUTES,
            catalog_revision: table.revision.clone(),
            events,
            errors,
            recipients,
        }
    }
}

/// The `/v1/stats` answer. Every per-minute list has [`MINUTES`] counts, oldest first,
/// the last one for `minute` (minutes since the epoch, UTC).
#[derive(Serialize)]
pub struct Report {
    /// The current minute, since the epoch.
    pub minute: u64,
    /// How many minutes each list covers.
    pub minutes: usize,
    /// The catalog revision the counters follow.
    pub catalog_revision: String,
    /// Counts per event, version and env (those with any count in the window).
    pub events: Vec<EventCounts>,
    /// The most frequent validation errors of the window.
    pub errors: Vec<ErrorReport>,
    /// Each recipient's state.
    pub recipients: Vec<RecipientReport>,
}

/// One event × version × env.
#[derive(Serialize)]
pub struct EventCounts {
    /// Catalog name, or `_unknown`.
    pub event: String,
    /// Version (0: not one the catalog has).
    pub version: u32,
    /// Environment, or `_unknown`.
    pub env: String,
    /// Valid events per minute.
    pub valid: Vec<u64>,
    /// Flagged events per minute.
    pub flagged: Vec<u64>,
    /// Sum of `valid`.
    pub total_valid: u64,
    /// Sum of `flagged`.
    pub total_flagged: u64,
}

/// A validation error message and how often it was seen.
#[derive(Serialize)]
pub struct ErrorReport {
    /// The message.
    pub error: String,
    /// The event it was last seen on.
    pub event: String,
    /// How many times.
    pub count: u64,
    /// The id of the last event that had it.
    pub sample_id: String,
}

/// A recipient's state.
#[derive(Serialize)]
pub struct RecipientReport {
    /// Its name (`warehouse` is the hourly buffer).
    pub name: String,
    /// Whether its last delivery succeeded.
    pub up: bool,
    /// Events waiting for it.
    pub backlog_events: u64,
    /// Delivered per minute.
    pub delivered: Vec<u64>,
    /// Dead-lettered per minute.
    pub dead_lettered: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_counts_per_minute_and_forgets_after_an_hour() {
        let r = Ring::default();
        r.add(1000, 3);
        r.add(1000, 2);
        r.add(1001, 7);
        let now = r.read(1001);
        assert_eq!(now.len(), MINUTES);
        assert_eq!(&now[MINUTES - 2..], &[5, 7]);
        // The cell of minute 1000 is reused by 1060: the old count is gone.
        r.add(1060, 1);
        let later = r.read(1060);
        assert_eq!(later[MINUTES - 1], 1);
        assert_eq!(later.iter().sum::<u64>(), 8, "1001's 7 and 1060's 1");
        assert_eq!(r.read(2000).iter().sum::<u64>(), 0);
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let r = Arc::new(Ring::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        r.add(5, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.read(5)[MINUTES - 1], 40_000);
    }
}
