//! Turning a request's events into spool records: validate against the catalog, apply
//! the environment's policy, stamp (id, received_at, collector) and encode.

use serde::Serialize;
use weir_proto::catalog::{Catalog, Checked};
use weir_proto::event::{EventView, Incoming};
use weir_proto::record;
use weir_proto::runtime::http::{self as h, Response};

/// One refused or flagged event, by its index in the request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventError {
    /// Index in the request (array position or NDJSON line among events).
    pub index: usize,
    /// What is wrong, each problem naming its field, joined by `; `.
    pub error: String,
}

/// The `202` answer to a request.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Events kept, flagged ones included.
    pub accepted: usize,
    /// Events kept with `valid = false`.
    pub flagged: usize,
    /// Events refused (backend envs, unknown envs).
    pub rejected: usize,
    /// Events switched off by the catalog (`drop = true`): neither kept nor refused.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped: usize,
    /// The flagged and rejected events, by index.
    pub errors: Vec<EventError>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Summary {
    /// The answer: [`Summary::status`] with the summary as JSON. The common case (every
    /// event accepted, nothing to report) is written without serde, and a single accepted
    /// event, the most frequent request of all, is one static string.
    pub fn response(&self) -> Response {
        const ONE: &str = r#"{"accepted":1,"flagged":0,"rejected":0,"errors":[]}"#;
        let plain = self.errors.is_empty() && self.dropped == 0;
        if !plain {
            return h::json(self.status(), self);
        }
        let body = if (self.accepted, self.flagged, self.rejected) == (1, 0, 0) {
            bytes::Bytes::from_static(ONE.as_bytes())
        } else {
            bytes::Bytes::from(format!(
                r#"{{"accepted":{},"flagged":{},"rejected":{},"errors":[]}}"#,
                self.accepted, self.flagged, self.rejected
            ))
        };
        h::bytes(self.status(), "application/json", body)
    }

    /// The status of the answer: 202 when anything was stored, 400 when nothing was and
    /// something was rejected (a client checking only the status must notice).
    pub fn status(&self) -> hyper::StatusCode {
        if self.accepted == 0 && self.rejected > 0 {
            hyper::StatusCode::BAD_REQUEST
        } else {
            hyper::StatusCode::ACCEPTED
        }
    }
}

/// Outcome of one event, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid and kept.
    Accepted,
    /// Invalid, kept with `valid = false`.
    Flagged,
    /// Refused.
    Rejected,
    /// Switched off in the catalog.
    Dropped,
}

/// Counts per (env, event, outcome), for metrics; names outside the catalog are
/// reported as `_unknown` so senders cannot blow up metric cardinality. A row holds the
/// (env, event) counters themselves ([`crate::metrics::counters`]), so counting costs no
/// allocation and no metric registry lookup per request.
#[derive(Debug, Default)]
pub struct Tally {
    /// (counters of the env and event, outcome, count).
    pub counts: Vec<(std::sync::Arc<crate::metrics::EventCounters>, Outcome, u64)>,
}

impl Tally {
    fn add(&mut self, env: &str, event: &str, outcome: Outcome) {
        if let Some(row) = self
            .counts
            .iter_mut()
            .find(|(c, o, _)| *o == outcome && c.is(env, event))
        {
            row.2 += 1;
        } else {
            self.counts.push((crate::metrics::counters(env, event), outcome, 1));
        }
    }
}

/// What a request produced: spool records and the answer.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Framed records, ready to append to the spool.
    pub framed: Vec<u8>,
    /// Number of records in `framed`.
    pub records: usize,
    /// The answer for the sender.
    pub summary: Summary,
    /// Counts for metrics.
    pub tally: Tally,
    /// Why the whole request is refused (403), when it is: nothing is kept.
    pub forbidden: Option<String>,
}

impl Ingested {
    /// Adds `other`'s records and answer to this one (one request made of several parts,
    /// spooled in one append). `other`'s error indexes follow this one's events.
    pub fn merge(&mut self, other: Ingested) {
        let offset = self.summary.accepted + self.summary.rejected + self.summary.dropped;
        self.framed.extend_from_slice(&other.framed);
        self.records += other.records;
        let s = other.summary;
        self.summary.accepted += s.accepted;
        self.summary.flagged += s.flagged;
        self.summary.rejected += s.rejected;
        self.summary.dropped += s.dropped;
        self.summary.errors.extend(s.errors.into_iter().map(|e| EventError {
            index: e.index + offset,
            ..e
        }));
        self.tally.counts.extend(other.tally.counts);
        self.forbidden = self.forbidden.take().or(other.forbidden);
    }
}

