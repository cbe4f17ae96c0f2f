//! Follows the router log for one recipient: reads batches from its cursor, keeps the
//! events routed to it, delivers them through its [`Sink`], retries what failed with
//! backoff (forever: the server will come back, and the log keeps the events), puts what
//! was refused into the dead-letter store, and only then moves the cursor.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;
use weir_proto::event::{now_micros, EventView};
use weir_proto::runtime::backoff::Backoff;
use weir_proto::runtime::log_limit::LogLimit;
use weir_proto::runtime::wal::{Position, Wal, WalReader};
use weir_proto::Catalog;

use super::{Outcome, Sink};
use crate::cursors::LogCursors;
use crate::dead_letter::DeadLetters;
use crate::metrics as m;
use weir_proto::event::batch;

/// Which events a recipient takes.
#[derive(Clone)]
pub enum Route {
    /// Every event, valid or not (the Mongo hourly buffer).
    Everything,
    /// Valid events whose catalog entry lists the recipient (read on every batch, so a
    /// catalog change re-routes without a restart).
    Catalog(Arc<ArcSwap<Catalog>>),
}

/// How one recipient runs.
pub struct RunnerConfig {
    /// The recipient's name (its cursor, dead-letter folder and metric label).
    pub name: String,
    /// Which events it takes.
    pub route: Route,
    /// Most events handed to the sink at once.
    pub batch_events: usize,
    /// Where refused events go.
    pub dead_letters: DeadLetters,
    /// Where its cursor stood at start.
    pub start: Position,
    /// The log's end at start: events between `start` and here were already waiting.
    pub end_at_start: Position,
    /// How long shutdown waits for it to catch up.
    pub drain: Duration,
}

/// Live figures of one runner, read by the metrics ticker.
#[derive(Default)]
struct Stats {
    /// Events of the log passed (delivered, dead-lettered or not routed here).
    passed: AtomicU64,
    /// Events that were waiting at start (counted in the background).
    waiting_at_start: AtomicU64,
    /// `received_at` of the oldest event not yet delivered; 0 when caught up.
    oldest: AtomicI64,
}

/// The recipient's metric handles, registered once: per-event recording is then an
/// atomic add, with no label allocation or registry lookup.
struct Meters {
    delivered: metrics::Counter,
    retried: metrics::Counter,
    dead: metrics::Counter,
    latency: metrics::Histogram,
    up: metrics::Gauge,
}

impl Meters {
    fn new(name: &str) -> Meters {
        let label = || ("recipient", name.to_string());
        Meters {
            delivered: metrics::counter!(m::RECIPIENT_DELIVERED, &[label()]),
            retried: metrics::counter!(m::RECIPIENT_RETRIED, &[label()]),
            dead: metrics::counter!(m::RECIPIENT_DEAD, &[label()]),
            latency: metrics::histogram!(m::RECIPIENT_LATENCY, &[label()]),
            up: metrics::gauge!(m::RECIPIENT_UP, &[label()]),
        }
    }
}

