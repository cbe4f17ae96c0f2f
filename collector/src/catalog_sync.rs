//! The catalog as remote config: pulled from the routers (`GET /v1/catalog` with
//! `If-None-Match`), swapped in without restart, and saved, so a collector that starts
//! while no router answers runs on its last good copy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use weir_proto::Catalog;

use crate::metrics as m;

/// Where and how often to pull.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Router base URLs (or catalog URLs), tried in order.
    pub urls: Vec<String>,
    /// The last good copy.
    pub save_path: PathBuf,
    /// Poll period.
    pub every: Duration,
    /// Sent as `Authorization: Bearer <token>` (`collector.router_token`).
    pub token: Option<String>,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn catalog_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/catalog") {
        base.to_string()
    } else {
        format!("{base}/v1/catalog")
    }
}

enum Fetched {
    New(Box<Catalog>, Bytes),
    Unchanged,
}

async fn fetch(client: &HttpClient, base: &str, token: Option<&str>, current: &str) -> Result<Fetched, String> {
    let url = catalog_url(base);
    let mut req = Request::get(&url);
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !current.is_empty() {
        req = req.header(hyper::header::IF_NONE_MATCH, format!("\"{current}\""));
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad catalog URL {url:?}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::Unchanged);
    }
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .map_err(|_| format!("{url}: body timed out"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("{url}: {status}"));
    }
    let catalog = Catalog::from_json(&body).map_err(|e| format!("{url}: invalid catalog: {e}"))?;
    Ok(Fetched::New(Box::new(catalog), body))
}

fn save(path: &Path, body: &[u8]) {
    let tmp = path.with_extension("tmp");
    let res = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the catalog copy");
    }
}

fn publish(catalog: &Catalog, previous: &str) {
    if !previous.is_empty() {
        metrics::gauge!(m::CATALOG_INFO, "revision" => previous.to_string()).set(0.0);
    }
    metrics::gauge!(m::CATALOG_INFO, "revision" => catalog.revision.clone()).set(1.0);
}

/// The catalog to start with: the first router that answers, else the saved copy, else
/// none ([`Catalog::empty`]: the collector answers 503 until a router answers).
pub async fn initial(opts: &SyncOptions) -> (Catalog, String) {
    let client = client();
    for url in &opts.urls {
        match fetch(&client, url, opts.token.as_deref(), "").await {
            Ok(Fetched::New(c, body)) => {
                save(&opts.save_path, &body);
                publish(&c, "");
                return (*c, format!("pulled from {}", catalog_url(url)));
            }
            Ok(Fetched::Unchanged) => {}
            Err(e) => tracing::warn!(error = %e, "cannot pull the catalog"),
        }
    }
    match std::fs::read(&opts.save_path).map(|d| Catalog::from_json(&d)) {
        Ok(Ok(c)) => {
            tracing::warn!(path = %opts.save_path.display(), revision = %c.revision, "no router answered: starting from the saved catalog");
            publish(&c, "");
            (c, format!("saved copy {}", opts.save_path.display()))
        }
        _ => {
            tracing::error!(
                "no router answered and there is no saved catalog: refusing events (503) until a router answers"
            );
            (Catalog::empty(), "none yet".into())
        }
    }
}

/// Polls the routers every `opts.every` and swaps in a changed catalog. `checked_at`
/// gets the time (µs) of each successful check, for the catalog age metric.
pub async fn run(
    opts: SyncOptions,
    shared: Arc<ArcSwap<Catalog>>,
    checked_at: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    let client = client();
    let mut idx = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(opts.every) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
        if opts.urls.is_empty() {
            return;
        }
        let url = &opts.urls[idx % opts.urls.len()];
        let current = shared.load().revision.clone();
        match fetch(&client, url, opts.token.as_deref(), &current).await {
            Ok(Fetched::Unchanged) => checked_at.store(weir_proto::event::now_micros(), Ordering::Relaxed),
            Ok(Fetched::New(c, body)) => {
                checked_at.store(weir_proto::event::now_micros(), Ordering::Relaxed);
                if c.revision != current {
                    tracing::info!(revision = %c.revision, previous = %current, "catalog updated from the router");
                    save(&opts.save_path, &body);
                    publish(&c, &current);
                    shared.store(Arc::from(c));
                }
            }
            Err(e) => {
                idx += 1;
                tracing::warn!(error = %e, "catalog pull failed; keeping the current catalog");
            }
        }
    }
}
