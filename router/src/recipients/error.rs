//! Why a recipient's server could not be used this time. Every such error is retried
//! (it becomes [`super::Outcome::Retry`] with its text); the variants keep the cause
//! typed so callers and logs can tell a bad URL from a server that is away.

/// A failure to reach or use a recipient's server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configured URL cannot be used (shown redacted).
    #[error("bad {server} url {url:?}: {message}")]
    BadUrl {
        /// `MongoDB`, `RabbitMQ`.
        server: &'static str,
        /// The URL with its password replaced.
        url: String,
        /// What the driver said.
        message: String,
    },
    /// The server did not answer within the timeout.
    #[error("cannot connect to {server}: no answer in {seconds}s")]
    Timeout {
        /// `MongoDB`, `RabbitMQ`.
        server: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// RabbitMQ refused or dropped the connection.
    #[error("cannot connect to RabbitMQ: {0}")]
    Rabbit(#[from] lapin::Error),
    /// MongoDB answered with an error (or could not be reached).
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// A MongoDB operation failed: `cannot {doing}: {error}`.
    #[error("MongoDB: cannot {doing}: {error}")]
    MongoOp {
        /// What was being done (`drop buffer_2026120118_g0`).
        doing: String,
        /// What the server said.
        error: mongodb::error::Error,
    },
}

impl ServerError {
    /// Wraps a MongoDB error with what was being done.
    pub fn mongo(doing: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> ServerError {
        let doing = doing.into();
        move |error| ServerError::MongoOp { doing, error }
    }
}
