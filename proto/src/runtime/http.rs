//! HTTP plumbing shared by every component: the accept loop with graceful shutdown,
//! bounded body reads and JSON answers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Body type of every response: whole (almost all), or streamed ([`stream`]).
pub type Body = http_body_util::Either<Full<Bytes>, Streamed>;
/// A response.
pub type Response = hyper::Response<Body>;

/// A whole body.
pub fn full(body: impl Into<Bytes>) -> Body {
    http_body_util::Either::Left(Full::new(body.into()))
}

/// A body sent as its chunks arrive on a channel; it ends when the sender is dropped.
pub struct Streamed(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A 200 whose body streams from `chunks` (Server-Sent Events, with
/// `content_type = "text/event-stream"`), never cached.
pub fn stream(content_type: &'static str, chunks: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let mut r = hyper::Response::new(http_body_util::Either::Right(Streamed(chunks)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A response with a JSON body.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = hyper::Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": message}` with a status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    json(status, &E { error: message.into() })
}

/// A response with a body of the given content type.
pub fn bytes(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut r = hyper::Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `{"error": message}` with `status` (503 or 429) and `Retry-After: secs`: a refusal
/// the client should retry.
pub fn retry_later(status: StatusCode, message: impl Into<String>, secs: u64) -> Response {
    let mut r = error(status, message);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// The `/readyz` probe: 200 `ready<detail>` when a file can be written (and removed) in
/// each directory, else 503 naming the first that cannot (`what` says which it is).
pub fn readyz(dirs: &[(&str, &std::path::Path)], detail: &str) -> Response {
    for (what, dir) in dirs {
        let probe = dir.join(".readyz");
        if let Err(e) = std::fs::write(&probe, b"ok") {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {what} {} is not writable: {e}\n", dir.display()),
            );
        }
        let _ = std::fs::remove_file(&probe);
    }
    text(StatusCode::OK, format!("ready{detail}\n"))
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Over the limit.
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    /// The client did not send the whole body in time.
    #[error("the body did not arrive within {0} s")]
    Timeout(u64),
    /// The connection failed mid-body.
    #[error("cannot read the body: {0}")]
    Io(String),
}

/// How long a client may take to send a body.
pub const BODY_TIMEOUT_SECS: u64 = 60;

/// Reads a whole body, refusing more than `limit` bytes.
///
/// A body somewhat over the limit is read to its end and thrown away, so that the client
/// can finish sending and read the 413 (instead of a reset connection); one declared far
/// larger (over 4× the limit, at least 1 MiB) is refused at once.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(hyper::http::request::Parts, Bytes), ReadError> {
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drain_cap = (limit as u64).saturating_mul(4).max(1 << 20);
    if declared.is_some_and(|n| n > drain_cap) {
        return Err(ReadError::TooLarge(limit));
    }
    let read = async {
        // A body that came in one frame (most: it arrived with the head) is kept as that
        // frame, without a copy; a second frame starts the buffer.
        let mut first: Option<Bytes> = None;
        let mut buf = bytes::BytesMut::new();
        let mut seen = 0u64;
        let mut too_large = declared.is_some_and(|n| n > limit as u64);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Io(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            seen += data.len() as u64;
            if too_large || seen > limit as u64 {
                too_large = true;
                (first, buf) = (None, bytes::BytesMut::new());
                if seen > drain_cap {
                    break;
                }
                continue;
            }
            if seen == data.len() as u64 {
                first = Some(data);
                continue;
            }
            if let Some(head) = first.take() {
                buf.reserve(declared.unwrap_or(0).min(limit as u64) as usize);
                buf.extend_from_slice(&head);
            }
            buf.extend_from_slice(&data);
        }
        match (too_large, first) {
            (true, _) => Err(ReadError::TooLarge(limit)),
            (false, Some(whole)) => Ok(whole),
            (false, None) => Ok(buf.freeze()),
        }
    };
    match tokio::time::timeout(Duration::from_secs(BODY_TIMEOUT_SECS), read).await {
        Ok(Ok(b)) => Ok((parts, b)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReadError::Timeout(BODY_TIMEOUT_SECS)),
    }
}

/// A listen address that could not be bound, naming the config key that sets it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {error} ({})", bind_hint(&self.error, self.key))]
pub struct BindError {
    /// The address.
    pub addr: String,
    /// The config key that names it (`router.listen`).
    pub key: &'static str,
    /// Why.
    pub error: std::io::Error,
}

fn bind_hint(error: &std::io::Error, key: &str) -> String {
    use std::io::ErrorKind as K;
    match error.kind() {
        K::AddrInUse => format!("is another weir already running? set {key} to another port"),
        K::PermissionDenied => format!("ports below 1024 need privileges; set {key} to a higher port"),
        K::AddrNotAvailable => format!("no interface of this machine has that address; set {key}"),
        _ => format!("{key} must be host:port, like 127.0.0.1:8080"),
    }
}

/// Whether `addr` is a listen address (`host:port` that resolves), for config checks.
pub fn check_listen(addr: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "{addr:?} resolves to no address; use host:port, like 127.0.0.1:8080"
        )),
        Err(e) => Err(format!(
            "{addr:?} is not a listen address ({e}); use host:port, like 127.0.0.1:8080"
        )),
    }
}

