//! Building Arrow record batches from stored events, one typed column per field.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use serde_json::value::RawValue;
use weir_proto::catalog::{Column, FieldType, Scalar};
use weir_proto::event::{parse_fields_into, parse_timestamp, CowStr, EventView};

fn ts_builder(cap: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("UTC")
}

enum Builder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
    ListStr(ListBuilder<StringBuilder>),
    ListInt(ListBuilder<Int64Builder>),
    ListFloat(ListBuilder<Float64Builder>),
    ListBool(ListBuilder<BooleanBuilder>),
}

fn parse_str(v: &str) -> Result<CowStr<'_>, String> {
    serde_json::from_str(v).map_err(|_| format!("expected string, got {v}"))
}

fn parse_int(v: &str) -> Result<i64, String> {
    v.parse().map_err(|_| format!("expected int, got {v}"))
}

fn parse_float(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && !v.starts_with('"') => Ok(f),
        _ => Err(format!("expected float, got {v}")),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected bool, got {other}")),
    }
}

fn parse_list<'a, T>(v: &'a str, f: impl Fn(&'a str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<&RawValue> = serde_json::from_str(v).map_err(|_| format!("expected array, got {v}"))?;
    items.into_iter().map(|item| f(item.get())).collect()
}

impl Builder {
    fn new(t: FieldType, cap: usize) -> Builder {
        match t {
            FieldType::Scalar(Scalar::String) => Builder::Str(StringBuilder::with_capacity(cap, cap * 16)),
            FieldType::Scalar(Scalar::Int) => Builder::Int(Int64Builder::with_capacity(cap)),
            FieldType::Scalar(Scalar::Float) => Builder::Float(Float64Builder::with_capacity(cap)),
            FieldType::Scalar(Scalar::Bool) => Builder::Bool(BooleanBuilder::with_capacity(cap)),
            FieldType::Scalar(Scalar::Timestamp) => Builder::Ts(ts_builder(cap)),
            FieldType::Array(Scalar::Int) => Builder::ListInt(ListBuilder::new(Int64Builder::new())),
            FieldType::Array(Scalar::Float) => Builder::ListFloat(ListBuilder::new(Float64Builder::new())),
            FieldType::Array(Scalar::Bool) => Builder::ListBool(ListBuilder::new(BooleanBuilder::new())),
            FieldType::Array(_) => Builder::ListStr(ListBuilder::new(StringBuilder::new())),
        }
    }

    /// Whether `v` fits type `t` (what [`Builder::append`] would say), appending nothing.
    fn check(t: FieldType, v: &str) -> Result<(), String> {
        match t {
            FieldType::Scalar(Scalar::String) => parse_str(v).map(drop),
            FieldType::Scalar(Scalar::Int) => parse_int(v).map(drop),
            FieldType::Scalar(Scalar::Float) => parse_float(v).map(drop),
            FieldType::Scalar(Scalar::Bool) => parse_bool(v).map(drop),
            FieldType::Scalar(Scalar::Timestamp) => parse_timestamp(v).map(drop),
            FieldType::Array(Scalar::Int) => parse_list(v, parse_int).map(drop),
            FieldType::Array(Scalar::Float) => parse_list(v, parse_float).map(drop),
            FieldType::Array(Scalar::Bool) => parse_list(v, parse_bool).map(drop),
            FieldType::Array(_) => parse_list(v, parse_str).map(drop),
        }
    }

