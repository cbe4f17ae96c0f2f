//! The proxy: the collector's ingestion with a public face, for browsers and mobile apps.
//! Same `POST /v1/events`, same spool and forwarding, plus:
//!
//! - write keys (`[[proxy.keys]]`): HTTP Basic `key:` (the Segment way), `X-Weir-Key`,
//!   `?key=`, or `writeKey` in the body (for `navigator.sendBeacon`, which cannot set
//!   headers). Missing or unknown key -> 401. A key binds its environment: an event naming
//!   another one refuses the request with 403, so frontend data never gets backend trust;
//! - CORS for the configured origins (preflight answered, credentials off);
//! - a smaller body limit (413) and the collector's read timeouts against slow clients;
//! - the client's address in each event's `context` (`ip`; X-Forwarded-For is honoured
//!   only from `trusted_proxies`, and `truncate_ip` zeroes the host part), and its
//!   `user_agent`.
//!
//! - rate limits per key (`rate`) and per client address (`per_ip_rate`), requests per
//!   second with as large a burst: past them 429 with Retry-After, and one abusive client
//!   never slows the others (a refused request costs one check, no body read).
//!
//! - the user agent parsed (woothee) into `ua_browser`, `ua_browser_version`, `ua_os`
//!   and `ua_device` (pc, smartphone, mobilephone, crawler, appliance), cached per
//!   distinct agent string so a repeated agent costs one map lookup.
//!
//! - `GET /v1/p.gif`: a 1x1 GIF taking one event in query parameters, for pages without
//!   JavaScript and e-mails: `key`, `event`, `version`, `id`, `ts`, and `f.<field>` per
//!   field (typed by the catalog: `f.item_id=7` is the int 7), or `fields` as JSON.
//!
//! - the Segment tracking API (`/v1/track`, `/v1/batch`, ...; see [`crate::segment`]).
//!
//! - `country` and `region` from a MaxMind-format database when `geoip` names one
//!   (see [`crate::geoip`]), looked up once per request on the client's full address
//!   (before `truncate_ip`).

use crate::http::Refusal;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use weir_proto::runtime::http::{self as h, Response};

use crate::http::State;
use crate::ingest::Source;

/// One write key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or the environment variable holding it (keeps secrets out of config files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    /// The environment every event sent with this key belongs to.
    pub env: String,
    /// Requests per second this key may send (and as large a burst); none = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// The `[proxy]` section of the config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Public listen address (`weir up` uses 127.0.0.1:8088).
    pub listen: String,
    /// Write keys.
    pub keys: Vec<KeyConfig>,
    /// Origins allowed to send from a browser (`https://shop.example`); `*` allows any.
    pub cors_origins: Vec<String>,
    /// Peers whose X-Forwarded-For is believed (load balancers): addresses or CIDRs.
    pub trusted_proxies: Vec<String>,
    /// Zero the host part of client addresses (IPv4 /24, IPv6 /48) for privacy.
    pub truncate_ip: bool,
    /// Largest request body, also after decompression.
    pub max_body_bytes: usize,
    /// Most events in one request (413 beyond).
    pub max_events: usize,
    /// Connections served at once (slow clients cannot exhaust descriptors).
    pub max_connections: usize,
    /// Requests per second one client address may send (and as large a burst); 0 = no
    /// limit.
    pub per_ip_rate: u32,
    /// A MaxMind-format database (GeoIP2/GeoLite2 City or Country `.mmdb`) for the
    /// `country` and `region` context entries; none = no such entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<std::path::PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:8088".into(),
            keys: Vec::new(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            truncate_ip: false,
            max_body_bytes: 512 << 10,
            max_events: 5000,
            max_connections: weir_proto::runtime::http::DEFAULT_MAX_CONNECTIONS,
            per_ip_rate: 0,
            geoip: None,
        }
    }
}

/// `ip`, with an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, from a dual-stack socket)
/// turned back into IPv4.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1` or `192.168.1.7`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, bits })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Zeroes the host part: IPv4 to /24, IPv6 to /48.
pub fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
    }
}