/// Binds a TCP listener on `addr` (set by the config key `key`) and tells the address
/// it got (for `127.0.0.1:0`).
pub async fn bind(addr: &str, key: &'static str) -> Result<(TcpListener, std::net::SocketAddr), BindError> {
    let err = |error| BindError {
        addr: addr.to_string(),
        key,
        error,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Something connections are accepted from: a TCP or a unix stream listener.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
    /// Accepts one connection, with the peer's address when it has one (TCP).
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Option<std::net::SocketAddr>)>> + Send;
}

/// The peer of a TCP connection, put in every request's extensions by [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

impl Listener for TcpListener {
    type Io = TokioIo<tokio::net::TcpStream>;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<std::net::SocketAddr>)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((TokioIo::new(stream), Some(peer)))
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = TokioIo<tokio::net::UnixStream>;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<std::net::SocketAddr>)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((TokioIo::new(stream), None))
    }
}

/// Binds a unix stream socket at `path` with mode 0660. A stale socket file left by a
/// crash is replaced; one another process still listens on is refused.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    replace_stale_socket(path)?;
    let listener = tokio::net::UnixListener::bind(path)?;
    set_socket_mode(path)?;
    Ok(listener)
}

/// Removes a socket file nobody listens on; refuses one that is in use.
pub fn replace_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let in_use = std::os::unix::net::UnixStream::connect(path).is_ok()
                || std::os::unix::net::UnixDatagram::unbound()
                    .and_then(|s| s.connect(path))
                    .is_ok();
            if in_use {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; remove it or choose another path",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Gives a socket file mode 0660 (owner and group may send).
pub fn set_socket_mode(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
}

/// Serves HTTP/1.1 (keep-alive) on `listener` with `handler` until `shutdown` turns
/// true; then stops accepting, lets requests in flight finish (up to 30 s), and returns.
/// With the default [`ServeOptions`].
pub async fn serve<L, F, Fut>(listener: L, handler: F, shutdown: watch::Receiver<bool>)
where
    L: Listener,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    serve_with(listener, handler, shutdown, ServeOptions::default()).await
}

/// How a listener serves connections.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Connections served at once; past it the listener stops accepting (the kernel's
    /// backlog holds the rest), so slow clients cannot exhaust file descriptors.
    pub max_connections: usize,
}

/// Connections a listener serves at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Header bytes one request may send; larger heads get 431.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// Seconds a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown`, then lets requests in flight finish
/// (up to 30 s). At most `opts.max_connections` at once; headers must arrive within
/// [`HEADER_TIMEOUT`] and fit in [`MAX_HEADER_BYTES`].
pub async fn serve_with<L, F, Fut>(listener: L, handler: F, mut shutdown: watch::Receiver<bool>, opts: ServeOptions)
where
    L: Listener,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    loop {
        // Wait for a free slot before accepting: at the cap, connections queue in the
        // kernel instead of taking descriptors here.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (io, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let handler = handler.clone();
                    if let Some(p) = peer {
                        req.extensions_mut().insert(Peer(p));
                    }
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_header_size(MAX_HEADER_BYTES)
                    .serve_connection(io, service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish within 30 s of shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `head` and then each piece of `pieces` (a pause between them) to a server
    /// whose handler answers with the body [`read_body`] read (limit 64 bytes), or the
    /// error; returns the whole answer.
    async fn send_in_pieces(head: &str, pieces: &[&[u8]]) -> String {
        let (listener, addr) = bind("127.0.0.1:0", "test.listen").await.unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            |req| async move {
                match read_body(req, 64).await {
                    Ok((_, body)) => bytes(StatusCode::OK, "application/octet-stream", body),
                    Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
                }
            },
            shutdown,
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        for piece in pieces {
            tokio::time::sleep(Duration::from_millis(30)).await;
            conn.write_all(piece).await.unwrap();
        }
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        let _ = stop.send(true);
        let _ = server.await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A body is read whole and exact whether it comes with the head (one frame, kept
    /// without a copy), in several frames, or chunked; a body over the limit is refused
    /// however it is cut.
    #[tokio::test]
    async fn bodies_are_read_exactly_however_they_arrive() {
        let head =
            |len: usize| format!("POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n");
        let with_head = send_in_pieces(&format!("{}{}", head(11), "hello world"), &[]).await;
        assert!(with_head.ends_with("\r\n\r\nhello world"), "{with_head}");
        let pieces = send_in_pieces(&head(11), &[b"hel", b"lo w", b"orld"]).await;
        assert!(pieces.ends_with("\r\n\r\nhello world"), "{pieces}");
        let first_with_head = send_in_pieces(&format!("{}{}", head(11), "hel"), &[b"lo world"]).await;
        assert!(first_with_head.ends_with("\r\n\r\nhello world"), "{first_with_head}");
        let chunked = send_in_pieces(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"],
        )
        .await;
        assert!(chunked.ends_with("\r\n\r\nhello world"), "{chunked}");
        let over = [b'x'; 40];
        let too_large = send_in_pieces(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b"28\r\n", &over, b"\r\n28\r\n", &over, b"\r\n0\r\n\r\n"],
        )
        .await;
        assert!(
            too_large.starts_with("HTTP/1.1 400") && too_large.contains("body is larger than 64 bytes"),
            "{too_large}"
        );
    }
}
