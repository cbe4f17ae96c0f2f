//! The catalog's model: environments, field types, fields, event versions, and the
//! shapes of a catalog file and of the catalog as served to collectors.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of sender an environment is; it decides the validation policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvKind {
    /// Services we run: an invalid event is rejected and the error returned.
    Backend,
    /// Web pages: an invalid event is kept, flagged `valid = false`.
    Frontend,
    /// Mobile apps: an invalid event is kept, flagged `valid = false`.
    Mobile,
}

impl EnvKind {
    /// Whether invalid events from this kind are rejected (rather than kept flagged).
    pub fn rejects_invalid(self) -> bool {
        matches!(self, EnvKind::Backend)
    }
}

/// An environment events are sent from (`web`, `ios`, `backend`...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Validation policy.
    pub kind: EnvKind,
    /// Common fields every event of this environment must carry.
    #[serde(default)]
    pub fields: Vec<String>,
    /// What it is, for people.
    #[serde(default)]
    pub description: String,
    /// `fields` resolved against the catalog's fields when it is loaded (definitions
    /// only, by their place in `fields`).
    #[serde(skip)]
    pub(crate) table: FieldTable,
}

impl Environment {
    /// The definition of the environment's field at `place` in `fields`.
    pub(crate) fn field_def(&self, place: usize) -> Option<&FieldDef> {
        self.table.defs.get(place)?.as_deref()
    }

    /// Resolves `fields` against the catalog's, each definition shared.
    pub(crate) fn index(&mut self, fields: &std::collections::BTreeMap<&str, std::sync::Arc<FieldDef>>) {
        self.table.defs = self.fields.iter().map(|n| fields.get(n.as_str()).cloned()).collect();
    }
}

/// Scalar field types, also the element types of arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float (integers are accepted).
    Float,
    /// true or false.
    Bool,
    /// RFC 3339 text or integer microseconds since the epoch; stored as µs UTC.
    Timestamp,
}

/// The type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// One value.
    Scalar(Scalar),
    /// A JSON array of values of one scalar type (not timestamps).
    Array(Scalar),
}

impl FieldType {
    /// Parses `string`, `int`, `float`, `bool`, `timestamp` or `array<T>`.
    pub fn parse(s: &str) -> Option<FieldType> {
        let scalar = |s: &str| match s {
            "string" => Some(Scalar::String),
            "int" => Some(Scalar::Int),
            "float" => Some(Scalar::Float),
            "bool" => Some(Scalar::Bool),
            "timestamp" => Some(Scalar::Timestamp),
            _ => None,
        };
        match s.strip_prefix("array<").and_then(|r| r.strip_suffix('>')) {
            Some(inner) => match scalar(inner.trim())? {
                Scalar::Timestamp => None,
                s => Some(FieldType::Array(s)),
            },
            None => scalar(s).map(FieldType::Scalar),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scalar::String => "string",
            Scalar::Int => "int",
            Scalar::Float => "float",
            Scalar::Bool => "bool",
            Scalar::Timestamp => "timestamp",
        })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::Scalar(s) => write!(f, "{s}"),
            FieldType::Array(s) => write!(f, "array<{s}>"),
        }
    }
}

impl Serialize for FieldType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FieldType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown type `{s}`, expected string, int, float, bool, timestamp or array<string|int|float|bool>"
            ))
        })
    }
}

/// An allowed value of an `enum` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnumValue {
    /// For int fields.
    Int(i64),
    /// For string fields.
    Str(String),
}

impl fmt::Display for EnumValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnumValue::Int(i) => write!(f, "{i}"),
            EnumValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A typed field, shared by every event that names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// What it holds, for people and generated code.
    #[serde(default)]
    pub description: String,
    /// Allowed values (string and int fields).
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<EnumValue>>,
    /// Longest allowed string in characters (for arrays: the most elements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
}

/// One version of an event: append-only, never edited once created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionDef {
    /// 1, 2, 3... in order.
    pub version: u32,
    /// Environments allowed to send it.
    pub environments: Vec<String>,
    /// Fields that must be present.
    #[serde(default)]
    pub required: Vec<String>,
    /// Fields that may be present.
    #[serde(default)]
    pub optional: Vec<String>,
    /// What changed in this version, for people.
    #[serde(default)]
    pub description: String,
    /// `required` and `optional` resolved against the catalog's fields, built once
    /// when the catalog is loaded: checking a sent field is one lookup, which says
    /// whether the version has it, whether it is required and what it must hold.
    #[serde(skip)]
    pub(crate) table: FieldTable,
}