/// One X-Forwarded-For hop: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last
/// X-Forwarded-For hop that is not itself trusted. `forwarded` holds every
/// X-Forwarded-For header line in order (a proxy may append its own line): they read as
/// one list. A hop that cannot be parsed ends the walk at the last good one.
pub fn client_ip<'a>(peer: IpAddr, forwarded: impl IntoIterator<Item = &'a str>, trusted: &[Cidr]) -> IpAddr {
    let trusted_ip = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !trusted_ip(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.into_iter().flat_map(|line| line.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        client = unmapped(ip);
        if !trusted_ip(client) {
            break;
        }
    }
    client
}

/// The per-address limiter's key: an IPv6 client is keyed on its /64 (one subscriber's
/// prefix), so rotating addresses inside it does not escape the limit.
pub fn limiter_key(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// A write key, resolved.
struct Key {
    value: String,
    env: Arc<str>,
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

fn quota(rate: u32) -> Option<governor::Quota> {
    std::num::NonZeroU32::new(rate).map(governor::Quota::per_second)
}

/// Seconds until a refused request may be tried again (at least 1).
fn retry_after(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    use governor::clock::Clock;
    let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The context entries parsed from one user agent.
type UaParts = Arc<Vec<(&'static str, String)>>;

/// Parsed user agents, by agent string (bounded: cleared past `UA_CACHE` entries).
struct UaCache {
    parser: woothee::parser::Parser,
    map: std::sync::Mutex<std::collections::HashMap<String, UaParts>>,
}

const UA_CACHE: usize = 10_000;

impl UaCache {
    fn parse(&self, agent: &str) -> UaParts {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = map.get(agent) {
            return hit.clone();
        }
        let mut parts = Vec::new();
        if let Some(r) = self.parser.parse(agent) {
            let known = |s: &str| !s.is_empty() && s != "UNKNOWN";
            if known(r.name) {
                parts.push(("ua_browser", r.name.to_string()));
            }
            if known(r.version) {
                parts.push(("ua_browser_version", r.version.to_string()));
            }
            if known(r.os) {
                parts.push(("ua_os", r.os.to_string()));
            }
            if known(r.category) {
                parts.push(("ua_device", r.category.to_string()));
            }
        }
        let parts = Arc::new(parts);
        if map.len() >= UA_CACHE {
            map.clear();
        }
        map.insert(agent.to_string(), parts.clone());
        parts
    }
}

/// The proxy's settings, resolved (key values read from the environment).
pub struct Proxy {
    ua: UaCache,
    keys: Vec<Key>,
    per_ip: Option<governor::DefaultKeyedRateLimiter<IpAddr>>,
    origins: Vec<String>,
    trusted: Vec<Cidr>,
    truncate_ip: bool,
    limits: crate::http::Limits,
    geoip: Option<crate::geoip::GeoIp>,
    /// When per-address limiter state was last trimmed (ms since the proxy started).
    trimmed_at: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

/// Longest stored context value (a user agent, a Segment user id): longer ones are cut
/// at a character boundary, so one request cannot multiply a huge header into every
/// event it carries.
pub const MAX_CONTEXT_VALUE_BYTES: usize = 1024;

/// Per-address limiter entries past which idle ones are dropped at once (at most once a
/// second), not only by the minutely housekeeping.
const MAX_LIMITER_KEYS: usize = 100_000;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Proxy {
    /// Resolves `cfg`; the error names the key.
    pub fn new(cfg: &ProxyConfig) -> Result<Proxy, String> {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            let value = match (&k.key, &k.key_env) {
                (Some(v), None) => v.clone(),
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| format!("proxy.keys[{i}].key_env: environment variable {var} is not set"))?,
                _ => return Err(format!("proxy.keys[{i}]: set exactly one of key and key_env")),
            };
            if value.is_empty() {
                return Err(format!("proxy.keys[{i}]: the key is empty"));
            }
            keys.push(Key {
                value,
                env: Arc::from(k.env.as_str()),
                limiter: k.rate.and_then(quota).map(governor::RateLimiter::direct),
            });
        }
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|s| Cidr::parse(s).map_err(|e| format!("proxy.trusted_proxies: {e}")))
            .collect::<Result<_, _>>()?;
        let geoip = match &cfg.geoip {
            Some(path) => Some(crate::geoip::GeoIp::open(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let proxy = Proxy {
            ua: UaCache {
                parser: woothee::parser::Parser::new(),
                map: Default::default(),
            },
            keys,
            per_ip: quota(cfg.per_ip_rate).map(governor::RateLimiter::keyed),
            origins: cfg.cors_origins.clone(),
            trusted,
            truncate_ip: cfg.truncate_ip,
            limits: crate::http::Limits {
                body_bytes: cfg.max_body_bytes,
                events: cfg.max_events.max(1),
            },
            geoip,
            trimmed_at: Default::default(),
            started: std::time::Instant::now(),
        };
        proxy.geoip_gauge();
        Ok(proxy)
    }

    /// Loads the GeoIP database again if its file changed (blocking: reads the file).
    pub fn reload_geoip(&self) {
        if let Some(g) = &self.geoip {
            if g.reload_if_changed() {
                self.geoip_gauge();
            }
        }
    }

    fn geoip_gauge(&self) {
        if let Some(g) = &self.geoip {
            metrics::gauge!(crate::metrics::PROXY_GEOIP_BUILT).set(g.build_epoch() as f64);
        }
    }

    fn key(&self, key: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.value == key)
    }

    /// Forgets per-address limiter state of addresses not seen lately (bounded memory).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn allowed_origin(&self, origin: Option<&str>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        self.origins
            .iter()
            .any(|o| o == origin)
            .then(|| HeaderValue::from_str(origin).ok())
            .flatten()
    }
}

fn basic_key(value: &str) -> Option<String> {
    use base64_lite::decode;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let text = String::from_utf8(decode(encoded.trim())?).ok()?;
    let key = text.split(':').next()?;
    (!key.is_empty()).then(|| key.to_string())
}

/// A tiny standard base64 decoder for the Basic auth header.
mod base64_lite {
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= val(c)? << (18 - 6 * i);
            }
            out.push((n >> 16) as u8);
            if chunk.len() > 2 {
                out.push((n >> 8) as u8);
            }
            if chunk.len() > 3 {
                out.push(n as u8);
            }
        }
        Some(out)
    }
}

/// `writeKey` of a JSON body: of the object, or of the first element of an array.
fn body_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithKey {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    let text = std::str::from_utf8(body).ok()?.trim_start();
    if text.starts_with('[') {
        let v: Vec<WithKey> = serde_json::from_str(text).ok()?;
        v.into_iter().next()?.write_key
    } else {
        let first = text.lines().next()?;
        serde_json::from_str::<WithKey>(first).ok()?.write_key
    }
}

fn query_key(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("key="))
        .map(|k| k.to_string())
}

