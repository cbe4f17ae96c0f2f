//! Recipients: the systems the router fans events out to (RabbitMQ, MongoDB, Kafka, and
//! the Mongo hourly buffer). Each one follows the router log with its own cursor in its
//! own task ([`runner`]), so a slow or dead recipient never holds up the others or intake.
//!
//! A recipient is a [`Sink`]: given a run of encoded events it answers, per event,
//! delivered, retry later, or refused for good (dead-lettered with the reason).

mod error;
pub mod kafka;
pub mod mongo;
pub mod rabbitmq;
pub mod runner;

use std::future::Future;
use std::ops::{Deref, Range};
use std::sync::Arc;

use bytes::Bytes;

pub use error::ServerError;

/// What became of one event handed to a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The recipient has it (confirmed by the server).
    Delivered,
    /// Not taken this time (server down, timeout, throttled); try again later.
    Retry(String),
    /// The recipient can never take it (the server refused it, or it cannot be rendered);
    /// it goes to the dead-letter store with this reason.
    Refuse(String),
}

/// A run of encoded events handed to a [`Sink`]: a slice of the runner's run, shared.
/// It reads as a `[Bytes]`; a sink that hands the events to another task (the file
/// buffer's blocking writer) clones it, which costs one reference count, not one per
/// event.
#[derive(Clone, Debug)]
pub struct Events {
    all: Arc<[Bytes]>,
    range: Range<usize>,
}

impl Events {
    /// The events `range` of `all`.
    ///
    /// # Panics
    /// When `range` is not within `all` (a bug in the caller).
    pub fn slice(all: &Arc<[Bytes]>, range: Range<usize>) -> Events {
        assert!(
            range.start <= range.end && range.end <= all.len(),
            "events out of range"
        );
        Events {
            all: all.clone(),
            range,
        }
    }
}

impl From<Vec<Bytes>> for Events {
    fn from(events: Vec<Bytes>) -> Events {
        let range = 0..events.len();
        Events {
            all: events.into(),
            range,
        }
    }
}

impl Deref for Events {
    type Target = [Bytes];

    fn deref(&self) -> &[Bytes] {
        &self.all[self.range.clone()]
    }
}

/// What the runner of one recipient is started with: the log it follows, its settings
/// and the shutdown signal.
pub struct RunArgs {
    /// The router log or its Kafka consumer group.
    pub source: crate::source::Follow,
    /// The runner's settings.
    pub cfg: runner::RunnerConfig,
    /// Turns true at shutdown.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl RunArgs {
    /// Runs `sink` behind the recipient runner (cursor, retries, dead letters).
    pub fn spawn<S: Sink>(self, sink: S) -> tokio::task::JoinHandle<()> {
        tokio::spawn(runner::run(sink, self.source, self.cfg, self.stop))
    }
}

/// A kind of recipient: its `[router.recipients.<name>]` table (the `Config` of its
/// module) checks itself and starts its sink. A new kind is its module, implementing
/// this, plus one line in `recipient_kinds!` (router/src/config.rs).
pub trait Kind {
    /// `(max_backlog_bytes, batch_events)`, which every kind has.
    fn limits(&self) -> (u64, usize);
    /// Checks what deserialization cannot; the key is relative to the recipient's table.
    fn validate(&self) -> Result<(), weir_proto::InvalidSetting> {
        Ok(())
    }
    /// Starts the recipient named `name`.
    fn spawn(&self, name: &str, run: RunArgs) -> tokio::task::JoinHandle<()>;
}

/// The defaults every kind shares.
pub mod defaults {
    /// `max_backlog_bytes`: 4 GiB.
    pub fn max_backlog() -> u64 {
        4 << 30
    }
    /// `batch_events`: 500.
    pub fn batch_events() -> usize {
        500
    }
}

/// A recipient's delivery side.
pub trait Sink: Send + 'static {
    /// Delivers `events` (each an encoded `weir.v1.Event`) and returns one outcome per
    /// event, in order. Must not panic on any event.
    fn deliver(&mut self, events: &Events) -> impl Future<Output = Vec<Outcome>> + Send;

    /// Called once before the first delivery: connect and declare what consumers bind
    /// to (RabbitMQ's exchange), so it exists before any event is sent. A server that is
    /// away is not an error here: delivery retries.
    fn start(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called about once a second while the recipient runs (hour closing for the buffer).
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once when the runner stops (flush what is open).
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Gates a periodic job (a buffer's hour closing) to once per `period`, however often
/// the runner ticks.
pub struct Every {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
}

impl Every {
    /// A gate open at once, then once per `period`.
    pub fn new(period: std::time::Duration) -> Every {
        Every { period, last: None }
    }

    /// True (and restarts the period) when the job is due.
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            return false;
        }
        self.last = Some(std::time::Instant::now());
        true
    }
}

/// Renders a name template: `{event}` as the event name, `{event_ident}` with dots as
/// underscores.
pub fn render_template(template: &str, event: &str) -> String {
    if !template.contains('{') {
        return template.to_string();
    }
    let ident = event.replace('.', "_");
    template.replace("{event_ident}", &ident).replace("{event}", event)
}

/// Checks a template's placeholders; returns the unknown one.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("unclosed '{{' in {template:?}"));
        };
        let name = &rest[start + 1..start + len];
        if name != "event" && name != "event_ident" {
            return Err(format!(
                "unknown placeholder {{{name}}} in {template:?}; use {{event}} or {{event_ident}}"
            ));
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

/// Decodes one event for a sink, or marks it refused (it can never be sent).
pub fn decode<'a>(event: &'a [u8], outcome: &mut Outcome) -> Option<weir_proto::event::EventView<'a>> {
    match weir_proto::event::EventView::decode(event) {
        Ok(v) => Some(v),
        Err(e) => {
            *outcome = Outcome::Refuse(format!("unreadable event: {e}"));
            None
        }
    }
}

/// Every outcome `Retry(reason)`: the whole run failed the same way.
pub fn retry_all(n: usize, reason: &str) -> Vec<Outcome> {
    vec![Outcome::Retry(reason.to_string()); n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(render_template("weir.{event}", "item.viewed"), "weir.item.viewed");
        assert_eq!(render_template("{event_ident}_v", "item.viewed"), "item_viewed_v");
        assert_eq!(render_template("fixed", "item.viewed"), "fixed");
        assert!(check_template("weir.{event}").is_ok());
        assert!(check_template("{event_ident}").is_ok());
        assert!(check_template("{evnt}").unwrap_err().contains("{evnt}"));
        assert!(check_template("{event").is_err());
    }
}
