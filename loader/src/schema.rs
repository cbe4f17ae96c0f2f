//! Arrow schemas from the catalog: one per event version, and one for invalid events.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use weir_proto::catalog::{Catalog, Column, FieldType, Scalar};

/// Timestamp type of every time column: microseconds, UTC.
pub fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type of a scalar.
pub fn scalar_type(s: Scalar) -> DataType {
    match s {
        Scalar::String => DataType::Utf8,
        Scalar::Int => DataType::Int64,
        Scalar::Float => DataType::Float64,
        Scalar::Bool => DataType::Boolean,
        Scalar::Timestamp => timestamp(),
    }
}

/// The Arrow type of a field type (`array<T>` becomes `List<T>`).
pub fn field_type(t: FieldType) -> DataType {
    match t {
        FieldType::Scalar(s) => scalar_type(s),
        FieldType::Array(s) => DataType::List(Arc::new(Field::new("item", scalar_type(s), true))),
    }
}

/// Envelope columns at the front of every event file. `event`, `version`, `date` and
/// `hour` are in the path only.
pub fn envelope() -> Vec<Field> {
    vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("env", DataType::Utf8, false),
        Field::new("received_at", timestamp(), false),
        Field::new("client_ts", timestamp(), true),
        Field::new("collector", DataType::Utf8, false),
    ]
}

/// The `context` entries every file has a column for, at its end, as `context_<key>`
/// (nullable strings): what the proxy adds (client `ip`, the `user_agent` and its parsed
/// `ua_*` parts, `country` and `region` from a GeoIP database) and Segment's user ids.
/// Other context keys are kept in the buffer but not loaded.
pub const CONTEXT_KEYS: &[&str] = &[
    "ip",
    "user_agent",
    "ua_browser",
    "ua_browser_version",
    "ua_os",
    "ua_device",
    "country",
    "region",
    "user_id",
    "anonymous_id",
];

/// The context columns, in [`CONTEXT_KEYS`] order.
pub fn context_fields() -> Vec<Field> {
    CONTEXT_KEYS
        .iter()
        .map(|k| Field::new(format!("context_{k}"), DataType::Utf8, true))
        .collect()
}

/// The schema of one event version: the envelope, its typed columns, the context.
pub fn event_schema(columns: &[Column<'_>]) -> SchemaRef {
    let mut fields = envelope();
    for c in columns {
        fields.push(Field::new(c.name, field_type(c.def.ty), !c.required));
    }
    fields.extend(context_fields());
    Arc::new(Schema::new(fields))
}

/// The schema of `_invalid/` files.
pub fn invalid_schema() -> SchemaRef {
    let mut fields = envelope();
    fields.push(Field::new("event", DataType::Utf8, false));
    fields.push(Field::new("version", DataType::Int64, false));
    fields.push(Field::new("raw", DataType::Utf8, false));
    fields.push(Field::new(
        "errors",
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        false,
    ));
    fields.extend(context_fields());
    Arc::new(Schema::new(fields))
}

/// Whether the catalog knows this event version.
pub fn known(catalog: &Catalog, event: &str, version: u32) -> bool {
    catalog.events.get(event).and_then(|e| e.version(version)).is_some()
}
