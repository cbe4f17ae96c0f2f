//! The demo catalog `weir up` uses when no catalog is given.

/// The demo catalog's files, as (file name, TOML text).
pub const DEMO_FILES: &[(&str, &str)] = &[
    (
        "environments.toml",
        include_str!("../../demo-catalog/environments.toml"),
    ),
    ("events.toml", include_str!("../../demo-catalog/events.toml")),
    ("fields.toml", include_str!("../../demo-catalog/fields.toml")),
];

/// A JSON array of `n` `item.viewed` events, valid against the demo catalog from
/// environment `web`: the body the benches and the collector's tests send.
pub fn demo_body(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"event":"item.viewed","version":2,"env":"web","fields":{{"item_id":{i},"source":"search","position":{i},"price":12.5,"session_id":"s-{i}"}}}}"#))
        .collect();
    format!("[{}]", events.join(","))
}
