//! SIGHUP, the usual way to tell a daemon to reload: the router re-reads its catalog, the
//! proxy its GeoIP database.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A SIGHUP listener. If the handler cannot be installed (or the stream ends), it never
/// fires: the periodic reloads still happen.
pub struct Hangup(Option<Signal>);

impl Hangup {
    /// Starts listening (call it inside a tokio runtime).
    pub fn new() -> Hangup {
        Hangup(signal(SignalKind::hangup()).ok())
    }

    /// The next SIGHUP.
    pub async fn recv(&mut self) {
        if let Some(h) = self.0.as_mut() {
            if h.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

impl Default for Hangup {
    fn default() -> Self {
        Hangup::new()
    }
}
