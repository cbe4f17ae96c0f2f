//! The client's address: IPv4-mapped addresses, CIDR blocks of trusted proxies,
//! X-Forwarded-For hops, truncation for privacy, and the per-address limiter's key.

use std::net::{IpAddr, SocketAddr};

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

#[cfg(test)]
pub(super) mod tests {
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
}
