//! `GET /v1/tail`: every event entering the router, as Server-Sent Events.
//!
//! Intake publishes what it stored (a whole batch, or one event from Kafka) into a
//! [`tokio::sync::broadcast`] ring of [`RING`] entries: a send never waits, and with no
//! subscriber it is skipped. With the batch come the [`Head`]s intake read while it
//! checked each event (name, env, validity, id: where they are in the batch), so a
//! subscriber's filter costs a few comparisons per event, not a decode. Each subscriber
//! has its own task that filters, then renders and redacts at most
//! `tail_max_events_per_second` events (what passes beyond that is counted as dropped),
//! and writes into a small channel to its connection. A subscriber that reads slowly
//! stops pulling from the ring; the ring overwrites its oldest entries. What a stream
//! missed (overwritten, past its budget, or published without heads) is counted in an
//! `event: dropped` message sent before the next events it shows, or alone at most once
//! a second, or at the keepalive when the events stopped. So neither a slow client nor a
//! fast one costs intake more than a bounded share.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use weir_proto::event::EventView;

/// Entries the ring holds (batches or single events) for the slowest subscriber.
pub const RING: usize = 64;
/// Rendered chunks waiting in a subscriber's connection.
const CONNECTION_QUEUE: usize = 4;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A stream that shows nothing is told what it missed at most this often.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// Where one event and the fields a filter reads are in the published bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    raw: Range<u32>,
    event: Range<u32>,
    env: Range<u32>,
    id: Range<u32>,
    valid: bool,
}

impl Head {
    /// The head of `view`, decoded from `raw`, both inside `data`; `None` when they are
    /// not (a view that owns a string).
    pub fn of(data: &[u8], raw: &[u8], view: &EventView<'_>) -> Option<Head> {
        let at = |s: &[u8]| -> Option<Range<u32>> {
            // An empty field is not on the wire: its (default) string is nowhere in `data`.
            if s.is_empty() {
                return Some(0..0);
            }
            let start = (s.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
            let end = start.checked_add(s.len())?;
            (end <= data.len()).then_some(start as u32..end as u32)
        };
        Some(Head {
            raw: at(raw)?,
            event: at(view.event.as_bytes())?,
            env: at(view.env.as_bytes())?,
            id: at(view.id.as_bytes())?,
            valid: view.valid,
        })
    }
}

/// What intake stored, as it is on the wire, with its events' heads.
#[derive(Clone, Debug)]
pub struct Published {
    /// An encoded `weir.v1.EventBatch` (HTTP mode) or one encoded `weir.v1.Event` (a
    /// Kafka message).
    pub data: Bytes,
    /// Each readable event's head, in order.
    pub heads: Vec<Head>,
}

impl Published {
    /// One encoded event (from Kafka): decoded here for its head.
    pub fn event(data: Bytes) -> Published {
        let heads = EventView::decode(&data)
            .ok()
            .and_then(|v| Head::of(&data, &data, &v))
            .into_iter()
            .collect();
        Published { data, heads }
    }

    fn get(&self, r: &Range<u32>) -> &[u8] {
        self.data.get(r.start as usize..r.end as usize).unwrap_or_default()
    }
}

struct Entry {
    /// Events published before this entry.
    first: u64,
    /// Events in it.
    count: u64,
    data: Published,
}

/// The broadcast point between intake and the subscribers.
pub struct Tail {
    tx: broadcast::Sender<Arc<Entry>>,
    published: AtomicU64,
    subscribers: Arc<AtomicUsize>,
    max_subscribers: usize,
    max_per_second: u32,
    redact: Vec<Vec<String>>,
    stop: watch::Receiver<bool>,
}

/// Which events a subscriber wants (`/v1/tail?event=item.*&env=web&valid=false&id=...`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// An exact name, or a prefix ending in `.*`.
    pub event: Option<String>,
    /// An environment.
    pub env: Option<String>,
    /// Only valid (`true`) or only flagged (`false`) events.
    pub valid: Option<bool>,
    /// One event id.
    pub id: Option<String>,
}

