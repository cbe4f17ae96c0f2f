//! Cross-checks of a merged catalog: names, references between events, fields and
//! environments, versions, reserved column names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::columns::RESERVED_COLUMNS;
use super::*;

impl Catalog {
    pub(super) fn cross_check(&self, problems: &mut Vec<Problem>) {
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
}

/// Why `name` cannot be a field name, if it cannot.
pub(super) fn reserved_field_name(name: &str) -> Option<String> {
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

pub(super) fn duplicate(items: &[String]) -> Option<&str> {
    let mut seen = BTreeSet::new();
    items.iter().find(|i| !seen.insert(i.as_str())).map(|s| s.as_str())
}
