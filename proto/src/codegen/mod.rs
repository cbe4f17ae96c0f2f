//! `weir codegen`: a typed client library ("langpack") per environment, generated from
//! the catalog. Each langpack holds a class or struct per event version the environment
//! may send, whose constructor enforces required fields and types at the client, and a
//! small sender (HTTP to a collector with batching, retry with backoff and a drop
//! counter; the unix datagram socket where the language has one). Output is
//! deterministic: the same catalog and options give the same bytes.
//!
//! Versions are `0.<CODEGEN_VERSION>.<catalog revision as a number>`: a project pins the
//! langpack of one catalog revision, and a codegen change moves the minor number.

pub mod go;
pub mod php;
pub mod python;
pub mod typescript;

use std::path::{Path, PathBuf};

use crate::catalog::{EnumValue, FieldType};
use crate::Catalog;

/// Bumped whenever generated code changes shape.
pub const CODEGEN_VERSION: u32 = 1;

/// One field of a generated event class.
#[derive(Clone, Debug)]
pub struct Field {
    /// Name as in the catalog.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// Must be given (a required field, or a common field of the environment).
    pub required: bool,
    /// For doc comments.
    pub description: String,
    /// Allowed values.
    pub enum_values: Vec<EnumValue>,
    /// Longest string / most elements.
    pub max_length: Option<u64>,
}

/// One event version the environment may send.
#[derive(Clone, Debug)]
pub struct EventVersion {
    /// Event name (`item.viewed`).
    pub event: String,
    /// Version number.
    pub version: u32,
    /// Type name (`ItemViewedV2`).
    pub type_name: String,
    /// Event and version descriptions.
    pub description: String,
    /// Required fields first, then optional ones, each group in catalog order.
    pub fields: Vec<Field>,
}

/// What a langpack is generated from.
pub struct Model {
    /// The environment.
    pub env: String,
    /// Package version (`0.<codegen>.<revision>`).
    pub version: String,
    /// The catalog revision.
    pub revision: String,
    /// Every event version the environment may send, by event name then version.
    pub events: Vec<EventVersion>,
}

/// `item.viewed` v2 -> `ItemViewedV2`.
pub fn type_name(event: &str, version: u32) -> String {
    let mut out = String::new();
    for part in event.split(['.', '_']) {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    format!("{out}V{version}")
}

/// Errors generating a langpack.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The environment is not in the catalog.
    #[error("environment {0:?} is not in the catalog (it has: {1})")]
    UnknownEnv(String, String),
    /// A file could not be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

impl Model {
    /// The model of `env`'s langpack.
    pub fn new(catalog: &Catalog, env: &str) -> Result<Model, CodegenError> {
        let Some(environment) = catalog.environments.get(env) else {
            let known: Vec<&str> = catalog.environments.keys().map(|s| s.as_str()).collect();
            return Err(CodegenError::UnknownEnv(env.to_string(), known.join(", ")));
        };
        let mut events = Vec::new();
        for (name, def) in &catalog.events {
            for v in def.versions.iter().filter(|v| v.environments.iter().any(|e| e == env)) {
                let mut fields: Vec<Field> = catalog
                    .columns(name, v.version)
                    .into_iter()
                    .filter(|c| {
                        v.required.iter().chain(&v.optional).any(|f| f == c.name)
                            || environment.fields.iter().any(|f| f == c.name)
                    })
                    .map(|c| Field {
                        name: c.name.to_string(),
                        ty: c.def.ty,
                        required: v.required.iter().any(|f| f == c.name)
                            || environment.fields.iter().any(|f| f == c.name),
                        description: c.def.description.clone(),
                        enum_values: c.def.enum_values.clone().unwrap_or_default(),
                        max_length: c.def.max_length,
                    })
                    .collect();
                fields.sort_by_key(|f| !f.required);
                let mut description = def.description.clone();
                if !v.description.is_empty() {
                    description = format!("{description} (v{}: {})", v.version, v.description);
                }
                events.push(EventVersion {
                    event: name.clone(),
                    version: v.version,
                    type_name: type_name(name, v.version),
                    description,
                    fields,
                });
            }
        }
        let rev = u64::from_str_radix(&catalog.revision, 16).unwrap_or(0);
        Ok(Model {
            env: env.to_string(),
            version: format!("0.{CODEGEN_VERSION}.{rev}"),
            revision: catalog.revision.clone(),
            events,
        })
    }
}

/// Writes `files` (relative path, contents) under `out`.
pub fn write_files(out: &Path, files: &[(String, String)]) -> Result<(), CodegenError> {
    for (rel, text) in files {
        let path = out.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| CodegenError::Write {
                path: parent.to_path_buf(),
                error,
            })?;
        }
        std::fs::write(&path, text).map_err(|error| CodegenError::Write { path, error })?;
    }
    Ok(())
}

/// `item_id` -> `ItemId`: each run of letters and digits capitalised and joined.
pub fn pascal(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

impl Field {
    /// The allowed values as literals of the target language (`quote` renders a string),
    /// joined by `sep`; `None` when the field has no `enum`.
    pub fn enum_literals(&self, quote: impl Fn(&str) -> String, sep: &str) -> Option<String> {
        if self.enum_values.is_empty() {
            return None;
        }
        let v: Vec<String> = self
            .enum_values
            .iter()
            .map(|e| match e {
                EnumValue::Int(i) => i.to_string(),
                EnumValue::Str(s) => quote(s),
            })
            .collect();
        Some(v.join(sep))
    }
}

/// The languages `weir codegen` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Lang {
    /// A Python package (standard library only).
    Python,
    /// A TypeScript module for browsers and Node.js.
    Typescript,
    /// A Go module.
    Go,
    /// A PHP package.
    Php,
}

/// The files of `lang`'s langpack and its package name.
pub fn generate(lang: Lang, model: &Model) -> (String, Vec<(String, String)>) {
    match lang {
        Lang::Typescript => (typescript::package(&model.env), typescript::generate(model)),
        Lang::Go => (go::module(&model.env), go::generate(model)),
        Lang::Php => (php::package(&model.env), php::generate(model)),
        Lang::Python => (python::package(&model.env), python::generate(model)),
    }
}
