//! Runs one recipient over the log it follows ([`crate::source`]: the router log or a
//! Kafka consumer group): pulls a run of events, keeps those routed to it, delivers them
//! through its [`Sink`], retries what failed with backoff (forever: the server will come
//! back, and the log keeps the events), puts what was refused into the dead-letter store,
//! and only then marks the run done (the cursor moves, or the offsets are committed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;
use weir_proto::event::now_micros;
use weir_proto::runtime::backoff::Backoff;
use weir_proto::runtime::log_limit::LogLimit;
use weir_proto::Catalog;

use super::{Events, Outcome, Sink};
use crate::dead_letter::DeadLetterStore;
use crate::metrics as m;
use crate::source::{Source, Want};
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
    pub dead_letters: DeadLetterStore,
    /// How long shutdown waits for it to catch up.
    pub drain: Duration,
    /// What the console shows of it.
    pub tally: Arc<crate::console::stats::Tally>,
}

/// One delivered event in this many (counted across the recipient's deliveries) has its
/// delivery latency recorded: the quantiles of `weir_router_recipient_delivery_latency_seconds`
/// are those of every event's at an eighth of the cost per event (a sample was ~4% of the
/// router's CPU at 1.5M events/s); count deliveries with
/// `weir_router_recipient_delivered_events_total`.
pub const LATENCY_EVERY: usize = 8;

/// The recipient's metric handles, registered once: per-event recording is then an
/// atomic add, with no label allocation or registry lookup.
struct Meters {
    delivered: metrics::Counter,
    retried: metrics::Counter,
    dead: metrics::Counter,
    latency: metrics::Histogram,
    /// Delivered events so far, for sampling their latency.
    seen: std::sync::atomic::AtomicU64,
    up: metrics::Gauge,
    tally: Arc<crate::console::stats::Tally>,
}

impl Route {
    /// What the recipient `name` takes of the log now (the catalog is read once per run).
    fn want<'a>(&self, name: &'a str) -> Want<'a> {
        match self {
            Route::Everything => Want::Everything,
            Route::Catalog(c) => Want::Routed {
                catalog: c.load_full(),
                recipient: name,
            },
        }
    }
}

impl Meters {
    fn delivered(&self, n: u64) {
        self.delivered.increment(n);
        self.tally.delivered.add(crate::console::stats::minute_now(), n);
    }

    fn dead(&self, n: u64) {
        self.dead.increment(n);
        self.tally.dead_lettered.add(crate::console::stats::minute_now(), n);
    }

    /// Records the latency of one in [`LATENCY_EVERY`] of the events `delivered` (their
    /// `received_at` read from the event), counted across deliveries.
    fn sample_latency<'a>(&self, delivered: impl Iterator<Item = &'a Bytes>, now: i64) {
        let seen = self.seen.load(Ordering::Relaxed);
        let mut n = 0u64;
        for ev in delivered {
            if (seen + n).is_multiple_of(LATENCY_EVERY as u64) {
                if let Ok(at) = batch::received_at(ev) {
                    self.latency.record((now - at).max(0) as f64 / 1e6);
                }
            }
            n += 1;
        }
        self.seen.store(seen + n, Ordering::Relaxed);
    }

    fn up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
        self.tally.up.store(up, Ordering::Relaxed);
    }

    fn new(name: &str, tally: Arc<crate::console::stats::Tally>) -> Meters {
        let label = || ("recipient", name.to_string());
        Meters {
            tally,
            delivered: metrics::counter!(m::RECIPIENT_DELIVERED, &[label()]),
            retried: metrics::counter!(m::RECIPIENT_RETRIED, &[label()]),
            dead: metrics::counter!(m::RECIPIENT_DEAD, &[label()]),
            latency: metrics::histogram!(m::RECIPIENT_LATENCY, &[label()]),
            seen: std::sync::atomic::AtomicU64::new(0),
            up: metrics::gauge!(m::RECIPIENT_UP, &[label()]),
        }
    }
}

