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