/// Up to this many fields, a scan of the names is faster than hashing one.
const SCAN_FIELDS: usize = 16;

/// A version's own fields, in the order `required` then `optional`, each with its
/// definition (shared with every version that has it).
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldTable {
    defs: Vec<Option<std::sync::Arc<FieldDef>>>,
    /// Name -> slot, when the version has more than [`SCAN_FIELDS`] fields.
    lookup: std::collections::HashMap<String, u32>,
}

/// The table is derived from the version's lists and the catalog's fields: it takes no
/// part in comparing versions.
impl PartialEq for FieldTable {
    fn eq(&self, _: &FieldTable) -> bool {
        true
    }
}

impl Eq for FieldTable {}

impl VersionDef {
    /// Whether `field` is one of this version's own fields (required or optional).
    pub fn has_field(&self, field: &str) -> bool {
        self.slot(field).is_some()
    }

    /// The slot of `field` in this version's table: `required` first, then `optional`.
    pub(crate) fn slot(&self, field: &str) -> Option<usize> {
        if self.table.lookup.is_empty() {
            self.required.iter().chain(&self.optional).position(|f| f == field)
        } else {
            self.table.lookup.get(field).map(|&i| i as usize)
        }
    }

    /// [`VersionDef::slot`], trying `hint` first: senders mostly list a version's fields
    /// in its own order, so the field at position `hint` of an event is usually the one
    /// in slot `hint`.
    pub(crate) fn slot_near(&self, field: &str, hint: usize) -> Option<usize> {
        let named = match hint.checked_sub(self.required.len()) {
            None => self.required.get(hint),
            Some(i) => self.optional.get(i),
        };
        match named {
            Some(name) if name == field => Some(hint),
            _ => self.slot(field),
        }
    }

    /// The definition of the field in `slot` (none only in a catalog that failed its
    /// cross-check).
    pub(crate) fn slot_def(&self, slot: usize) -> Option<&FieldDef> {
        self.table.defs.get(slot)?.as_deref()
    }

    /// Builds the field table from the catalog's `fields`, each definition shared.
    pub(crate) fn index(&mut self, fields: &std::collections::BTreeMap<&str, std::sync::Arc<FieldDef>>) {
        let names = self.required.iter().chain(&self.optional);
        self.table.defs = names.clone().map(|n| fields.get(n.as_str()).cloned()).collect();
        self.table.lookup = if self.table.defs.len() > SCAN_FIELDS {
            names.enumerate().map(|(i, n)| (n.clone(), i as u32)).collect()
        } else {
            Default::default()
        };
    }
}

/// An event and its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDef {
    /// Team that owns it.
    #[serde(default)]
    pub owner: String,
    /// What it means, for people.
    #[serde(default)]
    pub description: String,
    /// Router recipients besides the warehouse.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Operators can switch a noisy event off: collectors drop it.
    #[serde(default)]
    pub drop: bool,
    /// Names other APIs (Segment `track`) use for it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its versions, oldest first.
    #[serde(default)]
    pub versions: Vec<VersionDef>,
}

impl EventDef {
    /// The version numbered `v`.
    pub fn version(&self, v: u32) -> Option<&VersionDef> {
        self.versions.iter().find(|d| d.version == v)
    }

    /// Whether the catalog sends this event to the recipient `name`.
    pub fn routes_to(&self, name: &str) -> bool {
        self.recipients.iter().any(|r| r == name)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogFile {
    #[serde(default)]
    pub(super) environments: BTreeMap<String, Environment>,
    #[serde(default)]
    pub(super) fields: BTreeMap<String, FieldDef>,
    #[serde(default)]
    pub(super) events: BTreeMap<String, EventDef>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireCatalog {
    pub(super) revision: String,
    pub(super) files: Vec<WireFile>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireFile {
    pub(super) name: String,
    pub(super) text: String,
}