/// Runs one recipient until `stop` turns true and it has caught up (or `drain` passed).
pub async fn run<S: Sink, F: Source>(
    mut sink: S,
    mut source: F,
    mut cfg: RunnerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.name.clone();
    let stats = cfg.tally.source.clone();
    let meters = Meters::new(&name, cfg.tally.clone());
    let reporter = source.report(&name, stats.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline: Option<Instant> = None;
    let mut last_tick = Instant::now();
    let quiet = LogLimit::new(Duration::from_secs(10));
    sink.start().await;
    loop {
        if deadline.is_none() && *stop.borrow() {
            deadline = Some(Instant::now() + cfg.drain);
        }
        let want = cfg.route.want(&name);
        let pull = match source.pull(cfg.batch_events.max(1), &want).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(n) = quiet.allow() {
                    tracing::error!(recipient = %name, error = %e, suppressed = n, "cannot read the log; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(pull) = pull else {
            stats.oldest.store(0, Ordering::Relaxed);
            if deadline.is_some() {
                break;
            }
            tokio::select! {
                _ = source.wait() => {}
                _ = tick.tick() => {
                    sink.tick().await;
                    last_tick = Instant::now();
                }
                _ = stop.changed() => {}
            }
            continue;
        };
        for (rec, why) in &pull.unreadable {
            meters.dead(1);
            cfg.dead_letters.add(rec, why);
        }
        drop(want);
        let passed = pull.passed;
        let todo = pull.events;
        if let Some(first) = todo.first() {
            let at = batch::received_at(first).unwrap_or(0);
            stats.oldest.store(at, Ordering::Relaxed);
        }
        let current = |s: &F| s.current(&pull.mark);
        let done = deliver(
            &mut sink,
            todo,
            &mut cfg,
            &meters,
            &mut stop,
            &mut deadline,
            &quiet,
            || current(&source),
        )
        .await;
        // Dead letters are durable before the cursor passes them.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while let Err(e) = cfg.dead_letters.flush().await {
            tracing::error!(recipient = %name, store = %cfg.dead_letters, error = %e, "cannot write dead letters; retrying");
            backoff.wait().await;
        }
        match done {
            Delivery::Done => {}
            Delivery::Abandoned => continue,
            Delivery::OutOfTime => break,
        }
        stats.passed.fetch_add(passed, Ordering::Relaxed);
        // Housekeeping (hour closing) also runs under a load that never lets it idle.
        if last_tick.elapsed() >= Duration::from_secs(1) {
            sink.tick().await;
            last_tick = Instant::now();
        }
        source.done(pull.mark).await;
    }
    sink.finish().await;
    source.finish().await;
    reporter.abort();
}

/// How a run's delivery ended.
enum Delivery {
    /// Every event delivered or dead-lettered.
    Done,
    /// The run is no longer this runner's (a Kafka rebalance); it is left undone.
    Abandoned,
    /// Shutdown's drain time ran out; the rest waits for the next start.
    OutOfTime,
}

/// Delivers `todo`, a chunk at a time and in order, until every event is delivered or
/// dead-lettered; a failing chunk is retried (only its failed events) before the next one
/// is sent. Between retries `current` says whether the run is still this runner's.
#[allow(clippy::too_many_arguments)]
async fn deliver<S: Sink>(
    sink: &mut S,
    todo: Vec<Bytes>,
    cfg: &mut RunnerConfig,
    meters: &Meters,
    stop: &mut watch::Receiver<bool>,
    deadline: &mut Option<Instant>,
    quiet: &LogLimit,
    current: impl Fn() -> bool,
) -> Delivery {
    let name = cfg.name.clone();
    let batch_events = cfg.batch_events.max(1);
    let todo: Arc<[Bytes]> = todo.into();
    for start in (0..todo.len()).step_by(batch_events) {
        let mut pending = Events::slice(&todo, start..(start + batch_events).min(todo.len()));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            let outcomes = match *deadline {
                // Shutting down: a send still in flight at the deadline is abandoned; its
                // events stay in the log and go out after the next start.
                Some(d) => match tokio::time::timeout_at(d.into(), sink.deliver(&pending)).await {
                    Ok(o) => o,
                    Err(_) => return Delivery::OutOfTime,
                },
                None => sink.deliver(&pending).await,
            };
            let now = now_micros();
            let mut delivered = 0u64;
            let mut retry = Vec::new();
            let mut reason = String::new();
            for (i, ev) in pending.iter().enumerate() {
                match outcomes.get(i) {
                    Some(Outcome::Delivered) => delivered += 1,
                    Some(Outcome::Refuse(why)) => {
                        meters.dead(1);
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
            meters.delivered(delivered);
            meters.sample_latency(
                pending
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| **o == Outcome::Delivered)
                    .map(|(ev, _)| ev),
                now,
            );
            if retry.is_empty() {
                meters.up(true);
                break;
            }
            meters.up(false);
            meters.retried.increment(retry.len() as u64);
            if let Some(n) = quiet.allow() {
                tracing::warn!(recipient = %name, events = retry.len(), reason = %reason, retry_in_ms = backoff.peek().as_millis() as u64, suppressed = n, "delivery failed; retrying");
            }
            pending = retry.into();
            if deadline.is_none() && *stop.borrow() {
                *deadline = Some(Instant::now() + cfg.drain);
            }
            let wait = match *deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => backoff.next_delay().min(left),
                    None => return Delivery::OutOfTime,
                },
                None => backoff.next_delay(),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed(), if deadline.is_none() => {}
            }
            if !current() {
                tracing::info!(recipient = %name, events = pending.len(), "a rebalance moved these events' partitions; leaving them to their new owner");
                return Delivery::Abandoned;
            }
        }
    }
    Delivery::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursors::LogCursors;
    use crate::source::feed::Feed;
    use crate::source::log::LogSource;
    use std::sync::Mutex;
    use weir_proto::event::EventView;
    use weir_proto::runtime::wal::{Position, Wal, WalOptions};

    /// A fake recipient: fails the first `fail_rounds` attempts, refuses ids starting with
    /// "poison", records what it took.
    struct Fake {
        fail_rounds: usize,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Fake {
        async fn deliver(&mut self, events: &Events) -> Vec<Outcome> {
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
        let events: Vec<_> = ids.iter().map(|id| (*id, event, valid)).collect();
        crate::testing::batch(&events)
    }

    fn catalog() -> Catalog {
        crate::testing::catalog(&[("a.routed", Some("fake")), ("b.other", None)])
    }

    /// A log, its cursor book, and the `fake` recipient registered at its start.
    fn setup() -> (tempfile::TempDir, Wal, Arc<LogCursors>, Position) {
        let tmp = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalOptions {
            dir: tmp.path().join("log"),
            segment_bytes: 1 << 20,
            name: "t",
            metric_prefix: "weir_test_log",
            gather: false,
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
            dead_letters: DeadLetterStore::Files(crate::dead_letter::DeadLetters::new(
                &tmp.path().join("dead"),
                "fake",
            )),
            drain: Duration::from_secs(5),
            tally: Default::default(),
        };
        let sink = Fake {
            fail_rounds: 3,
            got: got.clone(),
        };
        let source = LogSource::new("fake", wal.clone(), cursors.clone(), Feed::new(1 << 20), start, start);
        let task = tokio::spawn(run(sink, source, cfg, stop));
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
            dead_letters: DeadLetterStore::Files(crate::dead_letter::DeadLetters::new(
                &tmp.path().join("dead"),
                "fake",
            )),
            drain: Duration::from_millis(300),
            tally: Default::default(),
        };
        let sink = Fake {
            fail_rounds: usize::MAX,
            got: Arc::default(),
        };
        let source = LogSource::new("fake", wal.clone(), cursors.clone(), Feed::new(1 << 20), start, start);
        let task = tokio::spawn(run(sink, source, cfg, stop));
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
