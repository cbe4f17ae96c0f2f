//! HTTP mode's source: the router's durable log, read from the recipient's cursor through
//! the log's shared [`Feed`] (read and decoded once for every consumer at its head). A run
//! is up to 64 records of batches; done moves the cursor, which releases log segments
//! every consumer has passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_proto::event::batch;
use weir_proto::runtime::wal::{Position, Wal, WalReader};

use super::feed::Feed;
use super::{Pull, Source, SourceError, Stats, Want};
use crate::cursors::LogCursors;
use crate::metrics as m;

/// One recipient's view of the router log.
pub struct LogSource {
    name: String,
    wal: Wal,
    cursors: Arc<LogCursors>,
    feed: Arc<Feed>,
    reader: Option<WalReader>,
    durable: watch::Receiver<Position>,
    /// The cursor at start, and the log's end then: what lies between was waiting.
    start: Position,
    end_at_start: Position,
}

impl LogSource {
    /// Follows `wal` (through its `feed`) for the consumer `name`, registered in
    /// `cursors` at `start`; `end_at_start` is the log's end when the router started.
    pub fn new(
        name: &str,
        wal: Wal,
        cursors: Arc<LogCursors>,
        feed: Arc<Feed>,
        start: Position,
        end_at_start: Position,
    ) -> LogSource {
        LogSource {
            name: name.to_string(),
            feed,
            reader: Some(wal.reader(start)),
            durable: wal.subscribe(),
            wal,
            cursors,
            start,
            end_at_start,
        }
    }
}

impl Source for LogSource {
    type Mark = Position;

    async fn pull(&mut self, _max: usize, want: &Want<'_>) -> Result<Option<Pull<Position>>, SourceError> {
        let entries = self.feed.next(&mut self.reader).await.map_err(SourceError::Log)?;
        let Some(last) = entries.last() else {
            return Ok(None);
        };
        let mark = last.to();
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        let passed = entries.iter().map(|e| e.take(want, &mut events, &mut unreadable)).sum();
        Ok(Some(Pull {
            events,
            unreadable,
            passed,
            mark,
        }))
    }

    async fn wait(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.durable.changed()).await;
    }

    async fn done(&mut self, mark: Position) {
        if let Err(e) = self.cursors.advance(&self.name, mark).await {
            tracing::error!(recipient = %self.name, error = %e, "cannot save the recipient's cursor or release log segments");
        }
    }

    async fn finish(&mut self) {
        if let Err(e) = self.cursors.save(&self.name) {
            tracing::error!(recipient = %self.name, error = %e, "cannot save the recipient's cursor; it reads a little of the log again after a restart");
        }
        if let Some(r) = &self.reader {
            let left = self.cursors.backlog_bytes(&self.name);
            if left > 0 {
                tracing::warn!(recipient = %self.name, backlog_bytes = left, at = ?r.position(), "stopping with a backlog; it is delivered after the next start");
            }
        }
    }

    fn report(&self, name: &str, stats: Arc<Stats>) -> JoinHandle<()> {
        let waiting = Arc::new(AtomicU64::new(0));
        // Counted in the background (a long log takes a while); the backlog reads low until then.
        tokio::task::spawn_blocking({
            let (wal, waiting) = (self.wal.clone(), waiting.clone());
            let (from, to) = (self.start, self.end_at_start);
            move || waiting.store(count_events(wal.reader(from), to), Ordering::Relaxed)
        });
        let (name, cursors) = (name.to_string(), self.cursors.clone());
        tokio::spawn(async move {
            let gauges = super::Gauges::new(&name);
            let bytes_g = metrics::gauge!(m::RECIPIENT_BACKLOG_BYTES, "recipient" => name.clone());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let backlog = (waiting.load(Ordering::Relaxed) + cursors.appended())
                    .saturating_sub(stats.passed.load(Ordering::Relaxed));
                let bytes = cursors.backlog_bytes(&name);
                // Nothing left to read is a backlog of 0, whatever the event arithmetic says.
                gauges.set(if bytes == 0 { 0 } else { backlog }, &stats);
                bytes_g.set(bytes as f64);
                cursors.refresh();
            }
        })
    }
}

/// Counts the events between the reader's position and `end`.
fn count_events(mut reader: WalReader, end: Position) -> u64 {
    let mut n = 0;
    while reader.position() < end {
        match reader.read(256, 32 << 20) {
            Ok(recs) if !recs.is_empty() => {
                n += recs
                    .iter()
                    .map(|r| {
                        crate::log_record::batch(r.clone())
                            .ok()
                            .and_then(|b| batch::events(&b).ok())
                            .map_or(0, |e| e.len() as u64)
                    })
                    .sum::<u64>()
            }
            _ => break,
        }
    }
    n
}
