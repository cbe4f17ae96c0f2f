//! The event catalog ("reference book"): environments, typed fields and append-only
//! event versions, read from a directory of TOML files that are merged.
//!
//! [`Catalog::load_dir`] parses and cross-checks a catalog; [`Catalog::validate`]
//! checks one event against it; [`check::compatible`] refuses edits that would break
//! the append-only rule.

pub mod check;
mod demo;
pub mod docs;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use demo::DEMO_FILES;
pub use validate::Checked;

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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    environments: BTreeMap<String, Environment>,
    #[serde(default)]
    fields: BTreeMap<String, FieldDef>,
    #[serde(default)]
    events: BTreeMap<String, EventDef>,
}

#[derive(Serialize, Deserialize)]
struct WireCatalog {
    revision: String,
    files: Vec<WireFile>,
}

#[derive(Serialize, Deserialize)]
struct WireFile {
    name: String,
    text: String,
}

/// One problem found in a catalog, naming where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file that holds the offending definition.
    pub file: PathBuf,
    /// Where in it: `event "item.viewed" version 2 field "price"`, or empty.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.place, self.message)
        }
    }
}

/// A catalog that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct CatalogError {
    /// Each problem, naming file and place.
    pub problems: Vec<Problem>,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl CatalogError {
    fn one(file: &Path, place: impl Into<String>, message: impl Into<String>) -> CatalogError {
        CatalogError {
            problems: vec![Problem {
                file: file.to_path_buf(),
                place: place.into(),
                message: message.into(),
            }],
        }
    }
}

/// Which file defined each environment, field and event, for error messages.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Environment name -> file.
    pub environments: BTreeMap<String, PathBuf>,
    /// Field name -> file.
    pub fields: BTreeMap<String, PathBuf>,
    /// Event name -> file.
    pub events: BTreeMap<String, PathBuf>,
}

/// A parsed, cross-checked catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Environments by name.
    pub environments: BTreeMap<String, Environment>,
    /// Fields by name.
    pub fields: BTreeMap<String, FieldDef>,
    /// Events by name.
    pub events: BTreeMap<String, EventDef>,
    /// Where each definition came from.
    pub sources: Sources,
    /// A short fingerprint of the catalog's content (hex), for ETags and manifests;
    /// empty for [`Catalog::empty`].
    pub revision: String,
    /// The files it was read from, as (file name, TOML text), sorted by name: what the
    /// router serves to collectors.
    pub files: Vec<(String, String)>,
}

/// Whether `name` is a valid event name: `[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*`.
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some('a'..='z')) && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        })
}

