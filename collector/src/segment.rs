//! The Segment tracking API, so existing Segment SDKs work unchanged against the proxy:
//! `POST /v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/group`, `/v1/alias`
//! and `/v1/batch` become weir events.
//!
//! - `messageId` -> `id`, `timestamp` -> `ts`, `properties` (track, page, screen) or
//!   `traits` (identify, group) -> `fields`; `userId` and `anonymousId` go to the event's
//!   `context` (`user_id`, `anonymous_id`).
//! - The catalog event is the one named so, or whose `aliases` list the name: the
//!   track's `event` ("Order Completed"), or the call type for the others (`page`,
//!   `screen`, `identify`, `group`, `alias`). A call that maps to nothing keeps its Segment
//!   name and goes through validation like any event: kept flagged for frontend and mobile
//!   keys, never silently dropped.
//! - Segment's limits: 32 KB per message (a larger one is refused), 500 KB per request.

use serde_json::{Map, Value};
use weir_proto::Catalog;

/// Largest message, as Segment documents it.
pub const MAX_MESSAGE_BYTES: usize = 32 << 10;
/// Largest request, as Segment documents it.
pub const MAX_BATCH_BYTES: usize = 500 << 10;

/// The call types, as the paths name them.
pub const TYPES: &[&str] = &["track", "page", "screen", "identify", "group", "alias"];

/// One Segment message as a weir event.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The weir event as JSON (no `env`: the write key binds it).
    pub event: String,
    /// `userId`.
    pub user_id: Option<String>,
    /// `anonymousId`.
    pub anonymous_id: Option<String>,
}

/// A request's messages as weir events, and the `writeKey` its body carries, if any.
#[derive(Debug)]
pub struct Request {
    /// The body's `writeKey`.
    pub write_key: Option<String>,
    /// Its messages.
    pub calls: Vec<Call>,
}

fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The catalog event a Segment name maps to.
pub fn catalog_name<'c>(catalog: &'c Catalog, name: &str) -> Option<&'c str> {
    if let Some((n, _)) = catalog.events.get_key_value(name) {
        return Some(n);
    }
    catalog
        .events
        .iter()
        .find(|(_, d)| d.aliases.iter().any(|a| a == name))
        .map(|(n, _)| n.as_str())
}

/// Translates one message of type `kind`.
pub fn translate(kind: &str, msg: &Map<String, Value>, catalog: &Catalog) -> Result<Call, String> {
    let size = serde_json::to_vec(msg).map(|v| v.len()).unwrap_or(0);
    if size > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {size} bytes is over Segment's {MAX_MESSAGE_BYTES}-byte limit"
        ));
    }
    let segment_name = match kind {
        "track" => string_of(msg.get("event")).ok_or("track: `event` (the event name) is required")?,
        other if TYPES.contains(&other) => other.to_string(),
        other => return Err(format!("unknown call type {other:?}")),
    };
    let name = catalog_name(catalog, &segment_name).map_or(segment_name.clone(), str::to_string);
    let fields = match kind {
        "identify" | "group" => msg
            .get("traits")
            .or_else(|| msg.get("context").and_then(|c| c.get("traits"))),
        "alias" => None,
        _ => msg.get("properties"),
    };
    let mut fields = match fields {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(format!("{kind}: properties/traits must be an object")),
    };
    if kind == "group" {
        if let Some(g) = string_of(msg.get("groupId")) {
            fields.entry("group_id").or_insert(Value::String(g));
        }
    }
    if kind == "alias" {
        if let Some(p) = string_of(msg.get("previousId")) {
            fields.insert("previous_id".into(), Value::String(p));
        }
    }
    let mut ev = Map::new();
    ev.insert("event".into(), Value::String(name));
    if let Some(id) = string_of(msg.get("messageId")) {
        ev.insert("id".into(), Value::String(id));
    }
    if let Some(ts) = msg.get("timestamp").filter(|t| !t.is_null()) {
        ev.insert("ts".into(), ts.clone());
    }
    ev.insert("fields".into(), Value::Object(fields));
    Ok(Call {
        event: Value::Object(ev).to_string(),
        user_id: string_of(msg.get("userId")),
        anonymous_id: string_of(msg.get("anonymousId")),
    })
}

