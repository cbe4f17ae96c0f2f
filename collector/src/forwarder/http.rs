//! HTTP mode's transport: batches to the routers (`POST /v1/batches`, protobuf, zstd),
//! released on the router's `BatchAck`, failing over between routers; what a router
//! refuses for good is split in halves down to single events, and an event refused alone
//! goes to the dead letters.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::watch;
use weir_proto::pb::BatchAck;
use weir_proto::runtime::backoff::Backoff;
use weir_proto::runtime::dead_letter::DeadLetters;

use super::ForwarderOptions;
use crate::metrics as m;

/// Why a send did not get an ack.
enum SendError {
    /// Try again (no router, timeout, 5xx, 429, 401).
    Retry(String),
    /// The router refused this batch for good (413 or 400); splitting it may help.
    Refused(String),
}

/// Sends batches to the routers.
pub(super) struct Sender<'a> {
    client: Client<HttpConnector, Full<Bytes>>,
    opts: &'a ForwarderOptions,
    router_idx: usize,
    /// Set once shutdown was asked for: retries stop here.
    pub(super) deadline: Option<Instant>,
    dead: DeadLetters,
}

impl<'a> Sender<'a> {
    pub(super) fn new(opts: &'a ForwarderOptions) -> Sender<'a> {
        Sender {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            opts,
            router_idx: 0,
            deadline: None,
            dead: DeadLetters::in_dir(&opts.dead_letter_dir, "router"),
        }
    }

    /// Delivers `events` as batch `batch_id`: acknowledged by a router, or (for what a
    /// router refuses for good) split down to single events and dead-lettered. Returns
    /// false when shutdown's drain time ran out first (the events stay in the spool).
    pub(super) async fn deliver(
        &mut self,
        batch_id: String,
        events: &[Bytes],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        // Work list of (id, range of events); a refused part is replaced by its halves.
        let mut parts = vec![(batch_id, 0..events.len())];
        let mut dead = 0u64;
        while let Some((id, range)) = parts.pop() {
            let part = &events[range.clone()];
            match self.send_until_answered(&id, part, shutdown).await {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(why)) if part.len() == 1 => {
                    tracing::error!(batch = %id, reason = %why, dir = %self.opts.dead_letter_dir.display(), "the router refuses this event for good; it goes to the collector's dead letters");
                    self.dead.add(&part[0], &format!("refused by the router: {why}"));
                    dead += 1;
                }
                Some(Err(why)) => {
                    tracing::warn!(batch = %id, events = part.len(), reason = %why, "the router refuses this batch; sending it in halves");
                    let mid = range.start + part.len() / 2;
                    // Popped last-in first-out: the first half goes first, keeping order.
                    parts.push((format!("{id}/b"), mid..range.end));
                    parts.push((format!("{id}/a"), range.start..mid));
                }
            }
        }
        if dead > 0 {
            if !super::flush_dead_letters(&mut self.dead, &self.opts.dead_letter_dir, self.deadline).await {
                return false;
            }
            metrics::counter!(m::DEAD_LETTERED).increment(dead);
        }
        true
    }

    /// Sends one batch until a router acknowledges it (`Some(Ok)`) or refuses it for good
    /// (`Some(Err(reason))`); `None` when shutdown's drain time ran out.
    async fn send_until_answered(
        &mut self,
        batch_id: &str,
        events: &[Bytes],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Result<(), String>> {
        let body = weir_proto::event::batch::encode(batch_id, &self.opts.collector, events);
        let body = match zstd::bulk::compress(&body, 1) {
            Ok(z) => Bytes::from(z),
            Err(e) => {
                tracing::error!(error = %e, "zstd failed; sending uncompressed");
                Bytes::from(body)
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let routers = &self.opts.routers;
            let router = &routers[self.router_idx % routers.len()];
            let started = Instant::now();
            match send(&self.client, router, self.opts.router_token.as_deref(), body.clone()).await {
                Ok(ack) => {
                    metrics::histogram!(m::FORWARD_LATENCY).record(started.elapsed().as_secs_f64());
                    metrics::counter!(m::FORWARDED_BATCHES).increment(1);
                    metrics::counter!(m::FORWARDED_EVENTS).increment(events.len() as u64);
                    if ack.batch_id != batch_id {
                        tracing::warn!(sent = %batch_id, acked = %ack.batch_id, "router acknowledged another batch id");
                    }
                    return Some(Ok(()));
                }
                Err(SendError::Refused(why)) => return Some(Err(why)),
                Err(SendError::Retry(e)) => {
                    metrics::counter!(m::FORWARD_RETRIES).increment(1);
                    tracing::warn!(router = %router, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "forwarding failed; events stay in the spool");
                    self.router_idx += 1;
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        tracing::warn!("drain timeout: leaving the rest of the spool for the next start");
                        return None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.changed(), if self.deadline.is_none() => {
                            self.deadline = Some(Instant::now() + self.opts.drain_timeout);
                        }
                    }
                }
            }
        }
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    router: &str,
    token: Option<&str>,
    body: Bytes,
) -> Result<BatchAck, SendError> {
    let url = format!("{}/v1/batches", router.trim_end_matches('/'));
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "zstd");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| SendError::Retry(format!("bad router URL {url:?}: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| SendError::Retry("router did not answer within 30 s".to_string()))?
        .map_err(|e| SendError::Retry(format!("cannot reach {url}: {e}")))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .map_err(|_| SendError::Retry("router answer timed out".to_string()))?
        .map_err(|e| SendError::Retry(e.to_string()))?
        .to_bytes();
    let said = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match status {
        StatusCode::OK => {
            BatchAck::decode(body).map_err(|e| SendError::Retry(format!("router sent an unreadable ack: {e}")))
        }
        // The batch itself is refused (too large, unreadable, an event without an id):
        // sending it again will never work.
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST => {
            Err(SendError::Refused(format!("{status}: {}", said())))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(SendError::Retry(format!(
            "router answered {status}: {} (set collector.router_token to the router's token)",
            said()
        ))),
        _ => Err(SendError::Retry(format!("router answered {status}: {}", said()))),
    }
}
