//! The console: a live page for the people who add events (`GET /`), the event stream it
//! shows (`GET /v1/tail`, [`tail`]), the per-minute counts (`GET /v1/stats`, [`stats`])
//! and the catalog as the page browses it (`GET /v1/console/catalog`).
//!
//! Intake calls [`Console::observe_batch`] (HTTP mode) once a batch is in the log; in
//! Kafka mode [`kafka::tap`] reads every partition of the topic without a group and calls
//! [`Console::observe_event`]. When `[router] token` is set, the data endpoints take the
//! bearer token or the cookie the page's form sets (`POST /v1/console/login`).

pub mod kafka;
pub mod stats;
pub mod tail;

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use weir_proto::runtime::http::{self as h, Response};
use weir_proto::Catalog;

/// The page, one self-contained file (no external scripts, styles or fonts).
const PAGE: &str = include_str!("page.html");
/// The cookie the login form sets.
const COOKIE: &str = "weir_console";

/// What the console knows and serves.
pub struct Console {
    /// The live event stream.
    pub tail: tail::Tail,
    /// The last hour's counts.
    pub stats: stats::Stats,
    catalog: Arc<ArcSwap<Catalog>>,
    recipients: Vec<(String, String)>,
    token: Option<String>,
}

impl Console {
    /// A console over `catalog`, listing `recipients` as (name, kind); the data endpoints
    /// require `token` when it is set.
    pub fn new(
        tail: tail::Tail,
        catalog: Arc<ArcSwap<Catalog>>,
        recipients: Vec<(String, String)>,
        token: Option<String>,
    ) -> Console {
        Console {
            tail,
            stats: stats::Stats::default(),
            catalog,
            recipients,
            token,
        }
    }

    /// A batch of `events` is in the log: count them (as `tally` took them while intake
    /// checked the batch) and show them to subscribers (`heads`: read by intake while
    /// [`tail::Tail::watched`]).
    pub fn observe_batch(&self, body: &Bytes, events: u64, tally: &stats::BatchCounts<'_>, heads: Vec<tail::Head>) {
        let catalog = self.catalog.load();
        self.stats.record_tally(&catalog, tally);
        let data = tail::Published {
            data: body.clone(),
            heads,
        };
        self.tail.publish(data, events);
    }

    /// One event read from the Kafka topic.
    pub fn observe_event(&self, event: Bytes) {
        let catalog = self.catalog.load();
        self.stats.record(&catalog, [event.as_ref()]);
        let data = if self.tail.watched() {
            tail::Published::event(event)
        } else {
            tail::Published {
                data: event,
                heads: Vec::new(),
            }
        };
        self.tail.publish(data, 1);
    }

    /// Answers the console's paths; `None` for any other.
    pub fn handle(&self, req: &Request<Incoming>) -> Option<Response> {
        let path = req.uri().path();
        let data = matches!(path, "/v1/tail" | "/v1/stats" | "/v1/console/catalog");
        if data && !self.authorized(req) {
            return Some(h::error(
                StatusCode::UNAUTHORIZED,
                "this router requires its token (router.token): send `Authorization: Bearer <token>`, or enter it on the console page",
            ));
        }
        Some(match (req.method(), path) {
            (&Method::GET, "/" | "/index.html") => page(),
            (&Method::GET, "/v1/tail") => self.tail_stream(req.uri().query().unwrap_or("")),
            (&Method::GET, "/v1/stats") => {
                let top = query_value(req.uri().query().unwrap_or(""), "top")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(20);
                h::json(StatusCode::OK, &self.stats.report(stats::minute_now(), top))
            }
            (&Method::GET, "/v1/console/catalog") => self.catalog_view(),
            (&Method::GET, "/v1/console/auth") => h::json(
                StatusCode::OK,
                &serde_json::json!({ "required": self.token.is_some(), "ok": self.authorized(req) }),
            ),
            _ => return None,
        })
    }

    /// `POST /v1/console/login` with the form field `token`: sets the cookie and goes back
    /// to the page, or answers 401.
    pub fn login(&self, form: &[u8]) -> Response {
        let given = form_urlencoded::parse(form)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !weir_proto::secret::bearer_matches(self.token.as_deref(), Some(&format!("Bearer {given}"))) {
            return h::error(
                StatusCode::UNAUTHORIZED,
                "wrong token: it is router.token of this router",
            );
        }
        let value: String = form_urlencoded::byte_serialize(given.as_bytes()).collect();
        let mut r = h::text(StatusCode::SEE_OTHER, "");
        r.headers_mut()
            .insert(hyper::header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict")) {
            r.headers_mut().insert(hyper::header::SET_COOKIE, v);
        }
        r
    }

    /// Whether `req` carries the token (bearer or cookie); always, when none is set.
    pub fn authorized<B>(&self, req: &Request<B>) -> bool {
        if crate::http::authorized(self.token.as_deref(), req) {
            return true;
        }
        let cookie = req
            .headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .map(|v| {
                form_urlencoded::parse(format!("t={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            });
        cookie.is_some_and(|c| weir_proto::secret::bearer_matches(self.token.as_deref(), Some(&format!("Bearer {c}"))))
    }

    fn tail_stream(&self, query: &str) -> Response {
        let filter = match tail::Filter::parse(query) {
            Ok(f) => f,
            Err(e) => return h::error(StatusCode::BAD_REQUEST, e),
        };
        match self.tail.subscribe(filter) {
            Ok(chunks) => h::stream("text/event-stream", chunks),
            Err(e) => h::retry_later(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), 5),
        }
    }

    fn catalog_view(&self) -> Response {
        #[derive(Serialize)]
        struct Recipient<'a> {
            name: &'a str,
            kind: &'a str,
        }
        let c = self.catalog.load();
        let recipients: Vec<Recipient<'_>> = self
            .recipients
            .iter()
            .map(|(name, kind)| Recipient { name, kind })
            .collect();
        h::json(
            StatusCode::OK,
            &serde_json::json!({
                "revision": c.revision,
                "environments": c.environments,
                "fields": c.fields,
                "events": c.events,
                "recipients": recipients,
            }),
        )
    }
}

fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn page() -> Response {
    let mut r = h::bytes(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    );
    // Nothing from elsewhere: the page works offline and cannot be made to load anything.
    r.headers_mut().insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    r
}