impl Catalog {
    /// Loads every `*.toml` file in `dir` (not recursive), merged.
    pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| CatalogError::one(dir, "", format!("cannot read the catalog directory: {e}")))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(CatalogError::one(
                dir,
                "",
                "no *.toml files: a catalog is a directory of TOML files",
            ));
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CatalogError::one(&path, "", format!("cannot read: {e}")))?;
            files.push((path, text));
        }
        Catalog::from_files(files)
    }

    /// A catalog with nothing in it (revision empty): a collector that has no catalog
    /// yet; every event would be refused, so the collector answers 503 instead.
    pub fn empty() -> Catalog {
        Catalog {
            environments: BTreeMap::new(),
            fields: BTreeMap::new(),
            events: BTreeMap::new(),
            sources: Sources::default(),
            revision: String::new(),
            files: Vec::new(),
        }
    }

    /// Whether this is a real catalog (not [`Catalog::empty`]).
    pub fn is_loaded(&self) -> bool {
        !self.revision.is_empty()
    }

    /// Parses the JSON form served by `GET /v1/catalog`.
    pub fn from_json(data: &[u8]) -> Result<Catalog, CatalogError> {
        let wire: WireCatalog = serde_json::from_slice(data).map_err(|e| CatalogError {
            problems: vec![Problem {
                file: PathBuf::from("<router>"),
                place: String::new(),
                message: format!("not a catalog: {e}"),
            }],
        })?;
        Catalog::from_files(
            wire.files
                .into_iter()
                .map(|f| (PathBuf::from(f.name), f.text))
                .collect(),
        )
    }

    /// The JSON form served by `GET /v1/catalog`: `{"revision", "files": [{"name", "text"}]}`.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireCatalog {
            revision: self.revision.clone(),
            files: self
                .files
                .iter()
                .map(|(n, t)| WireFile {
                    name: n.clone(),
                    text: t.clone(),
                })
                .collect(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The built-in demo catalog (`weir up` without `--catalog`).
    pub fn demo() -> Catalog {
        let files = DEMO_FILES
            .iter()
            .map(|(name, text)| (PathBuf::from(format!("<demo>/{name}")), text.to_string()))
            .collect();
        match Catalog::from_files(files) {
            Ok(c) => c,
            // The demo catalog is checked by a unit test; this cannot happen in a release.
            Err(e) => panic!("the built-in demo catalog is invalid: {e}"),
        }
    }

    /// Parses and merges catalog files given as (path, contents).
    pub fn from_files(files: Vec<(PathBuf, String)>) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog {
            environments: BTreeMap::new(),
            fields: BTreeMap::new(),
            events: BTreeMap::new(),
            sources: Sources::default(),
            revision: String::new(),
            files: Vec::new(),
        };
        let mut problems = Vec::new();
        // The revision (the ETag collectors poll with): a stable 64-bit hash of every
        // file's name and text, each length-prefixed so no two catalogs run together.
        let mut hasher = twox_hash::XxHash64::with_seed(0);
        for (path, text) in &files {
            let name = path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
            for part in [name, text.as_bytes()] {
                std::hash::Hasher::write_u64(&mut hasher, part.len() as u64);
                std::hash::Hasher::write(&mut hasher, part);
            }
            let file: CatalogFile = match toml::from_str(text) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(Problem {
                        file: path.clone(),
                        place: String::new(),
                        message: e.to_string().trim_end().to_string(),
                    });
                    continue;
                }
            };
            merge(
                &mut catalog.environments,
                &mut catalog.sources.environments,
                file.environments,
                path,
                "environment",
                &mut problems,
            );
            merge(
                &mut catalog.fields,
                &mut catalog.sources.fields,
                file.fields,
                path,
                "field",
                &mut problems,
            );
            merge(
                &mut catalog.events,
                &mut catalog.sources.events,
                file.events,
                path,
                "event",
                &mut problems,
            );
        }
        catalog.revision = format!("{:016x}", std::hash::Hasher::finish(&hasher));
        catalog.files = files
            .iter()
            .map(|(p, t)| {
                (
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    t.clone(),
                )
            })
            .collect();
        if problems.is_empty() {
            catalog.cross_check(&mut problems);
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(CatalogError { problems })
        }
    }

    fn cross_check(&self, problems: &mut Vec<Problem>) {
        let mut push = |file: &PathBuf, place: String, message: String| {
            problems.push(Problem {
                file: file.clone(),
                place,
                message,
            })
        };
        for (name, env) in &self.environments {
            let file = &self.sources.environments[name];
            let place = format!("environment {name:?}");
            for f in &env.fields {
                if !self.fields.contains_key(f) {
                    push(
                        file,
                        place.clone(),
                        format!("common field {f:?} is not defined in [fields]"),
                    );
                }
            }
            if let Some(d) = duplicate(&env.fields) {
                push(file, place.clone(), format!("common field {d:?} is listed twice"));
            }
        }
        for (name, field) in &self.fields {
            let file = &self.sources.fields[name];
            let place = format!("field {name:?}");
            if let Some(why) = reserved_field_name(name) {
                push(file, place.clone(), why);
            }
            if let Some(values) = &field.enum_values {
                let scalar = match field.ty {
                    FieldType::Scalar(s) | FieldType::Array(s) => s,
                };
                for v in values {
                    let ok = matches!(
                        (scalar, v),
                        (Scalar::String, EnumValue::Str(_)) | (Scalar::Int, EnumValue::Int(_))
                    );
                    if !ok {
                        push(
                            file,
                            place.clone(),
                            format!("enum value {v} does not fit type {}", field.ty),
                        );
                    }
                }
                if values.is_empty() {
                    push(file, place.clone(), "enum is empty".into());
                }
            }
            if field.max_length.is_some()
                && !matches!(field.ty, FieldType::Scalar(Scalar::String) | FieldType::Array(_))
            {
                push(
                    file,
                    place.clone(),
                    format!("max_length applies to strings and arrays, not {}", field.ty),
                );
            }
        }
        let mut aliases: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, event) in &self.events {
            let file = &self.sources.events[name];
            let place = format!("event {name:?}");
            if !valid_event_name(name) {
                push(
                    file,
                    place.clone(),
                    "invalid event name: use lowercase words separated by dots, like item.viewed".into(),
                );
            }
            if event.versions.is_empty() {
                push(
                    file,
                    place.clone(),
                    "has no versions: add [[events.\"NAME\".versions]] with version = 1".into(),
                );
            }
            for alias in &event.aliases {
                if let Some(other) = aliases.insert(alias, name) {
                    push(
                        file,
                        place.clone(),
                        format!("alias {alias:?} is already used by event {other:?}"),
                    );
                }
            }
            for (i, v) in event.versions.iter().enumerate() {
                let vplace = format!("event {name:?} version {}", v.version);
                if v.version as usize != i + 1 {
                    push(
                        file,
                        vplace.clone(),
                        format!(
                            "versions must be numbered 1, 2, 3... in order; expected version {}",
                            i + 1
                        ),
                    );
                }
                if v.environments.is_empty() {
                    push(file, vplace.clone(), "lists no environments".into());
                }
                for env in &v.environments {
                    if !self.environments.contains_key(env) {
                        push(
                            file,
                            vplace.clone(),
                            format!("environment {env:?} is not defined in [environments]"),
                        );
                    }
                }
                for f in v.required.iter().chain(&v.optional) {
                    if !self.fields.contains_key(f) {
                        push(
                            file,
                            format!("{vplace} field {f:?}"),
                            "is not defined in [fields]".into(),
                        );
                    }
                }
                let all: Vec<String> = v.required.iter().chain(&v.optional).cloned().collect();
                if let Some(d) = duplicate(&all) {
                    push(
                        file,
                        format!("{vplace} field {d:?}"),
                        "is listed twice (required and optional are exclusive)".into(),
                    );
                }
                if let Some(d) = duplicate(&v.environments) {
                    push(file, vplace.clone(), format!("environment {d:?} is listed twice"));
                }
            }
        }
    }

    /// The latest version of `event` that `env` may send, or else its latest version.
    pub fn default_version(&self, event: &EventDef, env: &str) -> Option<u32> {
        event
            .versions
            .iter()
            .rev()
            .find(|v| v.environments.iter().any(|e| e == env))
            .or(event.versions.last())
            .map(|v| v.version)
    }

    /// The columns of one event version in the warehouse: every field it may carry (its
    /// required, then optional fields, then the common fields of its environments), each
    /// with whether it is always present.
    pub fn columns(&self, event: &str, version: u32) -> Vec<Column<'_>> {
        let Some(v) = self.events.get(event).and_then(|e| e.version(version)) else {
            return Vec::new();
        };
        let mut out: Vec<Column<'_>> = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &v.required {
            if let Some(def) = self.fields.get(name) {
                if seen.insert(name.as_str()) {
                    out.push(Column {
                        name,
                        def,
                        required: true,
                    });
                }
            }
        }
        for name in &v.optional {
            if let Some(def) = self.fields.get(name) {
                if seen.insert(name.as_str()) {
                    out.push(Column {
                        name,
                        def,
                        required: false,
                    });
                }
            }
        }
        for env in &v.environments {
            let Some(e) = self.environments.get(env) else { continue };
            for name in &e.fields {
                if let Some(def) = self.fields.get(name) {
                    if seen.insert(name.as_str()) {
                        let everywhere = v
                            .environments
                            .iter()
                            .all(|en| self.environments.get(en).is_some_and(|x| x.fields.contains(name)));
                        out.push(Column {
                            name,
                            def,
                            required: everywhere,
                        });
                    }
                }
            }
        }
        out
    }
}