/// Segment's `(userId, anonymousId)` of a call.
type Who = (Option<String>, Option<String>);

/// `track`, `page`, ... or `batch` for the Segment paths.
fn segment_kind(path: &str) -> Option<&'static str> {
    let kind = path.strip_prefix("/v1/")?;
    crate::segment::TYPES
        .iter()
        .chain(&["batch"])
        .find(|t| **t == kind)
        .copied()
}

fn too_many(what: &str, retry: u64) -> Response {
    h::retry_later(
        StatusCode::TOO_MANY_REQUESTS,
        format!("rate limit of this {what} reached; retry in {retry} s"),
        retry,
    )
}

fn with_cors(mut r: Response, origin: Option<&HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert("access-control-allow-origin", o.clone());
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    r
}

/// Routes one request to the proxy.
pub async fn handle(state: Arc<State>, proxy: Arc<Proxy>, req: Request<Incoming>) -> Response {
    let peer = req
        .extensions()
        .get::<h::Peer>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0);
    let origin = proxy.allowed_origin(req.headers().get("origin").and_then(|v| v.to_str().ok()));
    match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, "/v1/events") => {
            let mut r = h::bytes(StatusCode::NO_CONTENT, "text/plain", bytes::Bytes::new());
            if let Some(o) = &origin {
                let hs = r.headers_mut();
                hs.insert("access-control-allow-origin", o.clone());
                hs.insert(
                    "access-control-allow-methods",
                    HeaderValue::from_static("POST, OPTIONS"),
                );
                hs.insert(
                    "access-control-allow-headers",
                    HeaderValue::from_static("content-type, content-encoding, authorization, x-weir-key"),
                );
                hs.insert("access-control-max-age", HeaderValue::from_static("86400"));
                hs.insert("vary", HeaderValue::from_static("Origin"));
            }
            r
        }
        (&Method::POST, "/v1/events") => with_cors(events(&state, &proxy, peer, req).await, origin.as_ref()),
        (&Method::POST, path) if segment_kind(path).is_some() => {
            let kind = segment_kind(path).unwrap_or("track");
            with_cors(segment_call(&state, &proxy, peer, kind, req).await, origin.as_ref())
        }
        (&Method::GET, "/v1/p.gif") => with_cors(pixel(&state, &proxy, peer, req).await, origin.as_ref()),
        (&Method::GET, "/healthz") => h::text(StatusCode::OK, "ok\n"),
        _ => h::error(
            StatusCode::NOT_FOUND,
            "no such endpoint: the proxy serves POST /v1/events, GET /v1/p.gif, the Segment API (POST /v1/track, /v1/page, /v1/screen, /v1/identify, /v1/group, /v1/alias, /v1/batch) and GET /healthz",
        ),
    }
}