    /// Appends one value (`None` is null). On error nothing was appended.
    fn append(&mut self, v: Option<&str>) -> Result<(), String> {
        match (self, v) {
            (Builder::Str(b), None) => b.append_null(),
            (Builder::Str(b), Some(v)) => b.append_value(parse_str(v)?.0),
            (Builder::Int(b), None) => b.append_null(),
            (Builder::Int(b), Some(v)) => b.append_value(parse_int(v)?),
            (Builder::Float(b), None) => b.append_null(),
            (Builder::Float(b), Some(v)) => b.append_value(parse_float(v)?),
            (Builder::Bool(b), None) => b.append_null(),
            (Builder::Bool(b), Some(v)) => b.append_value(parse_bool(v)?),
            (Builder::Ts(b), None) => b.append_null(),
            (Builder::Ts(b), Some(v)) => b.append_option(parse_timestamp(v)?),
            (Builder::ListStr(b), None) => b.append(false),
            (Builder::ListStr(b), Some(v)) => {
                let items = parse_list(v, parse_str)?;
                for s in items {
                    b.values().append_value(s.0);
                }
                b.append(true)
            }
            (Builder::ListInt(b), None) => b.append(false),
            (Builder::ListInt(b), Some(v)) => {
                let items = parse_list(v, parse_int)?;
                b.values().append_slice(&items);
                b.append(true)
            }
            (Builder::ListFloat(b), None) => b.append(false),
            (Builder::ListFloat(b), Some(v)) => {
                let items = parse_list(v, parse_float)?;
                b.values().append_slice(&items);
                b.append(true)
            }
            (Builder::ListBool(b), None) => b.append(false),
            (Builder::ListBool(b), Some(v)) => {
                for x in parse_list(v, parse_bool)? {
                    b.values().append_value(x);
                }
                b.append(true)
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::ListStr(b) => Arc::new(b.finish()),
            Builder::ListInt(b) => Arc::new(b.finish()),
            Builder::ListFloat(b) => Arc::new(b.finish()),
            Builder::ListBool(b) => Arc::new(b.finish()),
        }
    }
}

struct Envelope {
    id: StringBuilder,
    env: StringBuilder,
    received_at: TimestampMicrosecondBuilder,
    client_ts: TimestampMicrosecondBuilder,
    collector: StringBuilder,
}

impl Envelope {
    fn new(cap: usize) -> Envelope {
        Envelope {
            id: StringBuilder::with_capacity(cap, cap * 36),
            env: StringBuilder::with_capacity(cap, cap * 8),
            received_at: ts_builder(cap),
            client_ts: ts_builder(cap),
            collector: StringBuilder::with_capacity(cap, cap * 16),
        }
    }

    fn append(&mut self, e: &EventView<'_>) {
        self.id.append_value(e.id);
        self.env.append_value(e.env);
        self.received_at.append_value(e.received_at);
        self.client_ts.append_option(e.client_ts);
        self.collector.append_value(e.collector);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.env.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.client_ts.finish()),
            Arc::new(self.collector.finish()),
        ]
    }
}

/// The context columns ([`crate::schema::CONTEXT_KEYS`]). Most events have no context
/// (only the proxy adds it), so runs of them become nulls in one call per column.
struct Context {
    columns: Vec<StringBuilder>,
    nulls: usize,
}

impl Context {
    fn new(cap: usize) -> Context {
        Context {
            columns: crate::schema::CONTEXT_KEYS
                .iter()
                .map(|_| StringBuilder::with_capacity(cap, 0))
                .collect(),
            nulls: 0,
        }
    }

    fn flush_nulls(&mut self) {
        if self.nulls > 0 {
            for b in &mut self.columns {
                b.append_nulls(self.nulls);
            }
            self.nulls = 0;
        }
    }

    fn append(&mut self, e: &EventView<'_>) {
        if e.context.is_empty() {
            self.nulls += 1;
            return;
        }
        self.flush_nulls();
        for (key, b) in crate::schema::CONTEXT_KEYS.iter().zip(self.columns.iter_mut()) {
            b.append_option(e.context.iter().find(|(k, _)| k == key).map(|(_, v)| *v));
        }
    }

    fn finish(mut self) -> impl Iterator<Item = ArrayRef> {
        self.flush_nulls();
        self.columns.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef)
    }
}

/// A row that cannot be written under its schema: its index and why.
#[derive(Debug)]
pub struct BadRow {
    /// Index in the rows given.
    pub index: usize,
    /// What is wrong, naming the field.
    pub error: String,
}