/// Runs one recipient until `stop` turns true and it has caught up (or `drain` passed).
pub async fn run<S: Sink>(
    mut sink: S,
    wal: Wal,
    cursors: Arc<LogCursors>,
    mut cfg: RunnerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.name.clone();
    let stats = Arc::new(Stats::default());
    let meters = Meters::new(&name);
    let ticker = tokio::spawn(report(name.clone(), stats.clone(), cursors.clone()));
    let counter = tokio::task::spawn_blocking({
        let (wal, stats) = (wal.clone(), stats.clone());
        let (from, to) = (cfg.start, cfg.end_at_start);
        move || {
            stats
                .waiting_at_start
                .store(count_events(wal.reader(from), to), Ordering::Relaxed)
        }
    });
    let mut reader = Some(wal.reader(cfg.start));
    let mut durable = wal.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline: Option<Instant> = None;
    let mut last_tick = Instant::now();
    let quiet = LogLimit::new(Duration::from_secs(10));
    loop {
        if deadline.is_none() && *stop.borrow() {
            deadline = Some(Instant::now() + cfg.drain);
        }
        let Some(mut r) = reader.take() else { break };
        let (r, read) = match tokio::task::spawn_blocking(move || {
            let x = r.read(64, 8 << 20);
            (r, x)
        })
        .await
        {
            Ok(x) => x,
            Err(_) => break,
        };
        let records = match read {
            Ok(records) => records,
            Err(e) => {
                if let Some(n) = quiet.allow() {
                    tracing::error!(recipient = %name, error = %e, suppressed = n, "cannot read the router log; retrying");
                }
                reader = Some(r);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let pos = r.position();
        reader = Some(r);
        if records.is_empty() {
            stats.oldest.store(0, Ordering::Relaxed);
            if deadline.is_some() {
                break;
            }
            tokio::select! {
                _ = durable.changed() => {}
                _ = tick.tick() => {
                    sink.tick().await;
                    last_tick = Instant::now();
                }
                _ = stop.changed() => {}
            }
            continue;
        }
        let (todo, passed) = select(&records, &cfg.route, &name, &mut cfg.dead_letters, &meters);
        if let Some(first) = todo.first() {
            let at = batch::received_at(first).unwrap_or(0);
            stats.oldest.store(at, Ordering::Relaxed);
        }
        let done = deliver(&mut sink, todo, &mut cfg, &meters, &mut stop, &mut deadline, &quiet).await;
        // Dead letters are durable before the cursor passes them.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while let Err(e) = cfg.dead_letters.flush() {
            tracing::error!(recipient = %name, dir = %cfg.dead_letters.dir().display(), error = %e, "cannot write dead letters; retrying");
            backoff.wait().await;
        }
        if !done {
            break;
        }
        stats.passed.fetch_add(passed, Ordering::Relaxed);
        // Housekeeping (hour closing) also runs under a load that never lets it idle.
        if last_tick.elapsed() >= Duration::from_secs(1) {
            sink.tick().await;
            last_tick = Instant::now();
        }
        if let Err(e) = cursors.advance(&name, pos).await {
            tracing::error!(recipient = %name, error = %e, "cannot save the recipient's cursor or release log segments");
        }
    }
    sink.finish().await;
    if let Err(e) = cursors.save(&name) {
        tracing::error!(recipient = %name, error = %e, "cannot save the recipient's cursor; it reads a little of the log again after a restart");
    }
    if let Some(r) = &reader {
        let left = cursors.backlog_bytes(&name);
        if left > 0 {
            tracing::warn!(recipient = %name, backlog_bytes = left, at = ?r.position(), "stopping with a backlog; it is delivered after the next start");
        }
    }
    counter.abort();
    ticker.abort();
}

/// Keeps the events of `records` that `route` sends to `name`; unreadable batches go to
/// the dead letters. Returns them and how many events were passed in all.
fn select(records: &[Bytes], route: &Route, name: &str, dead: &mut DeadLetters, meters: &Meters) -> (Vec<Bytes>, u64) {
    let catalog = match route {
        Route::Catalog(c) => Some(c.load()),
        Route::Everything => None,
    };
    let mut todo = Vec::new();
    let mut passed = 0u64;
    for rec in records {
        let events = match batch::events(rec) {
            Ok(e) => e,
            Err(e) => {
                meters.dead.increment(1);
                dead.add(rec, &format!("unreadable batch in the router log: {e}"));
                continue;
            }
        };
        passed += events.len() as u64;
        match &catalog {
            None => todo.extend(events),
            Some(cat) => {
                for ev in events {
                    let Ok(view) = EventView::decode(&ev) else {
                        meters.dead.increment(1);
                        dead.add(&ev, "unreadable event in the router log");
                        continue;
                    };
                    let wanted = view.valid
                        && cat
                            .events
                            .get(view.event)
                            .is_some_and(|d| d.recipients.iter().any(|r| r == name));
                    if wanted {
                        todo.push(ev);
                    }
                }
            }
        }
    }
    (todo, passed)
}

/// Delivers `todo`, a chunk at a time and in order, until every event is delivered or
/// dead-lettered; a failing chunk is retried (only its failed events) before the next one
/// is sent. Returns false when shutdown's drain time ran out first (the cursor then stays,
/// and the rest is delivered after the next start).
async fn deliver<S: Sink>(
    sink: &mut S,
    todo: Vec<Bytes>,
    cfg: &mut RunnerConfig,
    meters: &Meters,
    stop: &mut watch::Receiver<bool>,
    deadline: &mut Option<Instant>,
    quiet: &LogLimit,
) -> bool {
    let name = cfg.name.clone();
    let batch_events = cfg.batch_events.max(1);
    for chunk in todo.chunks(batch_events) {
        let mut pending = chunk.to_vec();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            let outcomes = match *deadline {
                // Shutting down: a send still in flight at the deadline is abandoned; its
                // events stay in the log and go out after the next start.
                Some(d) => match tokio::time::timeout_at(d.into(), sink.deliver(&pending)).await {
                    Ok(o) => o,
                    Err(_) => return false,
                },
                None => sink.deliver(&pending).await,
            };
            let now = now_micros();
            let mut delivered = 0u64;
            let mut retry = Vec::new();
            let mut reason = String::new();
            for (i, ev) in pending.iter().enumerate() {
                match outcomes.get(i) {
                    Some(Outcome::Delivered) => {
                        delivered += 1;
                        if let Ok(at) = batch::received_at(ev) {
                            let secs = (now - at).max(0) as f64 / 1e6;
                            meters.latency.record(secs);
                        }
                    }
                    Some(Outcome::Refuse(why)) => {
                        meters.dead.increment(1);
                        tracing::warn!(recipient = %name, reason = %why, "event dead-lettered");
                        cfg.dead_letters.add(ev, why);
                    }
                    Some(Outcome::Retry(why)) => {
                        reason.clone_from(why);
                        retry.push(ev.clone());
                    }
                    None => {
                        reason = "the recipient gave no outcome".into();
                        retry.push(ev.clone());
                    }
                }
            }
            meters.delivered.increment(delivered);
            if retry.is_empty() {
                meters.up.set(1.0);
                break;
            }
            meters.up.set(0.0);
            meters.retried.increment(retry.len() as u64);
            if let Some(n) = quiet.allow() {
                tracing::warn!(recipient = %name, events = retry.len(), reason = %reason, retry_in_ms = backoff.peek().as_millis() as u64, suppressed = n, "delivery failed; retrying");
            }
            pending = retry;
            if deadline.is_none() && *stop.borrow() {
                *deadline = Some(Instant::now() + cfg.drain);
            }
            let wait = match *deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => backoff.next_delay().min(left),
                    None => return false,
                },
                None => backoff.next_delay(),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed(), if deadline.is_none() => {}
            }
        }
    }
    true
}