/// A transparent 1x1 GIF.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The per-address limit: the 429 to answer when `client` is over it.
fn limit_ip(proxy: &Proxy, client: IpAddr) -> Option<Response> {
    let limiter = proxy.per_ip.as_ref()?;
    if limiter.len() > MAX_LIMITER_KEYS {
        // Bounded memory under a flood of addresses: drop idle entries now.
        let now = proxy.started.elapsed().as_millis() as u64;
        let last = proxy.trimmed_at.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && proxy
                .trimmed_at
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            limiter.retain_recent();
        }
    }
    let n = limiter.check_key(&limiter_key(client)).err()?;
    metrics::counter!(crate::metrics::PROXY_LIMITED, "by" => "ip").increment(1);
    Some(too_many("client address", retry_after(&n)))
}

/// The key given in the request head: HTTP Basic, `X-Weir-Key`, or `?key=`.
fn head_key(parts: &hyper::http::request::Parts) -> Option<String> {
    parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_key)
        .or_else(|| {
            parts
                .headers
                .get("x-weir-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| query_key(parts.uri.query()))
}

/// Checks the key, charges its limit once, and spools the body with the binding and
/// the context; answers 202 with the summary.
#[allow(clippy::too_many_arguments)]
async fn authorized(
    state: &State,
    proxy: &Proxy,
    client: IpAddr,
    key: Option<String>,
    user_agent: Option<&str>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
) -> Response {
    let head = Head {
        client,
        user_agent,
        extra: &[],
    };
    let result = async {
        let key = charge(proxy, key.as_deref()).map_err(|r| *r)?;
        let ingested = prepare(state, proxy, key, &head, content_type, content_encoding, raw).map_err(|r| *r)?;
        crate::http::spool(state, ingested).await
    };
    match result.await {
        Ok(summary) => h::json(StatusCode::ACCEPTED, &summary),
        Err(r) => r,
    }
}

/// Who sent a request.
struct Head<'a> {
    client: IpAddr,
    user_agent: Option<&'a str>,
    /// More context entries (Segment's user ids).
    extra: &'a [(&'a str, &'a str)],
}

/// Resolves the write key and charges its rate limit: once per request, whatever the
/// request holds.
fn charge<'p>(proxy: &'p Proxy, key: Option<&str>) -> Result<&'p Key, Refusal> {
    let Some(key) = key else {
        return Err(Box::new(h::error(
            StatusCode::UNAUTHORIZED,
            "a write key is required: HTTP Basic (key as user), X-Weir-Key, ?key= or writeKey in the body",
        )));
    };
    let Some(key) = proxy.key(key) else {
        return Err(Box::new(h::error(StatusCode::UNAUTHORIZED, "unknown write key")));
    };
    if let Some(limiter) = &key.limiter {
        if let Err(n) = limiter.check() {
            metrics::counter!(crate::metrics::PROXY_LIMITED, "by" => "key").increment(1);
            return Err(Box::new(too_many("write key", retry_after(&n))));
        }
    }
    Ok(key)
}