/// Context a listener adds to each event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Source<'a> {
    /// The environment this listener binds (unix socket, proxy key), if any.
    pub bound_env: Option<&'a str>,
    /// An event naming another environment than `bound_env` refuses the whole request
    /// (the proxy: a browser key never sends as a backend) instead of only that event.
    pub strict_env: bool,
    /// Added to every event's `context` (the proxy: client ip, user agent).
    pub context: &'a [(&'a str, &'a str)],
}

/// Largest event (its JSON as sent) the collector keeps, by default.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Validates, stamps and encodes `items`. `now` (µs) becomes every event's
/// `received_at`.
pub fn ingest(catalog: &Catalog, items: &[Incoming<'_>], source: Source<'_>, collector: &str, now: i64) -> Ingested {
    ingest_limited(catalog, items, source, collector, now, DEFAULT_MAX_EVENT_BYTES)
}

/// [`ingest`] with a per-event size limit: larger events are rejected whatever their
/// environment (keeping them flagged would keep the oversized JSON anyway).
pub fn ingest_limited(
    catalog: &Catalog,
    items: &[Incoming<'_>],
    source: Source<'_>,
    collector: &str,
    now: i64,
    max_event_bytes: usize,
) -> Ingested {
    let mut out = Ingested {
        framed: Vec::with_capacity(items.iter().map(|i| i.raw.len() + 96).sum()),
        ..Default::default()
    };
    for (index, ev) in items.iter().enumerate() {
        if ev.raw.len() > max_event_bytes {
            out.summary.rejected += 1;
            out.summary.errors.push(EventError {
                index,
                error: format!("event is {} bytes, at most {max_event_bytes} allowed", ev.raw.len()),
            });
            out.tally.add("_unknown", "_unknown", Outcome::Rejected);
            continue;
        }
        let mut env = ev.env.as_deref().or(source.bound_env);
        let mut bound_mismatch = None;
        if let (Some(bound), Some(given)) = (source.bound_env, ev.env.as_deref()) {
            if bound != given && source.strict_env {
                out.forbidden = Some(format!(
                    "event {index}: env {given:?} is not allowed with this key, which sends as {bound:?}"
                ));
                out.framed.clear();
                out.records = 0;
                return out;
            }
            if bound != given {
                bound_mismatch = Some(format!(
                    "env: this listener only takes events of environment {bound:?}, not {given:?}"
                ));
                env = None;
            }
        }
        let mut checked: Checked<'_> = catalog.validate(ev, env);
        if let Some(msg) = bound_mismatch {
            checked.errors.retain(|e| !e.starts_with("env:"));
            checked.errors.insert(0, msg);
        }
        let env_label = checked.env.map_or("_unknown", |(n, _)| n);
        let event_label = match (checked.def, ev.event.as_deref()) {
            (Some(_), Some(name)) => name,
            _ => "_unknown",
        };
        if checked.is_dropped() {
            out.summary.dropped += 1;
            out.tally.add(env_label, event_label, Outcome::Dropped);
            continue;
        }
        if checked.is_rejected() {
            out.summary.rejected += 1;
            out.summary.errors.push(EventError {
                index,
                error: checked.errors.join("; "),
            });
            out.tally.add(env_label, event_label, Outcome::Rejected);
            continue;
        }
        let valid = checked.is_valid();
        let mut generated = [0u8; 36];
        let id = match ev.id.as_deref() {
            Some(id) => id,
            None => weir_proto::event::uuid_v7(now, &mut generated),
        };
        let stored = EventView {
            id,
            event: ev.event.as_deref().unwrap_or(""),
            version: checked.version,
            env: env.unwrap_or(""),
            received_at: now,
            client_ts: ev.ts,
            collector,
            fields: ev.fields_json(),
            valid,
            errors: checked.errors.iter().map(String::as_str).collect(),
            raw: if valid { &[] } else { ev.raw.as_bytes() },
            context: source.context.to_vec(),
        };
        record::encode_with(&mut out.framed, |buf| stored.encode(buf));
        out.records += 1;
        out.summary.accepted += 1;
        if valid {
            out.tally.add(env_label, event_label, Outcome::Accepted);
        } else {
            out.summary.flagged += 1;
            out.summary.errors.push(EventError {
                index,
                error: checked.errors.join("; "),
            });
            out.tally.add(env_label, event_label, Outcome::Flagged);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use weir_proto::pb;

    /// The hand-written answers are byte for byte what serde writes.
    #[tokio::test]
    async fn a_plain_summary_answers_as_serde_would() {
        use http_body_util::BodyExt;
        let error = EventError {
            index: 2,
            error: "x: missing".into(),
        };
        for (accepted, flagged, rejected, dropped, errors) in [
            (1, 0, 0, 0, vec![]),
            (0, 0, 0, 0, vec![]),
            (100, 0, 0, 0, vec![]),
            (3, 1, 0, 0, vec![]),
            (1, 0, 0, 2, vec![]),
            (0, 0, 1, 0, vec![error.clone()]),
            (5, 1, 0, 0, vec![error.clone()]),
        ] {
            let summary = Summary {
                accepted,
                flagged,
                rejected,
                dropped,
                errors,
            };
            let resp = summary.response();
            assert_eq!(resp.status(), summary.status());
            assert_eq!(resp.headers()["content-type"], "application/json");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let want = serde_json::to_vec(&summary).expect("serialize");
            assert_eq!(
                std::str::from_utf8(&body).expect("utf-8"),
                std::str::from_utf8(&want).expect("utf-8"),
                "{summary:?}"
            );
        }
    }

    fn run(body: &str, bound: Option<&str>) -> (Ingested, Vec<pb::Event>) {
        let catalog = Catalog::demo();
        let items = crate::body::split(body.as_bytes(), crate::body::Format::Json).unwrap();
        let got = ingest(
            &catalog,
            &items,
            Source {
                bound_env: bound,
                ..Default::default()
            },
            "node-a",
            1_795_352_645_000_000,
        );
        let events = record::iter(&got.framed)
            .map(|r| pb::Event::decode(r).unwrap())
            .collect();
        (got, events)
    }

    #[test]
    fn stamps_flags_and_rejects_by_env_kind() {
        let (got, events) = run(
            r#"[
            {"event":"page.viewed","env":"web","id":"given-id","ts":1700000000000000,"fields":{"url":"https://x/","session_id":"s"}},
            {"event":"page.viewed","env":"web","fields":{"session_id":"s"}},
            {"event":"user.registered","env":"backend","fields":{"user_id":"u"}},
            {"event":"page.viewed","env":"mars","fields":{}}
        ]"#,
            None,
        );
        assert_eq!(
            (got.summary.accepted, got.summary.flagged, got.summary.rejected),
            (2, 1, 2)
        );
        let idx: Vec<usize> = got.summary.errors.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![1, 2, 3]);
        assert_eq!(got.summary.errors[1].error, "method: missing required field");
        assert_eq!(events.len(), 2);
        let ok = &events[0];
        assert_eq!(
            (ok.id.as_str(), ok.version, ok.valid, ok.client_ts),
            ("given-id", 1, true, Some(1_700_000_000_000_000))
        );
        assert_eq!(ok.collector, "node-a");
        assert_eq!(ok.received_at, 1_795_352_645_000_000);
        assert!(ok.raw.is_empty());
        let bad = &events[1];
        assert!(!bad.valid);
        assert_eq!(bad.errors, vec!["url: missing required field"]);
        assert!(uuid::Uuid::parse_str(&bad.id).unwrap().get_version_num() == 7);
        assert_eq!(
            &bad.raw[..],
            br#"{"event":"page.viewed","env":"web","fields":{"session_id":"s"}}"#
        );
    }

    #[test]
    fn bound_env_fills_in_and_refuses_others() {
        let (got, events) = run(
            r#"[{"event":"search.performed","fields":{"query":"q"}},{"event":"search.performed","env":"web","fields":{"query":"q","session_id":"s"}}]"#,
            Some("backend"),
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].env, "backend");
        assert_eq!(got.summary.rejected, 1);
        assert!(got.summary.errors[0]
            .error
            .starts_with("env: this listener only takes events of environment \"backend\""));
    }
}