/// Builds one record batch of an event version from its rows, leaving out the rows
/// its columns refuse (returned, with why). `None` only if Arrow refuses the batch.
pub fn event_batch(
    schema: &SchemaRef,
    columns: &[Column<'_>],
    rows: &[EventView<'_>],
) -> (Option<RecordBatch>, Vec<BadRow>) {
    // Not careful: `None` as soon as a row fails half-way through its columns. Then build
    // again checking each row before appending it (only batches with a bad row pay for
    // the checks); a careful build always gives a result.
    build(schema, columns, rows, false)
        .or_else(|| build(schema, columns, rows, true))
        .unwrap_or_default()
}

/// Builds the batch and lists the rows left out. Not careful: `None` at the first bad
/// row. Careful: checks every value of a row before appending it and skips bad rows.
fn build(
    schema: &SchemaRef,
    columns: &[Column<'_>],
    rows: &[EventView<'_>],
    careful: bool,
) -> Option<(Option<RecordBatch>, Vec<BadRow>)> {
    let mut env = Envelope::new(rows.len());
    let mut context = Context::new(rows.len());
    let mut builders: Vec<Builder> = columns.iter().map(|c| Builder::new(c.def.ty, rows.len())).collect();
    let mut fields = Vec::with_capacity(16);
    let mut bad = Vec::new();
    // Each column's value in the current row, and for each position in a row's `fields`
    // the column it held last time: rows of one event version mostly list their fields
    // in the same order, so a field costs one name comparison.
    let mut slots: Vec<Option<&str>> = vec![None; columns.len()];
    let mut hint: Vec<usize> = Vec::new();
    for (index, e) in rows.iter().enumerate() {
        let mut row = || -> Result<(), String> {
            let text = std::str::from_utf8(e.fields).map_err(|_| "fields: not UTF-8".to_string())?;
            parse_fields_into(text, &mut fields).map_err(|err| format!("fields: {err}"))?;
            slots.iter_mut().for_each(|s| *s = None);
            if hint.len() < fields.len() {
                hint.resize(fields.len(), usize::MAX);
            }
            for (j, (k, v)) in fields.iter().enumerate() {
                if *v == "null" {
                    continue;
                }
                let c = match columns.get(hint[j]) {
                    Some(c) if c.name == k.as_ref() => hint[j],
                    _ => match columns.iter().position(|c| c.name == k.as_ref()) {
                        Some(c) => {
                            hint[j] = c;
                            c
                        }
                        None => continue,
                    },
                };
                if slots[c].is_none() {
                    slots[c] = Some(*v);
                }
            }
            for (c, v) in columns.iter().zip(&slots) {
                if v.is_none() && c.required {
                    return Err(format!("{}: missing required field", c.name));
                }
                if careful {
                    if let Some(v) = v {
                        Builder::check(c.def.ty, v).map_err(|err| format!("{}: {err}", c.name))?;
                    }
                }
            }
            for ((c, b), v) in columns.iter().zip(builders.iter_mut()).zip(&slots) {
                b.append(*v).map_err(|err| format!("{}: {err}", c.name))?;
            }
            Ok(())
        };
        match row() {
            Ok(()) => {
                env.append(e);
                context.append(e);
            }
            Err(error) if careful => bad.push(BadRow { index, error }),
            Err(_) => return None,
        }
    }
    let mut arrays = env.finish();
    arrays.extend(builders.iter_mut().map(|b| b.finish()));
    arrays.extend(context.finish());
    let batch = match RecordBatch::try_new(schema.clone(), arrays) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "a record batch was refused; its rows go to _invalid");
            let left_out: Vec<usize> = bad.iter().map(|b| b.index).collect();
            bad.extend((0..rows.len()).filter(|i| !left_out.contains(i)).map(|index| BadRow {
                index,
                error: format!("schema: {e}"),
            }));
            None
        }
    };
    Some((batch, bad))
}

/// The raw JSON kept for an invalid event: as sent, or rebuilt from what was stored.
pub fn raw_json(e: &EventView<'_>) -> String {
    if !e.raw.is_empty() {
        return String::from_utf8_lossy(e.raw).into_owned();
    }
    let fields = std::str::from_utf8(e.fields)
        .ok()
        .filter(|f| !f.is_empty())
        .unwrap_or("{}");
    let head = serde_json::json!({"event": e.event, "version": e.version, "env": e.env, "id": e.id});
    let head = head.to_string();
    format!("{},\"fields\":{fields}}}", &head[..head.len() - 1])
}

/// An event for `_invalid/`, with any errors the loader itself found.
pub struct InvalidRow<'a> {
    /// The event.
    pub view: EventView<'a>,
    /// Errors found while loading (the event's own come first).
    pub extra: Vec<String>,
}

/// Builds the record batch of `_invalid/` rows.
pub fn invalid_batch(schema: &SchemaRef, rows: &[InvalidRow<'_>]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut env = Envelope::new(rows.len());
    let mut context = Context::new(rows.len());
    let mut event = StringBuilder::new();
    let mut version = Int64Builder::new();
    let mut raw = StringBuilder::new();
    let mut errors = ListBuilder::new(StringBuilder::new());
    for r in rows {
        let e = &r.view;
        env.append(e);
        context.append(e);
        event.append_value(e.event);
        version.append_value(i64::from(e.version));
        raw.append_value(raw_json(e));
        for err in &e.errors {
            errors.values().append_value(err);
        }
        for err in &r.extra {
            errors.values().append_value(err);
        }
        errors.append(true);
    }
    let mut arrays = env.finish();
    arrays.push(Arc::new(event.finish()));
    arrays.push(Arc::new(version.finish()));
    arrays.push(Arc::new(raw.finish()));
    arrays.push(Arc::new(errors.finish()));
    arrays.extend(context.finish());
    RecordBatch::try_new(schema.clone(), arrays)
}