/// Validates a body under the key's binding, with the request's context (every value
/// capped at [`MAX_CONTEXT_VALUE_BYTES`]), into spool records not yet stored.
fn prepare(
    state: &State,
    proxy: &Proxy,
    key: &Key,
    head: &Head<'_>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    raw: bytes::Bytes,
) -> Result<crate::ingest::Ingested, Refusal> {
    let ip = if proxy.truncate_ip {
        truncate(head.client)
    } else {
        head.client
    }
    .to_string();
    let ua = cap(head.user_agent.unwrap_or(""), MAX_CONTEXT_VALUE_BYTES);
    let mut context: Vec<(&str, &str)> = vec![("ip", ip.as_str())];
    let geo = proxy.geoip.as_ref().map(|g| g.lookup(head.client)).unwrap_or_default();
    if let Some(c) = &geo.country {
        context.push(("country", c));
    }
    if let Some(r) = &geo.region {
        context.push(("region", r));
    }
    let parsed = (!ua.is_empty()).then(|| proxy.ua.parse(ua));
    if !ua.is_empty() {
        context.push(("user_agent", ua));
    }
    for (k, v) in parsed.iter().flat_map(|p| p.iter()) {
        context.push((k, v.as_str()));
    }
    context.extend(head.extra.iter().map(|(k, v)| (*k, cap(v, MAX_CONTEXT_VALUE_BYTES))));
    let source = Source {
        bound_env: Some(&key.env),
        strict_env: true,
        context: &context,
    };
    crate::http::prepare(state, content_type, content_encoding, raw, source, proxy.limits)
}

/// The Segment API: each message becomes a weir event (see [`crate::segment`]); the
/// answer is Segment's `200 {"success": true}`, or 400 naming what was refused.
async fn segment_call(state: &State, proxy: &Proxy, peer: SocketAddr, kind: &str, req: Request<Incoming>) -> Response {
    let client = client_of(proxy, peer, req.headers());
    if let Some(r) = limit_ip(proxy, client) {
        return r;
    }
    // The proxy's own body limit, also after decompression (Segment's SDKs keep a batch
    // under 500 KB, the default 512 KiB admits it).
    let limit = proxy.limits.body_bytes;
    let _budget = match crate::http::reserve(state, &req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (parts, raw) = match crate::http::read(req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let body = match crate::body::decode(header(hyper::header::CONTENT_ENCODING), raw, limit) {
        Ok(b) => b,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let request = match crate::segment::parse(kind, &body, &state.catalog.load()) {
        Ok(r) => r,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e),
    };
    if request.calls.len() > proxy.limits.events {
        return h::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} calls in one batch; at most {}",
                request.calls.len(),
                proxy.limits.events
            ),
        );
    }
    let key = head_key(&parts).or(request.write_key);
    // The request is one unit: its key is charged once, and every call is spooled in one
    // append or none is.
    let key = match charge(proxy, key.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    // Calls of one user share a context (the ids go into `context`).
    let mut groups: Vec<(Who, Vec<&str>)> = Vec::new();
    for call in &request.calls {
        let who = (call.user_id.clone(), call.anonymous_id.clone());
        match groups.iter_mut().find(|g| g.0 == who) {
            Some(g) => g.1.push(&call.event),
            None => groups.push((who, vec![&call.event])),
        }
    }
    let mut all = crate::ingest::Ingested::default();
    for ((user, anon), events) in &groups {
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(u) = user {
            extra.push(("user_id", u));
        }
        if let Some(a) = anon {
            extra.push(("anonymous_id", a));
        }
        let head = Head {
            client,
            user_agent: header(hyper::header::USER_AGENT),
            extra: &extra,
        };
        let ndjson = bytes::Bytes::from(events.join("\n"));
        match prepare(state, proxy, key, &head, Some("application/x-ndjson"), None, ndjson) {
            Ok(part) => all.merge(part),
            Err(r) => return *r,
        }
    }
    let summary = match crate::http::spool(state, all).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let errors: Vec<String> = if summary.rejected == 0 {
        Vec::new()
    } else {
        summary.errors.into_iter().map(|e| e.error).collect()
    };
    if errors.is_empty() {
        h::json(StatusCode::OK, &serde_json::json!({"success": true}))
    } else {
        h::json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"success": false, "errors": errors}),
        )
    }
}