/// One typed column of an event version.
#[derive(Clone, Copy, Debug)]
pub struct Column<'a> {
    /// Field name.
    pub name: &'a str,
    /// Its definition.
    pub def: &'a FieldDef,
    /// Present in every event of this version (the column is not nullable).
    pub required: bool,
}

/// Columns every Parquet file has besides the fields: the envelope, the hive partition
/// keys, and the `context_*` columns. A field of one of these names would clash.
const RESERVED_COLUMNS: &[&str] = &[
    "id",
    "env",
    "received_at",
    "client_ts",
    "collector",
    "event",
    "version",
    "date",
    "hour",
];

/// Why `name` cannot be a field name, if it cannot.
fn reserved_field_name(name: &str) -> Option<String> {
    if RESERVED_COLUMNS.contains(&name) {
        return Some(format!(
            "{name:?} is an envelope or partition column in every Parquet file; rename the field"
        ));
    }
    if name.starts_with("context_") {
        return Some(
            "names starting with \"context_\" are the context columns in every Parquet file; rename the field"
                .to_string(),
        );
    }
    None
}

fn duplicate(items: &[String]) -> Option<&str> {
    let mut seen = BTreeSet::new();
    items.iter().find(|i| !seen.insert(i.as_str())).map(|s| s.as_str())
}

