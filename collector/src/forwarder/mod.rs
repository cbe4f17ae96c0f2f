//! Sends the spool on, to the routers (HTTP mode, [`http`]) or to a Kafka topic (Kafka
//! mode, [`kafka`]), and frees spool segments only once every event in them is
//! confirmed (a router's `BatchAck`, or a Kafka delivery report) or, refused for good,
//! in the collector's dead-letter store with the reason. Retries with exponential
//! backoff and jitter while nothing answers; the spool holds meanwhile.

mod http;
mod kafka;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::metrics as m;
use crate::spool::Spool;

/// Forwarder settings.
#[derive(Clone, Debug)]
pub struct ForwarderOptions {
    /// Router base URLs, tried in order.
    pub routers: Vec<String>,
    /// Collector name sent with each batch.
    pub collector: String,
    /// Most events per batch.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more.
    pub batch_max_wait: Duration,
    /// How long to keep trying to drain after shutdown was asked for.
    pub drain_timeout: Duration,
    /// Where events every router refuses alone go
    /// (`<data>/collector/dead-letters/<day>.ndjson`).
    pub dead_letter_dir: std::path::PathBuf,
    /// Sent as `Authorization: Bearer <token>` to routers that require it.
    pub router_token: Option<String>,
    /// Kafka mode: produce here instead of sending to `routers`.
    pub kafka: Option<weir_proto::runtime::kafka::KafkaConfig>,
}

/// Where the spool goes.
enum Transport<'a> {
    Http(Box<http::Sender<'a>>),
    Kafka(kafka::KafkaSender<'a>),
}

impl Transport<'_> {
    fn deadline(&mut self) -> &mut Option<Instant> {
        match self {
            Transport::Http(s) => &mut s.deadline,
            Transport::Kafka(s) => &mut s.deadline,
        }
    }

    /// Delivers `events` (read as batch `batch_id`); false when shutdown's drain time ran
    /// out first (the events stay in the spool).
    async fn deliver(&mut self, batch_id: String, events: &[Bytes], shutdown: &mut watch::Receiver<bool>) -> bool {
        match self {
            Transport::Http(s) => s.deliver(batch_id, events, shutdown).await,
            Transport::Kafka(s) => s.deliver(events, shutdown).await,
        }
    }
}

/// Events one Kafka run holds at most (about 5 MB of demo events).
const KAFKA_RUN_EVENTS: usize = 16_384;

/// Runs until shutdown is asked for and the spool is drained (or the drain timeout
/// passes; what is left stays in the spool for the next start).
pub async fn run(spool: Spool, opts: ForwarderOptions, shutdown: watch::Receiver<bool>) {
    forward(&spool, &opts, shutdown).await;
    if let Err(e) = spool.save_progress() {
        tracing::error!(error = %e, "cannot save the forwarder's cursor; the last batches are sent again after a restart");
    }
}

async fn forward(spool: &Spool, opts: &ForwarderOptions, mut shutdown: watch::Receiver<bool>) {
    let mut sender = match &opts.kafka {
        Some(k) => Transport::Kafka(kafka::KafkaSender::new(opts, k)),
        None => Transport::Http(Box::new(http::Sender::new(opts))),
    };
    // One run is delivered (and confirmed) before the next: Kafka's runs are larger, so
    // a broker's acknowledgement round trip is paid per many thousand messages (the
    // producer batches them itself), not per HTTP-sized batch.
    let run_max = match sender {
        Transport::Kafka(_) => opts.batch_max_events.max(KAFKA_RUN_EVENTS),
        Transport::Http(_) => opts.batch_max_events,
    };
    let mut reader = Some(spool.wal().reader(spool.forwarded()));
    let mut durable = spool.wal().subscribe();
    loop {
        let stopping = *shutdown.borrow();
        if stopping && sender.deadline().is_none() {
            *sender.deadline() = Some(Instant::now() + opts.drain_timeout);
        }
        // A router that keeps accepting must not stretch shutdown past the drain time
        // either (a large backlog): what is left stays in the spool.
        if stopping && sender.deadline().is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                pending_bytes = spool.pending_bytes(),
                "drain timeout: leaving the rest of the spool for the next start"
            );
            return;
        }
        let from = reader.as_ref().map(|r| r.position()).unwrap_or_default();
        let (mut events, r) = read(reader.take(), run_max).await;
        reader = r;
        if reader.is_none() {
            return;
        }
        if events.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                _ = durable.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if events.len() < run_max && !stopping {
            tokio::select! {
                _ = tokio::time::sleep(opts.batch_max_wait) => {}
                _ = shutdown.changed() => {}
            }
            let (more, r) = read(reader.take(), run_max - events.len()).await;
            reader = r;
            events.extend(more);
        }
        let Some(to) = reader.as_ref().map(|r| r.position()) else {
            return;
        };
        let batch_id = format!(
            "{}/{}.{}-{}.{}",
            spool.id(),
            from.segment,
            from.offset,
            to.segment,
            to.offset
        );
        if !sender.deliver(batch_id, &events, &mut shutdown).await {
            return;
        }
        if let Err(e) = spool.acknowledge(to).await {
            tracing::error!(error = %e, "cannot record the forwarder's progress; events may be sent again");
        }
        m::refresh_spool(spool);
    }
}

/// Makes the dead letters durable before the spool lets go of them, retrying with
/// backoff; false when shutdown's `deadline` passed first.
async fn flush_dead_letters(
    dead: &mut weir_proto::runtime::dead_letter::DeadLetters,
    dir: &std::path::Path,
    deadline: Option<Instant>,
) -> bool {
    let mut backoff = weir_proto::runtime::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while let Err(e) = dead.flush() {
        tracing::error!(dir = %dir.display(), error = %e, "cannot write the collector's dead letters; retrying");
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        backoff.wait().await;
    }
    true
}

async fn read(
    reader: Option<weir_proto::runtime::wal::WalReader>,
    max: usize,
) -> (Vec<Bytes>, Option<weir_proto::runtime::wal::WalReader>) {
    let Some(mut reader) = reader else {
        return (Vec::new(), None);
    };
    let joined = tokio::task::spawn_blocking(move || {
        let r = reader.read(max, 16 << 20);
        (r, reader)
    })
    .await;
    match joined {
        Ok((Ok(events), reader)) => (events, Some(reader)),
        Ok((Err(e), reader)) => {
            tracing::error!(error = %e, "cannot read the spool; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            (Vec::new(), Some(reader))
        }
        Err(e) => {
            tracing::error!(error = %e, "spool reader stopped");
            (Vec::new(), None)
        }
    }
}