impl Filter {
    /// Parses the query string; an unknown parameter or a bad `valid` is an error that says
    /// what is accepted.
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            if v.is_empty() {
                continue;
            }
            match k.as_ref() {
                "event" => f.event = Some(v),
                "env" => f.env = Some(v),
                "id" => f.id = Some(v),
                "valid" => {
                    f.valid = Some(match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("valid={v}: use valid=true or valid=false")),
                    })
                }
                other => {
                    return Err(format!(
                        "unknown filter {other:?}: /v1/tail takes event= (a name or prefix.*), env=, valid=true|false and id="
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Whether the event of `head` in `data` passes.
    fn matches(&self, data: &Published, head: &Head) -> bool {
        if let Some(e) = &self.event {
            let event = data.get(&head.event);
            let ok = match e.strip_suffix('*') {
                Some(prefix) => event.starts_with(prefix.as_bytes()),
                None => event == e.as_bytes(),
            };
            if !ok {
                return false;
            }
        }
        self.env
            .as_deref()
            .is_none_or(|env| data.get(&head.env) == env.as_bytes())
            && self.valid.is_none_or(|v| head.valid == v)
            && self.id.as_deref().is_none_or(|id| data.get(&head.id) == id.as_bytes())
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// At `tail_max_subscribers` already.
    #[error("{0} console subscribers are connected (router.tail_max_subscribers); close one or raise the limit")]
    Full(usize),
}

impl Tail {
    /// A tail allowing `max_subscribers` at once, each shown at most `max_per_second`
    /// events a second, with `redact` paths (`context.ip`, `fields.email`) as `"***"`;
    /// every stream ends when `stop` turns true.
    pub fn new(max_subscribers: usize, max_per_second: u32, redact: &[String], stop: watch::Receiver<bool>) -> Tail {
        let (tx, _) = broadcast::channel(RING);
        Tail {
            tx,
            published: AtomicU64::new(0),
            subscribers: Arc::new(AtomicUsize::new(0)),
            max_subscribers,
            max_per_second,
            redact: redact
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect(),
            stop,
        }
    }

    /// Whether anyone is watching (intake skips the work otherwise).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes what intake stored: `count` events in `data`. Never waits.
    pub fn publish(&self, data: Published, count: u64) {
        let first = self.published.fetch_add(count, Ordering::Relaxed);
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Arc::new(Entry { first, count, data }));
    }

    /// Subscribes with `filter`: a channel of rendered SSE chunks that ends at shutdown
    /// or when the receiver is dropped.
    pub fn subscribe(&self, filter: Filter) -> Result<mpsc::Receiver<Bytes>, SubscribeError> {
        let n = self.subscribers.fetch_add(1, Ordering::SeqCst);
        if n >= self.max_subscribers {
            self.subscribers.fetch_sub(1, Ordering::SeqCst);
            return Err(SubscribeError::Full(self.max_subscribers));
        }
        let rx = self.tx.subscribe();
        let (out, chunks) = mpsc::channel(CONNECTION_QUEUE);
        let sub = Subscriber {
            rx,
            filter,
            budget: Budget::new(self.max_per_second),
            redact: self.redact.clone(),
            out,
            stop: self.stop.clone(),
            expected: self.published.load(Ordering::Relaxed),
            missed: 0,
            told: Instant::now(),
            _count: Counted(self.subscribers.clone()),
        };
        tokio::spawn(sub.run());
        Ok(chunks)
    }
}

/// Decrements the subscriber count when the subscriber's task ends.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A token bucket of events a second, refilled once per entry (one clock read).
struct Budget {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(per_second: u32) -> Budget {
        let per_second = f64::from(per_second.max(1));
        Budget {
            per_second,
            tokens: per_second,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + gained).min(self.per_second);
        self.at = now;
    }

    /// Whether nothing more can be shown until the next refill.
    fn spent(&self) -> bool {
        self.tokens < 1.0
    }

    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Subscriber {
    rx: broadcast::Receiver<Arc<Entry>>,
    filter: Filter,
    budget: Budget,
    redact: Vec<Vec<String>>,
    out: mpsc::Sender<Bytes>,
    stop: watch::Receiver<bool>,
    /// The sequence number of the next event it should see.
    expected: u64,
    /// Events missed since the last `dropped` notice.
    missed: u64,
    /// When the last notice went out.
    told: Instant,
    _count: Counted,
}

impl Subscriber {
    async fn run(mut self) {
        // The stream opens with a comment, so the client sees the connection at once.
        if !self.send(Bytes::from_static(b": weir tail\n\n")).await {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                got = self.rx.recv() => match got {
                    Ok(entry) => self.render(&entry),
                    // The ring moved past us: the next entry tells how far.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // What was missed and not told yet (the events stopped) goes out here.
                _ = keepalive.tick() => Some(self.notice().unwrap_or(Bytes::from_static(b": keepalive\n\n"))),
                _ = self.stop.changed() => return,
            };
            if let Some(chunk) = chunk {
                if !self.send(chunk).await {
                    return;
                }
            }
        }
    }

    /// Sends a chunk; false when the client left or the router stops.
    async fn send(&mut self, chunk: Bytes) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        tokio::select! {
            sent = self.out.send(chunk) => sent.is_ok(),
            _ = self.stop.changed() => false,
        }
    }

    /// The SSE text for `entry`: the events that pass the filter, while the budget
    /// lasts, after a `dropped` notice counting the events missed (the ring moved past
    /// them, or they passed the filter beyond the budget). A notice goes out with the
    /// next events shown, or alone at most every [`NOTICE_EVERY`]: a stream past its
    /// budget costs one small write a second, not one per batch.
    fn render(&mut self, entry: &Entry) -> Option<Bytes> {
        let heads = &entry.data.heads;
        self.missed += entry.first.saturating_sub(self.expected);
        self.expected = self.expected.max(entry.first + entry.count);
        // Events without a head: published as the first subscriber joined (intake read
        // no heads), or unreadable (a Kafka message).
        self.missed += entry.count.saturating_sub(heads.len() as u64);
        let now = Instant::now();
        self.budget.refill(now);
        let mut events = Vec::new();
        if self.filter == Filter::default() && self.budget.spent() {
            // Everything passes and nothing more can be shown this second.
            self.missed += heads.len() as u64;
        } else {
            for head in heads {
                if !self.filter.matches(&entry.data, head) {
                    continue;
                }
                if !self.budget.take() {
                    self.missed += 1;
                    continue;
                }
                let raw = entry.data.get(&head.raw);
                let Ok(view) = EventView::decode(raw) else { continue };
                let mut json = Vec::with_capacity(raw.len() + 128);
                view.write_json(&mut json);
                if !self.redact.is_empty() {
                    json = redact(&json, &self.redact);
                }
                events.extend_from_slice(b"data: ");
                events.extend_from_slice(&json);
                events.extend_from_slice(b"\n\n");
            }
        }
        let mut out = Vec::new();
        if !events.is_empty() || now.saturating_duration_since(self.told) >= NOTICE_EVERY {
            out.extend_from_slice(&self.notice().unwrap_or_default());
        }
        out.extend_from_slice(&events);
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// The `dropped` notice for what was missed since the last one, if anything was.
    fn notice(&mut self) -> Option<Bytes> {
        if self.missed == 0 {
            return None;
        }
        let text = format!("event: dropped\ndata: {{\"dropped\":{}}}\n\n", self.missed);
        self.missed = 0;
        self.told = Instant::now();
        Some(Bytes::from(text))
    }
}

/// `json` with every value at one of `paths` replaced by `"***"`.
pub fn redact(json: &[u8], paths: &[Vec<String>]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return json.to_vec();
    };
    for path in paths {
        let pointer: String = path
            .iter()
            .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
            .collect();
        if let Some(at) = v.pointer_mut(&pointer) {
            *at = serde_json::Value::String("***".into());
        }
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| json.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_say_what_they_take() {
        let f = Filter::parse("event=item.*&env=web&valid=false").unwrap();
        assert_eq!(f.event.as_deref(), Some("item.*"));
        assert_eq!(f.valid, Some(false));
        assert!(Filter::parse("valid=maybe")
            .unwrap_err()
            .contains("valid=true or valid=false"));
        assert!(Filter::parse("colour=red")
            .unwrap_err()
            .contains("unknown filter \"colour\""));
    }

    /// What intake publishes for `events`: the batch and its heads.
    fn published(events: &[(&str, &str, bool)]) -> Published {
        let framed = crate::testing::batch(events);
        let data = Bytes::copy_from_slice(&framed[weir_proto::record::HEADER_LEN..]);
        let batch = weir_proto::event::batch::BatchView::decode(&data).unwrap();
        let heads = batch
            .events
            .iter()
            .map(|raw| Head::of(&data, raw, &EventView::decode(raw).unwrap()).unwrap())
            .collect();
        Published { data, heads }
    }

    /// Publishes `count` events without heads (as when the first subscriber joined while
    /// intake read the batch).
    fn publish_headless(tail: &Tail, count: u64) {
        let data = Published {
            data: Bytes::from_static(b"x"),
            heads: Vec::new(),
        };
        tail.publish(data, count);
    }

    /// The data lines and the dropped count of everything `rx` has now.
    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> (Vec<serde_json::Value>, u64) {
        let (mut events, mut dropped) = (Vec::new(), 0);
        while let Ok(chunk) = rx.try_recv() {
            let text = String::from_utf8(chunk.to_vec()).unwrap();
            for block in text.split("\n\n").filter(|b| !b.is_empty() && !b.starts_with(':')) {
                if let Some(d) = block.strip_prefix("event: dropped\ndata: ") {
                    dropped += serde_json::from_str::<serde_json::Value>(d).unwrap()["dropped"]
                        .as_u64()
                        .unwrap();
                } else {
                    let data = block.strip_prefix("data: ").expect("a data line");
                    events.push(serde_json::from_str(data).unwrap());
                }
            }
        }
        (events, dropped)
    }

    #[tokio::test]
    async fn a_stream_shows_what_its_filter_passes_within_its_budget_and_counts_the_rest() {
        let (_stop_tx, stop) = watch::channel(false);
        let tail = Tail::new(4, 3, &["fields".to_string()], stop);
        assert!(!tail.watched());
        let mut all = tail.subscribe(Filter::default()).unwrap();
        let mut one = tail.subscribe(Filter::parse("id=e7").unwrap()).unwrap();
        let mut flagged = tail
            .subscribe(Filter::parse("event=cart.*&valid=false").unwrap())
            .unwrap();
        assert!(tail.watched());
        let events: Vec<(String, &str, bool)> = (0..10)
            .map(|i| {
                (
                    format!("e{i}"),
                    if i % 2 == 0 { "cart.added" } else { "item.viewed" },
                    i % 4 != 0,
                )
            })
            .collect();
        let refs: Vec<(&str, &str, bool)> = events.iter().map(|(id, e, v)| (id.as_str(), *e, *v)).collect();
        tail.publish(published(&refs), 10);
        // A published batch without heads (the first subscriber joined while intake read
        // it) is counted as dropped, never shown half; told with the next events shown,
        // or alone a second after the last notice.
        publish_headless(&tail, 2);
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (shown, dropped) = drain(&mut all);
        let ids: Vec<&str> = shown.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["e0", "e1", "e2"], "the first three, within 3 a second");
        assert_eq!(dropped, 7, "the seven beyond the budget, told with the events shown");
        assert_eq!(shown[0]["fields"], "***", "redacted as configured");
        assert_eq!(shown[0]["event"], "cart.added");

        let (shown, dropped) = drain(&mut one);
        assert_eq!(shown.len(), 1);
        assert_eq!(
            shown[0]["id"], "e7",
            "the budget is spent only on what passes the filter"
        );
        assert_eq!(dropped, 0, "the two without heads are not told yet");

        tokio::time::sleep(NOTICE_EVERY).await;
        publish_headless(&tail, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(drain(&mut all), (Vec::new(), 3), "2 + 1 in one notice, a second on");
        assert_eq!(drain(&mut one), (Vec::new(), 3));

        let (shown, _) = drain(&mut flagged);
        let ids: Vec<&str> = shown.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["e0", "e4", "e8"], "name prefix and validity from the heads");
        assert!(shown.iter().all(|e| e["valid"] == false));
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_missed_is_told_at_the_keepalive_when_the_events_stop() {
        let (_stop_tx, stop) = watch::channel(false);
        let tail = Tail::new(1, 1000, &[], stop);
        let mut rx = tail.subscribe(Filter::default()).unwrap();
        publish_headless(&tail, 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(drain(&mut rx), (Vec::new(), 0), "not told alone within a second");
        tokio::time::sleep(KEEPALIVE).await;
        assert_eq!(drain(&mut rx), (Vec::new(), 2), "told instead of the keepalive comment");
    }

    #[tokio::test]
    async fn a_flagged_event_without_a_name_is_shown() {
        let (_stop_tx, stop) = watch::channel(false);
        let tail = Tail::new(1, 10, &[], stop);
        let mut flagged = tail.subscribe(Filter::parse("valid=false").unwrap()).unwrap();
        // An empty name is not on the wire at all.
        let p = published(&[("nameless", "", false), ("named", "x.y", true)]);
        assert_eq!(p.heads.len(), 2);
        assert_eq!(p.heads[0].event, 0..0);
        tail.publish(p, 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (shown, dropped) = drain(&mut flagged);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0]["id"], "nameless");
        assert_eq!(dropped, 0);
    }

    #[test]
    fn a_head_outside_the_published_bytes_is_none() {
        let p = published(&[("a", "x.y", true)]);
        let raw = p.get(&p.heads[0].raw).to_vec();
        let view = EventView::decode(&raw).unwrap();
        assert_eq!(
            Head::of(&p.data, &raw, &view),
            None,
            "a copy elsewhere is not in the batch"
        );
        assert_eq!(Head::of(&raw, &raw, &view).map(|h| h.raw), Some(0..raw.len() as u32));
    }

    #[test]
    fn redaction_replaces_only_the_paths_present() {
        let json = br#"{"id":"a","context":{"ip":"1.2.3.4","ua":"x"},"fields":{"email":"e@x"}}"#;
        let paths = vec![
            vec!["context".to_string(), "ip".to_string()],
            vec!["fields".to_string(), "phone".to_string()],
        ];
        let out: serde_json::Value = serde_json::from_slice(&redact(json, &paths)).unwrap();
        assert_eq!(out["context"]["ip"], "***");
        assert_eq!(out["context"]["ua"], "x");
        assert_eq!(out["fields"]["email"], "e@x");
        assert!(out["fields"].get("phone").is_none());
    }
}