fn merge<T>(
    into: &mut BTreeMap<String, T>,
    sources: &mut BTreeMap<String, PathBuf>,
    items: BTreeMap<String, T>,
    path: &Path,
    what: &str,
    problems: &mut Vec<Problem>,
) {
    for (name, item) in items {
        if let Some(first) = sources.get(&name) {
            problems.push(Problem {
                file: path.to_path_buf(),
                place: format!("{what} {name:?}"),
                message: format!("is already defined in {}", first.display()),
            });
            continue;
        }
        sources.insert(name.clone(), path.to_path_buf());
        into.insert(name, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revision_is_a_stable_64_bit_hash_of_names_and_texts() {
        let rev = |files: &[(&str, &str)]| {
            Catalog::from_files(files.iter().map(|(n, t)| (PathBuf::from(n), t.to_string())).collect())
                .unwrap()
                .revision
        };
        let one = rev(&[("a.toml", "# x\n")]);
        assert_eq!(one.len(), 16, "{one}");
        assert!(one.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(one, rev(&[("a.toml", "# x\n")]), "stable");
        assert_ne!(one, rev(&[("a.toml", "# y\n")]));
        // Length prefixes: the same bytes split differently between files differ.
        assert_ne!(rev(&[("a.toml", "## x\n")]), rev(&[("a.toml#", "# x\n")]));
        // Pinned: collectors compare revisions across weir versions.
        assert_eq!(rev(&[]), "ef46db3751d8e999");
    }

    fn load(text: &str) -> Result<Catalog, CatalogError> {
        Catalog::from_files(vec![(PathBuf::from("cat/a.toml"), text.to_string())])
    }

    #[test]
    fn demo_catalog_is_valid() {
        let c = Catalog::demo();
        for e in ["page.viewed", "item.viewed", "search.performed", "user.registered"] {
            assert!(c.events.contains_key(e), "{e}");
        }
        for env in ["web", "ios", "backend"] {
            assert!(c.environments.contains_key(env), "{env}");
        }
    }

    #[test]
    fn json_form_round_trips() {
        let c = Catalog::demo();
        let back = Catalog::from_json(&c.to_json()).unwrap();
        assert_eq!(back.revision, c.revision);
        assert_eq!(back.events, c.events);
        assert!(Catalog::from_json(b"nope").is_err());
        assert!(!Catalog::empty().is_loaded());
    }

    #[test]
    fn field_types_parse() {
        assert_eq!(FieldType::parse("array<int>"), Some(FieldType::Array(Scalar::Int)));
        assert_eq!(
            FieldType::parse("timestamp"),
            Some(FieldType::Scalar(Scalar::Timestamp))
        );
        assert_eq!(FieldType::parse("array<timestamp>"), None);
        assert_eq!(FieldType::parse("text"), None);
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let err = load("[fields.x]\ntype = \n").unwrap_err().to_string();
        assert!(err.starts_with("cat/a.toml: "), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[fields.x]\ntype = \"int\"\ncolour = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = load("[fields.x]\ntype = \"integer\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown type `integer`"), "{err}");
    }

    #[test]
    fn dangling_references_are_named() {
        let err = load(
            r#"
[environments.web]
kind = "frontend"
fields = ["nope"]
[events."a.b"]
[[events."a.b".versions]]
version = 2
environments = ["mars"]
required = ["ghost"]
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("environment \"web\": common field \"nope\" is not defined"),
            "{err}"
        );
        assert!(
            err.contains("event \"a.b\" version 2: versions must be numbered"),
            "{err}"
        );
        assert!(err.contains("environment \"mars\" is not defined"), "{err}");
        assert!(
            err.contains("event \"a.b\" version 2 field \"ghost\": is not defined"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_definitions_across_files() {
        let a = "[fields.x]\ntype = \"int\"\n".to_string();
        let err = Catalog::from_files(vec![(PathBuf::from("a.toml"), a.clone()), (PathBuf::from("b.toml"), a)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.toml: field \"x\": is already defined in a.toml"),
            "{err}"
        );
    }

    #[test]
    fn field_names_that_clash_with_parquet_columns_are_refused() {
        for (name, says) in [
            ("received_at", "envelope"),
            ("context_ip", "context_"),
            ("hour", "partition"),
        ] {
            let text = format!("[fields.{name}]\ntype = \"string\"\n");
            let e = Catalog::from_files(vec![(PathBuf::from("fields.toml"), text)])
                .err()
                .unwrap_or_else(|| panic!("{name} accepted"))
                .to_string();
            assert!(e.contains("fields.toml") && e.contains(name) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn columns_mark_required_and_common_fields() {
        let c = Catalog::demo();
        let cols = c.columns("item.viewed", 1);
        let item = cols.iter().find(|c| c.name == "item_id").unwrap();
        assert!(item.required);
        assert!(cols.iter().any(|c| c.name == "session_id" && !c.required));
    }
}
