//! The catalog on the router: served to collectors (`GET /v1/catalog`, with ETag) and
//! reloaded without restart when its directory changes or on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use weir_proto::Catalog;

/// Re-reads `dir` every `every` and swaps the catalog in when its revision changes. An
/// invalid edit is logged (once per distinct error) and the last good catalog stays.
pub async fn watch_dir(dir: PathBuf, shared: Arc<ArcSwap<Catalog>>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut last_error = String::new();
    // SIGHUP re-reads the catalog at once (the usual way to say "reload" to a daemon).
    let mut hup = weir_proto::signal::Hangup::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = hup.recv() => {
                tracing::info!(dir = %dir.display(), "SIGHUP: re-reading the catalog");
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
        let d = dir.clone();
        let loaded = match tokio::task::spawn_blocking(move || Catalog::load_dir(&d)).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        match loaded {
            Ok(c) => {
                last_error.clear();
                if c.revision != shared.load().revision {
                    tracing::info!(revision = %c.revision, events = c.events.len(), "catalog reloaded");
                    metrics::counter!(crate::metrics::CATALOG_RELOADS).increment(1);
                    shared.store(Arc::new(c));
                }
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(dir = %dir.display(), error = %text, "catalog edit is invalid; keeping the last good catalog");
                    last_error = text;
                }
            }
        }
    }
}
