//! Rate limits: per write key and per client address (IPv6 on its /64), with bounded
//! limiter state; past them 429 with Retry-After.

use std::net::IpAddr;

use hyper::StatusCode;
use weir_proto::runtime::http::{self as h, Response};

use super::addr::limiter_key;
use super::Proxy;

pub(super) fn quota(rate: u32) -> Option<governor::Quota> {
    std::num::NonZeroU32::new(rate).map(governor::Quota::per_second)
}

/// Seconds until a refused request may be tried again (at least 1).
pub(super) fn retry_after(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    use governor::clock::Clock;
    let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Per-address limiter entries past which idle ones are dropped at once (at most once a
/// second), not only by the minutely housekeeping.
pub(super) const MAX_LIMITER_KEYS: usize = 100_000;

pub(super) fn too_many(what: &str, retry: u64) -> Response {
    h::retry_later(
        StatusCode::TOO_MANY_REQUESTS,
        format!("rate limit of this {what} reached; retry in {retry} s"),
        retry,
    )
}

/// The per-address limit: the 429 to answer when `client` is over it.
pub(super) fn limit_ip(proxy: &Proxy, client: IpAddr) -> Option<Response> {
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
