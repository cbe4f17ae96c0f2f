//! A catalog directory watched by a running component (the router, which serves it to
//! collectors, and the loader): reloaded without restart when its files change or on
//! SIGHUP; an invalid edit keeps the last good catalog.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::Catalog;
use arc_swap::ArcSwap;
use tokio::sync::watch;

/// What a component checks of a catalog beyond the catalog itself (the router: that
/// every recipient it names is defined); `Err` lists what is wrong.
pub type Accept = Arc<dyn Fn(&Catalog) -> Result<(), String> + Send + Sync>;

/// Re-reads `dir` every `every` and swaps the catalog in when its revision changes,
/// counting each reload on `reloads` (the component's own counter). An invalid edit, or
/// one `accept` refuses, is logged (once per distinct error) and the last good catalog
/// stays.
pub async fn watch_dir(
    dir: PathBuf,
    shared: Arc<ArcSwap<Catalog>>,
    every: Duration,
    reloads: metrics::Counter,
    accept: Option<Accept>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_error = String::new();
    // SIGHUP re-reads the catalog at once (the usual way to say "reload" to a daemon).
    let mut hup = super::signal::Hangup::new();
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
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => continue,
        };
        let loaded = loaded.and_then(|c| match &accept {
            Some(check) if c.revision != shared.load().revision => check(&c).map(|()| c),
            _ => Ok(c),
        });
        match loaded {
            Ok(c) => {
                last_error.clear();
                if c.revision != shared.load().revision {
                    tracing::info!(revision = %c.revision, events = c.events.len(), "catalog reloaded");
                    reloads.increment(1);
                    shared.store(Arc::new(c));
                }
            }
            Err(text) => {
                if text != last_error {
                    tracing::error!(dir = %dir.display(), error = %text, "catalog edit is invalid; keeping the last good catalog");
                    last_error = text;
                }
            }
        }
    }
}
