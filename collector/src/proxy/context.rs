//! What the proxy adds to each event's `context`: the user agent parsed (woothee,
//! cached per distinct agent string), every value capped in size.

use std::sync::Arc;

/// The context entries parsed from one user agent.
pub(super) type UaParts = Arc<Vec<(&'static str, String)>>;

/// Parsed user agents, by agent string (bounded: cleared past `UA_CACHE` entries).
pub(super) struct UaCache {
    pub(super) parser: woothee::parser::Parser,
    pub(super) map: std::sync::Mutex<std::collections::HashMap<String, UaParts>>,
}

pub(super) const UA_CACHE: usize = 10_000;

impl UaCache {
    pub(super) fn parse(&self, agent: &str) -> UaParts {
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

/// Longest stored context value (a user agent, a Segment user id): longer ones are cut
/// at a character boundary, so one request cannot multiply a huge header into every
/// event it carries.
pub const MAX_CONTEXT_VALUE_BYTES: usize = 1024;

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn values_are_capped_at_a_character_boundary() {
        assert_eq!(cap("ééé", 3), "é");
        assert_eq!(cap("abc", 5), "abc");
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
}