/// Parses the body of `POST /v1/<kind>` (`kind` = a call type or `batch`).
pub fn parse(kind: &str, body: &[u8], catalog: &Catalog) -> Result<Request, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(top) = value else {
        return Err("the body must be a JSON object".into());
    };
    let write_key = string_of(top.get("writeKey"));
    let mut calls = Vec::new();
    if kind == "batch" {
        let Some(Value::Array(items)) = top.get("batch") else {
            return Err("batch: `batch` must be an array of messages".into());
        };
        for (i, item) in items.iter().enumerate() {
            let Value::Object(msg) = item else {
                return Err(format!("batch[{i}]: a message must be an object"));
            };
            let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
            calls.push(translate(kind, msg, catalog).map_err(|e| format!("batch[{i}]: {e}"))?);
        }
    } else {
        calls.push(translate(kind, &top, catalog)?);
    }
    Ok(Request { write_key, calls })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let files = vec![(
            "c.toml".into(),
            r#"
[environments.web]
kind = "frontend"

[fields.order_id]
type = "string"

[fields.plan]
type = "string"

[events."order.completed"]
aliases = ["Order Completed"]

[[events."order.completed".versions]]
version = 1
environments = ["web"]
required = ["order_id"]

[events."user.identified"]
aliases = ["identify"]

[[events."user.identified".versions]]
version = 1
environments = ["web"]
optional = ["plan"]
"#
            .to_string(),
        )];
        Catalog::from_files(files).unwrap()
    }

    #[test]
    fn track_identify_and_batches_map_through_aliases() {
        let c = catalog();
        let r = parse(
            "track",
            br#"{"event":"Order Completed","messageId":"m1","timestamp":"2026-11-22T13:00:00Z","userId":"u1","properties":{"order_id":"o1"},"writeKey":"k"}"#,
            &c,
        )
        .unwrap();
        assert_eq!(r.write_key.as_deref(), Some("k"));
        let v: Value = serde_json::from_str(&r.calls[0].event).unwrap();
        assert_eq!(v["event"], "order.completed");
        assert_eq!(v["id"], "m1");
        assert_eq!(v["ts"], "2026-11-22T13:00:00Z");
        assert_eq!(v["fields"]["order_id"], "o1");
        assert_eq!(r.calls[0].user_id.as_deref(), Some("u1"));
        let b = parse(
            "batch",
            br#"{"batch":[{"type":"identify","anonymousId":"a1","traits":{"plan":"pro"}},{"type":"track","event":"Nothing Like It","properties":{}}]}"#,
            &c,
        )
        .unwrap();
        let v0: Value = serde_json::from_str(&b.calls[0].event).unwrap();
        assert_eq!(v0["event"], "user.identified");
        assert_eq!(v0["fields"]["plan"], "pro");
        assert_eq!(b.calls[0].anonymous_id.as_deref(), Some("a1"));
        let v1: Value = serde_json::from_str(&b.calls[1].event).unwrap();
        assert_eq!(v1["event"], "Nothing Like It", "unmapped names are kept as they are");
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let c = catalog();
        assert!(parse("track", b"[]", &c).unwrap_err().contains("object"));
        assert!(parse("track", br#"{"properties":{}}"#, &c)
            .unwrap_err()
            .contains("event"));
        assert!(parse("batch", br#"{"batch":[1]}"#, &c)
            .unwrap_err()
            .contains("batch[0]"));
        assert!(parse("batch", br#"{"batch":[{"type":"explode"}]}"#, &c)
            .unwrap_err()
            .contains("explode"));
        let big = format!(r#"{{"event":"x","properties":{{"p":"{}"}}}}"#, "x".repeat(40_000));
        assert!(parse("track", big.as_bytes(), &c).unwrap_err().contains("32768"));
    }
}