fn client_of(proxy: &Proxy, peer: SocketAddr, headers: &hyper::HeaderMap) -> IpAddr {
    let lines = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    client_ip(peer.ip(), lines, &proxy.trusted)
}

async fn events(state: &State, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> Response {
    let client = client_of(proxy, peer, req.headers());
    if let Some(r) = limit_ip(proxy, client) {
        return r;
    }
    let _budget = match crate::http::reserve(state, &req, proxy.limits.body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (parts, raw) = match crate::http::read(req, proxy.limits.body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let encoded = header(hyper::header::CONTENT_ENCODING).is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
    let key = head_key(&parts).or_else(|| if encoded { None } else { body_key(&raw) });
    authorized(
        state,
        proxy,
        client,
        key,
        header(hyper::header::USER_AGENT),
        header(hyper::header::CONTENT_TYPE),
        header(hyper::header::CONTENT_ENCODING),
        raw,
    )
    .await
}

/// Builds the JSON event a pixel's query describes; field values are typed by the
/// catalog (numbers and booleans for int, float and bool fields).
pub fn pixel_event(query: &str, catalog: &weir_proto::Catalog) -> Result<String, String> {
    use weir_proto::catalog::{FieldType, Scalar};
    let mut ev = serde_json::Map::new();
    let mut fields = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "key" => {}
            "event" | "env" | "id" => {
                ev.insert(k.into_owned(), v.into_owned().into());
            }
            "version" | "ts" => {
                let value = serde_json::from_str::<serde_json::Value>(&v)
                    .ok()
                    .filter(|x| x.is_number())
                    .unwrap_or_else(|| v.clone().into_owned().into());
                ev.insert(k.into_owned(), value);
            }
            "fields" => match serde_json::from_str::<serde_json::Value>(&v) {
                Ok(serde_json::Value::Object(m)) => fields.extend(m),
                _ => return Err("fields: must be a JSON object".into()),
            },
            name => {
                let Some(field) = name.strip_prefix("f.") else {
                    return Err(format!(
                        "{name}: unknown parameter (use event, version, env, id, ts, f.<field> or fields)"
                    ));
                };
                let typed = match catalog.fields.get(field).map(|d| d.ty) {
                    Some(FieldType::Scalar(Scalar::Int | Scalar::Float | Scalar::Bool)) | Some(FieldType::Array(_)) => {
                        serde_json::from_str::<serde_json::Value>(&v).unwrap_or_else(|_| v.clone().into_owned().into())
                    }
                    _ => v.clone().into_owned().into(),
                };
                fields.insert(field.to_string(), typed);
            }
        }
    }
    ev.insert("fields".into(), fields.into());
    serde_json::to_string(&ev).map_err(|e| e.to_string())
}

async fn pixel(state: &State, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> Response {
    let client = client_of(proxy, peer, req.headers());
    if let Some(r) = limit_ip(proxy, client) {
        return r;
    }
    let (parts, _) = req.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let body = match pixel_event(query, &state.catalog.load()) {
        Ok(b) => b,
        Err(e) => return h::error(StatusCode::BAD_REQUEST, e),
    };
    let ua = parts
        .headers
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let r = authorized(
        state,
        proxy,
        client,
        head_key(&parts),
        ua,
        Some("application/json"),
        None,
        bytes::Bytes::from(body),
    )
    .await;
    if r.status() != StatusCode::ACCEPTED {
        return r;
    }
    let mut gif = h::bytes(StatusCode::OK, "image/gif", bytes::Bytes::from_static(GIF));
    gif.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    gif
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_forwarded_for() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("::1").unwrap()];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let outside: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(peer, Some("198.51.100.7, 10.9.9.9"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A trusted proxy appends its own header line: every line counts, the last
        // untrusted hop is the client, not the first line a client may forge.
        assert_eq!(
            client_ip(peer, ["6.6.6.6", "198.51.100.7, 10.9.9.9"], &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Hops with ports, and bracketed IPv6.
        assert_eq!(
            client_ip(peer, Some("198.51.100.7:5123, 10.9.9.9:443"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("[2001:db8::7]:5123"), &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(parse_hop("[2001:db8::7]"), "2001:db8::7".parse().ok());
        assert_eq!(
            limiter_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(cap("ééé", 3), "é");
        assert_eq!(
            client_ip(peer, Some("198.51.100.7, 10.9.9.9"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(outside, Some("198.51.100.7"), &trusted),
            outside,
            "untrusted peer: XFF ignored"
        );
        assert_eq!(client_ip(peer, Some("garbage"), &trusted), peer);
        assert_eq!(client_ip(peer, None, &trusted), peer);
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert_eq!(
            truncate("198.51.100.7".parse().unwrap()),
            "198.51.100.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            truncate("2001:db8:1:2::5".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn user_agents_are_parsed_once() {
        let cache = UaCache {
            parser: woothee::parser::Parser::new(),
            map: Default::default(),
        };
        let chrome =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let a = cache.parse(chrome);
        assert!(a.contains(&("ua_browser", "Chrome".to_string())), "{a:?}");
        assert!(a.contains(&("ua_os", "Linux".to_string())), "{a:?}");
        assert!(a.contains(&("ua_device", "pc".to_string())), "{a:?}");
        assert!(
            Arc::ptr_eq(&a, &cache.parse(chrome)),
            "the second lookup is the cached value"
        );
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
        assert!(cache.parse(iphone).contains(&("ua_device", "smartphone".to_string())));
    }

    #[test]
    fn pixel_query_becomes_a_typed_event() {
        let c = weir_proto::Catalog::demo();
        let ev = pixel_event("key=k&event=item.viewed&version=2&id=p1&f.item_id=7&f.source=search&f.price=9.5&f.is_promoted=true&f.session_id=007", &c).unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
        assert_eq!(v["event"], "item.viewed");
        assert_eq!(v["version"], 2);
        assert_eq!(v["fields"]["item_id"], 7);
        assert_eq!(v["fields"]["price"], 9.5);
        assert_eq!(v["fields"]["is_promoted"], true);
        assert_eq!(v["fields"]["session_id"], "007", "string fields stay strings");
        assert!(v.get("key").is_none());
        let j = pixel_event("event=page.viewed&fields=%7B%22url%22%3A%22u%22%7D", &c).unwrap();
        assert!(j.contains(r#""url":"u""#), "{j}");
        assert!(pixel_event("bogus=1", &c).unwrap_err().contains("bogus"));
        assert!(pixel_event("fields=nope", &c).is_err());
    }

    #[test]
    fn keys_from_basic_body_and_query() {
        // "wk_web:" in base64.
        assert_eq!(basic_key("Basic d2tfd2ViOg==").as_deref(), Some("wk_web"));
        assert_eq!(basic_key("Bearer x"), None);
        assert_eq!(body_key(br#"{"writeKey":"k1","event":"a"}"#).as_deref(), Some("k1"));
        assert_eq!(body_key(br#"[{"writeKey":"k2"},{"event":"b"}]"#).as_deref(), Some("k2"));
        assert_eq!(body_key(b"not json"), None);
        assert_eq!(query_key(Some("a=1&key=k3")).as_deref(), Some("k3"));
    }
}
