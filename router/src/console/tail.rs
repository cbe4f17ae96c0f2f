//! `GET /v1/tail`: every event entering the router, as Server-Sent Events.
//!
//! Intake publishes what it stored (a whole batch, or one event from Kafka) into a
//! [`tokio::sync::broadcast`] ring of [`RING`] entries: a send never waits, and with no
//! subscriber it is skipped. Each subscriber has its own task that decodes, filters,
//! redacts and renders, then writes into a small channel to its connection. A subscriber
//! that reads slowly stops pulling from the ring; the ring overwrites its oldest entries,
//! and when it catches up it gets one `event: dropped` message with the number of events
//! it missed. So a slow client costs intake nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use weir_proto::event::batch::BatchView;
use weir_proto::event::EventView;

/// Entries the ring holds (batches or single events) for the slowest subscriber.
pub const RING: usize = 64;
/// Rendered chunks waiting in a subscriber's connection.
const CONNECTION_QUEUE: usize = 4;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What intake stored, as it is on the wire.
#[derive(Clone)]
pub enum Published {
    /// An encoded `weir.v1.EventBatch` (HTTP mode).
    Batch(Bytes),
    /// One encoded `weir.v1.Event` (a Kafka message).
    Event(Bytes),
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

    /// Whether `view` passes.
    pub fn matches(&self, view: &EventView<'_>) -> bool {
        if let Some(e) = &self.event {
            let ok = match e.strip_suffix('*') {
                Some(prefix) => view.event.starts_with(prefix),
                None => view.event == e,
            };
            if !ok {
                return false;
            }
        }
        self.env.as_deref().is_none_or(|env| view.env == env)
            && self.valid.is_none_or(|v| view.valid == v)
            && self.id.as_deref().is_none_or(|id| view.id == id)
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
    /// A tail allowing `max_subscribers` at once, showing `redact` paths (`context.ip`,
    /// `fields.email`) as `"***"`; every stream ends when `stop` turns true.
    pub fn new(max_subscribers: usize, redact: &[String], stop: watch::Receiver<bool>) -> Tail {
        let (tx, _) = broadcast::channel(RING);
        Tail {
            tx,
            published: AtomicU64::new(0),
            subscribers: Arc::new(AtomicUsize::new(0)),
            max_subscribers,
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
            redact: self.redact.clone(),
            out,
            stop: self.stop.clone(),
            expected: self.published.load(Ordering::Relaxed),
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

struct Subscriber {
    rx: broadcast::Receiver<Arc<Entry>>,
    filter: Filter,
    redact: Vec<Vec<String>>,
    out: mpsc::Sender<Bytes>,
    stop: watch::Receiver<bool>,
    /// The sequence number of the next event it should see.
    expected: u64,
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
                _ = keepalive.tick() => Some(Bytes::from_static(b": keepalive\n\n")),
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

    /// The SSE text for `entry`: a `dropped` notice first when events were missed.
    fn render(&mut self, entry: &Entry) -> Option<Bytes> {
        let mut out = Vec::new();
        if entry.first > self.expected {
            let missed = entry.first - self.expected;
            out.extend_from_slice(format!("event: dropped\ndata: {{\"dropped\":{missed}}}\n\n").as_bytes());
        }
        self.expected = self.expected.max(entry.first + entry.count);
        let one = |raw: &[u8], out: &mut Vec<u8>| {
            let Ok(view) = EventView::decode(raw) else { return };
            if !self.filter.matches(&view) {
                return;
            }
            let mut json = Vec::with_capacity(raw.len() + 128);
            view.write_json(&mut json);
            if !self.redact.is_empty() {
                json = redact(&json, &self.redact);
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\n\n");
        };
        match &entry.data {
            Published::Event(raw) => one(raw, &mut out),
            Published::Batch(body) => {
                if let Ok(batch) = BatchView::decode(body) {
                    for raw in &batch.events {
                        one(raw, &mut out);
                    }
                }
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
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