/// Counts the events between the reader's position and `end`.
fn count_events(mut reader: WalReader, end: Position) -> u64 {
    let mut n = 0;
    while reader.position() < end {
        match reader.read(256, 32 << 20) {
            Ok(recs) if !recs.is_empty() => {
                n += recs
                    .iter()
                    .map(|r| batch::events(r).map_or(0, |e| e.len() as u64))
                    .sum::<u64>()
            }
            _ => break,
        }
    }
    n
}

/// Publishes the backlog gauges once a second.
async fn report(name: String, stats: Arc<Stats>, cursors: Arc<LogCursors>) {
    let events = metrics::gauge!(m::RECIPIENT_BACKLOG_EVENTS, "recipient" => name.clone());
    let bytes_g = metrics::gauge!(m::RECIPIENT_BACKLOG_BYTES, "recipient" => name.clone());
    let age_g = metrics::gauge!(m::RECIPIENT_BACKLOG_AGE, "recipient" => name.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let backlog = (stats.waiting_at_start.load(Ordering::Relaxed) + cursors.appended())
            .saturating_sub(stats.passed.load(Ordering::Relaxed));
        let oldest = stats.oldest.load(Ordering::Relaxed);
        let age = if oldest > 0 {
            (now_micros() - oldest).max(0) as f64 / 1e6
        } else {
            0.0
        };
        let bytes = cursors.backlog_bytes(&name);
        // Nothing left to read is a backlog of 0, whatever the event arithmetic says.
        events.set(if bytes == 0 { 0.0 } else { backlog as f64 });
        bytes_g.set(bytes as f64);
        age_g.set(age);
        cursors.refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::sync::Mutex;
    use weir_proto::pb::{Event, EventBatch};
    use weir_proto::runtime::wal::WalOptions;

    /// A fake recipient: fails the first `fail_rounds` attempts, refuses ids starting with
    /// "poison", records what it took.
    struct Fake {
        fail_rounds: usize,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Fake {
        async fn deliver(&mut self, events: &[Bytes]) -> Vec<Outcome> {
            if self.fail_rounds > 0 {
                self.fail_rounds -= 1;
                return super::super::retry_all(events.len(), "connection refused");
            }
            events
                .iter()
                .map(|e| {
                    let v = EventView::decode(e).unwrap();
                    if v.id.starts_with("poison") {
                        Outcome::Refuse("too large".into())
                    } else {
                        self.got.lock().unwrap().push(v.id.to_string());
                        Outcome::Delivered
                    }
                })
                .collect()
        }
    }

    fn batch(ids: &[&str], event: &str, valid: bool) -> Vec<u8> {
        let b = EventBatch {
            batch_id: ids.join(","),
            collector: "c".into(),
            events: ids
                .iter()
                .map(|id| Event {
                    id: id.to_string(),
                    event: event.into(),
                    version: 1,
                    env: "web".into(),
                    received_at: now_micros(),
                    fields: Bytes::from_static(b"{}"),
                    valid,
                    ..Default::default()
                })
                .collect(),
        };
        let mut framed = Vec::new();
        weir_proto::record::encode_into(&mut framed, &b.encode_to_vec());
        framed
    }

    fn catalog() -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            r#"
[environments.web]
kind = "frontend"
[events."a.routed"]
owner = "t"
recipients = ["fake"]
[[events."a.routed".versions]]
version = 1
environments = ["web"]
[events."b.other"]
owner = "t"
[[events."b.other".versions]]
version = 1
environments = ["web"]
"#,
        )
        .unwrap();
        Catalog::load_dir(dir.path()).unwrap()
    }

    /// A log, its cursor book, and the `fake` recipient registered at its start.
    fn setup() -> (tempfile::TempDir, Wal, Arc<LogCursors>, Position) {
        let tmp = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalOptions {
            dir: tmp.path().join("log"),
            segment_bytes: 1 << 20,
            name: "t",
            metric_prefix: "weir_test_log",
        })
        .unwrap();
        let cursors = LogCursors::new(wal.clone());
        let start = cursors
            .register("fake", wal.first_position().unwrap(), 1 << 30)
            .unwrap();
        (tmp, wal, cursors, start)
    }

    #[tokio::test]
    async fn retries_until_delivered_dead_letters_refusals_and_routes_by_catalog() {
        let (tmp, wal, cursors, start) = setup();
        wal.append(batch(&["e1", "poison1", "e2"], "a.routed", true))
            .await
            .unwrap();
        wal.append(batch(&["o1"], "b.other", true)).await.unwrap();
        wal.append(batch(&["bad1"], "a.routed", false)).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop) = watch::channel(false);
        let cfg = RunnerConfig {
            name: "fake".into(),
            route: Route::Catalog(Arc::new(ArcSwap::from_pointee(catalog()))),
            batch_events: 2,
            dead_letters: DeadLetters::new(&tmp.path().join("dead"), "fake"),
            start,
            end_at_start: start,
            drain: Duration::from_secs(5),
        };
        let sink = Fake {
            fail_rounds: 3,
            got: got.clone(),
        };
        let task = tokio::spawn(run(sink, wal.clone(), cursors.clone(), cfg, stop));
        for _ in 0..100 {
            if got.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(
            *got.lock().unwrap(),
            vec!["e1", "e2"],
            "routed and valid only, after retries"
        );
        let dead_dir = tmp.path().join("dead/fake");
        let file = std::fs::read_dir(&dead_dir).unwrap().next().unwrap().unwrap().path();
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("poison1") && text.contains("too large"));
        assert_eq!(cursors.backlog_bytes("fake"), 0, "the cursor passed everything");
        let saved =
            weir_proto::runtime::wal::read_cursor(&crate::cursors::cursor_path(&tmp.path().join("log"), "fake"));
        assert_eq!(saved, weir_proto::runtime::wal::SavedCursor::At(wal.durable()));
    }

    #[tokio::test]
    async fn a_dead_recipient_keeps_its_cursor_when_shutdown_drain_runs_out() {
        let (tmp, wal, cursors, start) = setup();
        wal.append(batch(&["e1"], "a.routed", true)).await.unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let cfg = RunnerConfig {
            name: "fake".into(),
            route: Route::Everything,
            batch_events: 10,
            dead_letters: DeadLetters::new(&tmp.path().join("dead"), "fake"),
            start,
            end_at_start: start,
            drain: Duration::from_millis(300),
        };
        let sink = Fake {
            fail_rounds: usize::MAX,
            got: Arc::default(),
        };
        let task = tokio::spawn(run(sink, wal.clone(), cursors.clone(), cfg, stop));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let saved =
            weir_proto::runtime::wal::read_cursor(&crate::cursors::cursor_path(&tmp.path().join("log"), "fake"));
        assert_eq!(
            saved,
            weir_proto::runtime::wal::SavedCursor::At(start),
            "nothing was delivered, so the cursor did not move"
        );
        assert!(cursors.backlog_bytes("fake") > 0);
    }
}
