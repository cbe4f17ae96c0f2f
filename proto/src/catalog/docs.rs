//! The catalog for people and other tools: [`diff`] between two revisions,
//! [`changelog`] (markdown: every event and how each version differs from the one
//! before), and [`json_schemas`] (one JSON Schema per event version, for the event as
//! sent). All output is deterministic: the same catalog gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::{Catalog, EnumValue, EventDef, FieldDef, FieldType, Scalar, VersionDef};

/// One difference between two catalog revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub sign: char,
    /// What: `environment "web"`, `field "item_id"`, `event "item.viewed"`,
    /// `event "item.viewed" version 2`.
    pub subject: String,
    /// How, in words.
    pub detail: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{} {}", self.sign, self.subject)
        } else {
            write!(f, "{} {}: {}", self.sign, self.subject, self.detail)
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Describes a field definition in one line: `int`, `string, max 32, one of "a", "b"`.
pub fn describe_field(def: &FieldDef) -> String {
    let mut s = def.ty.to_string();
    if let Some(n) = def.max_length {
        let _ = write!(s, ", max {n}");
    }
    if let Some(values) = &def.enum_values {
        let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let _ = write!(s, ", one of {}", v.join(", "));
    }
    s
}

/// `a -> b`, or `description` when only descriptions differ (the one-line forms match).
fn before_after(a: String, b: String) -> String {
    if a != b {
        format!("{a} -> {b}")
    } else {
        "description".into()
    }
}

fn describe_version(v: &VersionDef) -> String {
    format!(
        "environments {}; required {}; optional {}",
        list(&v.environments),
        list(&v.required),
        list(&v.optional)
    )
}

/// Every difference from `old` to `new`, in a stable order: environments, fields, events.
pub fn diff(old: &Catalog, new: &Catalog) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |sign, subject: String, detail: String| out.push(Change { sign, subject, detail });
    let env_names: BTreeSet<&String> = old.environments.keys().chain(new.environments.keys()).collect();
    for name in env_names {
        let subject = format!("environment {name:?}");
        match (old.environments.get(name), new.environments.get(name)) {
            (None, Some(n)) => push(
                '+',
                subject,
                format!("{:?}, common fields {}", n.kind, list(&n.fields)).to_lowercase(),
            ),
            (Some(_), None) => push('-', subject, String::new()),
            (Some(o), Some(n)) if o != n => {
                let mut what = Vec::new();
                if o.kind != n.kind {
                    what.push(format!("kind {:?} -> {:?}", o.kind, n.kind).to_lowercase());
                }
                if o.fields != n.fields {
                    what.push(format!("common fields {} -> {}", list(&o.fields), list(&n.fields)));
                }
                if o.description != n.description {
                    what.push("description".into());
                }
                push('~', subject, what.join("; "));
            }
            _ => {}
        }
    }
    let field_names: BTreeSet<&String> = old.fields.keys().chain(new.fields.keys()).collect();
    for name in field_names {
        let subject = format!("field {name:?}");
        match (old.fields.get(name), new.fields.get(name)) {
            (None, Some(n)) => push('+', subject, describe_field(n)),
            (Some(_), None) => push('-', subject, String::new()),
            (Some(o), Some(n)) if o != n => {
                let (a, b) = (describe_field(o), describe_field(n));
                push('~', subject, before_after(a, b));
            }
            _ => {}
        }
    }
    let event_names: BTreeSet<&String> = old.events.keys().chain(new.events.keys()).collect();
    for name in event_names {
        let subject = format!("event {name:?}");
        match (old.events.get(name), new.events.get(name)) {
            (None, Some(n)) => {
                push(
                    '+',
                    subject,
                    format!("owner {}", if n.owner.is_empty() { "none" } else { &n.owner }),
                );
                for v in &n.versions {
                    push(
                        '+',
                        format!("event {name:?} version {}", v.version),
                        describe_version(v),
                    );
                }
            }
            (Some(_), None) => push('-', subject, String::new()),
            (Some(o), Some(n)) => {
                let mut what = Vec::new();
                if o.owner != n.owner {
                    what.push(format!("owner {} -> {}", o.owner, n.owner));
                }
                if o.recipients != n.recipients {
                    what.push(format!("recipients {} -> {}", list(&o.recipients), list(&n.recipients)));
                }
                if o.drop != n.drop {
                    what.push(
                        if n.drop {
                            "dropped (drop = true)"
                        } else {
                            "no longer dropped"
                        }
                        .into(),
                    );
                }
                if o.aliases != n.aliases {
                    what.push(format!("aliases {} -> {}", list(&o.aliases), list(&n.aliases)));
                }
                if o.description != n.description {
                    what.push("description".into());
                }
                if !what.is_empty() {
                    push('~', subject, what.join("; "));
                }
                let versions: BTreeSet<u32> = o.versions.iter().chain(&n.versions).map(|v| v.version).collect();
                for v in versions {
                    let subject = format!("event {name:?} version {v}");
                    match (o.version(v), n.version(v)) {
                        (None, Some(nv)) => push('+', subject, describe_version(nv)),
                        (Some(_), None) => push('-', subject, String::new()),
                        (Some(ov), Some(nv)) if ov != nv => {
                            let (a, b) = (describe_version(ov), describe_version(nv));
                            push('~', subject, before_after(a, b));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// How `v` differs from `prev` (the version before it), in words.
fn version_changes(prev: &VersionDef, v: &VersionDef) -> Vec<String> {
    let set = |x: &[String]| x.iter().cloned().collect::<BTreeSet<String>>();
    let fields = |x: &VersionDef| {
        set(&x.required)
            .union(&set(&x.optional))
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let mut out = Vec::new();
    let (pf, vf) = (fields(prev), fields(v));
    let added: Vec<String> = vf.difference(&pf).cloned().collect();
    let removed: Vec<String> = pf.difference(&vf).cloned().collect();
    if !added.is_empty() {
        out.push(format!("adds {}", added.join(", ")));
    }
    if !removed.is_empty() {
        out.push(format!("drops {}", removed.join(", ")));
    }
    let (pr, vr) = (set(&prev.required), set(&v.required));
    let now_required: Vec<String> = vr.difference(&pr).filter(|f| pf.contains(*f)).cloned().collect();
    let now_optional: Vec<String> = pr.difference(&vr).filter(|f| vf.contains(*f)).cloned().collect();
    if !now_required.is_empty() {
        out.push(format!("makes {} required", now_required.join(", ")));
    }
    if !now_optional.is_empty() {
        out.push(format!("makes {} optional", now_optional.join(", ")));
    }
    let (pe, ve) = (set(&prev.environments), set(&v.environments));
    let env_added: Vec<String> = ve.difference(&pe).cloned().collect();
    let env_removed: Vec<String> = pe.difference(&ve).cloned().collect();
    if !env_added.is_empty() {
        out.push(format!("new environments {}", env_added.join(", ")));
    }
    if !env_removed.is_empty() {
        out.push(format!("no longer from {}", env_removed.join(", ")));
    }
    out
}

fn event_header(out: &mut String, name: &str, def: &EventDef) {
    let _ = writeln!(out, "## `{name}`\n");
    if !def.description.is_empty() {
        let _ = writeln!(out, "{}\n", def.description);
    }
    let mut facts = vec![format!(
        "owner: {}",
        if def.owner.is_empty() { "none" } else { &def.owner }
    )];
    if !def.recipients.is_empty() {
        facts.push(format!("recipients: {}", def.recipients.join(", ")));
    }
    if !def.aliases.is_empty() {
        facts.push(format!("aliases: {}", def.aliases.join(", ")));
    }
    if def.drop {
        facts.push("**dropped** (`drop = true`: collectors discard it)".into());
    }
    let _ = writeln!(out, "{}\n", facts.join(" · "));
}

/// A markdown changelog of the catalog: per event, each version with what it changed
/// from the version before (fields added or dropped, fields made required or optional,
/// environments) and its description; then the environments and fields.
pub fn changelog(catalog: &Catalog) -> String {
    let mut out = String::from("# Event catalog\n\n");
    if !catalog.revision.is_empty() {
        let _ = writeln!(out, "Revision `{}`.\n", catalog.revision);
    }
    for (name, def) in &catalog.events {
        event_header(&mut out, name, def);
        let mut prev: Option<&VersionDef> = None;
        for v in &def.versions {
            let changes = match prev {
                None => format!(
                    "first version: required {}; optional {}",
                    list(&v.required),
                    list(&v.optional)
                ),
                Some(p) => {
                    let c = version_changes(p, v);
                    if c.is_empty() {
                        "same fields and environments as the version before".into()
                    } else {
                        c.join("; ")
                    }
                }
            };
            let _ = writeln!(
                out,
                "- **v{}** ({}): {changes}.{}",
                v.version,
                v.environments.join(", "),
                if v.description.is_empty() {
                    String::new()
                } else {
                    format!(" {}", v.description)
                }
            );
            prev = Some(v);
        }
        out.push('\n');
    }
    out.push_str("## Environments\n\n");
    for (name, env) in &catalog.environments {
        let _ = writeln!(
            out,
            "- `{name}` ({}): common fields {}.{}",
            format!("{:?}", env.kind).to_lowercase(),
            list(&env.fields),
            if env.description.is_empty() {
                String::new()
            } else {
                format!(" {}", env.description)
            }
        );
    }
    out.push_str("\n## Fields\n\n");
    for (name, def) in &catalog.fields {
        let _ = writeln!(
            out,
            "- `{name}`: {}.{}",
            describe_field(def),
            if def.description.is_empty() {
                String::new()
            } else {
                format!(" {}", def.description)
            }
        );
    }
    out
}

fn scalar_schema(s: Scalar) -> Value {
    match s {
        Scalar::String => json!({"type": "string"}),
        Scalar::Int => json!({"type": "integer"}),
        Scalar::Float => json!({"type": "number"}),
        Scalar::Bool => json!({"type": "boolean"}),
        Scalar::Timestamp => json!({"oneOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "description": "microseconds since the Unix epoch"}
        ]}),
    }
}

/// The JSON Schema of one field's value.
pub fn field_schema(def: &FieldDef) -> Value {
    let mut s = match def.ty {
        FieldType::Scalar(sc) => scalar_schema(sc),
        FieldType::Array(sc) => json!({"type": "array", "items": scalar_schema(sc)}),
    };
    if let Value::Object(m) = &mut s {
        if !def.description.is_empty() {
            m.insert("description".into(), def.description.clone().into());
        }
        if let Some(n) = def.max_length {
            let key = match def.ty {
                FieldType::Array(_) => "maxItems",
                FieldType::Scalar(_) => "maxLength",
            };
            m.insert(key.into(), n.into());
        }
        if let Some(values) = &def.enum_values {
            let vals: Vec<Value> = values
                .iter()
                .map(|v| match v {
                    EnumValue::Int(i) => Value::from(*i),
                    EnumValue::Str(s) => Value::from(s.clone()),
                })
                .collect();
            match def.ty {
                FieldType::Array(_) => {
                    if let Some(Value::Object(items)) = m.get_mut("items") {
                        items.insert("enum".into(), vals.into());
                    }
                }
                FieldType::Scalar(_) => {
                    m.insert("enum".into(), vals.into());
                }
            }
        }
    }
    s
}

/// One JSON Schema (draft 2020-12) per event version, keyed `<event>/v<version>`: the
/// event as a sender posts it to a collector (`event`, `version`, `env`, `id`, `ts`,
/// `fields`), with `fields` closed to the version's fields and the common fields of its
/// environments.
pub fn json_schemas(catalog: &Catalog) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (name, def) in &catalog.events {
        for v in &def.versions {
            let columns = catalog.columns(name, v.version);
            let mut props = Map::new();
            let mut required = Vec::new();
            for c in &columns {
                props.insert(c.name.to_string(), field_schema(c.def));
                if c.required {
                    required.push(Value::from(c.name));
                }
            }
            let mut description = def.description.clone();
            if !v.description.is_empty() {
                if !description.is_empty() {
                    description.push_str(" — ");
                }
                description.push_str(&v.description);
            }
            let schema = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": format!("weir:{name}/v{}", v.version),
                "title": format!("{name} v{}", v.version),
                "description": description,
                "type": "object",
                "required": ["event", "env", "fields"],
                "additionalProperties": false,
                "properties": {
                    "event": {"const": name},
                    "version": {"const": v.version},
                    "env": {"enum": v.environments},
                    "id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "ts": scalar_schema(Scalar::Timestamp),
                    "fields": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": required,
                        "properties": props
                    }
                }
            });
            out.insert(format!("{name}/v{}", v.version), schema);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Catalog {
        Catalog::from_files(files.iter().map(|(n, t)| (n.into(), t.to_string())).collect()).unwrap()
    }

    const BASE: &str = r#"
[environments.web]
kind = "frontend"
fields = ["session_id"]

[fields.session_id]
type = "string"

[fields.item_id]
type = "int"
description = "listing id"

[fields.source]
type = "string"
enum = ["search", "feed"]

[events."item.viewed"]
owner = "search"
description = "a listing was shown"

[[events."item.viewed".versions]]
version = 1
environments = ["web"]
required = ["item_id"]
"#;

    #[test]
    fn diff_lists_exactly_the_changes() {
        let old = load(&[("a.toml", BASE)]);
        let new_text = BASE.replace("owner = \"search\"", "owner = \"discovery\"\nrecipients = [\"models\"]")
            + r#"
[[events."item.viewed".versions]]
version = 2
environments = ["web"]
required = ["item_id"]
optional = ["source"]
description = "adds where it was shown from"

[environments.ios]
kind = "mobile"

[fields.price]
type = "float"
"#;
        let new = load(&[("a.toml", &new_text)]);
        let lines: Vec<String> = diff(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "+ environment \"ios\": mobile, common fields none",
                "+ field \"price\": float",
                "~ event \"item.viewed\": owner search -> discovery; recipients none -> models",
                "+ event \"item.viewed\" version 2: environments web; required item_id; optional source",
            ]
        );
        assert!(diff(&new, &new).is_empty());
        let back: Vec<String> = diff(&new, &old).iter().map(|c| c.to_string()).collect();
        assert!(
            back.contains(&"- event \"item.viewed\" version 2".to_string()),
            "{back:?}"
        );
    }

    #[test]
    fn changelog_says_what_each_version_changed() {
        let text = BASE.to_string()
            + r#"
[[events."item.viewed".versions]]
version = 2
environments = ["web"]
required = ["item_id", "source"]
description = "source is known now"
"#;
        let c = load(&[("a.toml", &text)]);
        let md = changelog(&c);
        assert!(md.contains("## `item.viewed`"), "{md}");
        assert!(
            md.contains("- **v1** (web): first version: required item_id; optional none."),
            "{md}"
        );
        assert!(md.contains("- **v2** (web): adds source. source is known now"), "{md}");
        assert!(md.contains("- `source`: string, one of \"search\", \"feed\"."), "{md}");
        assert_eq!(md, changelog(&c), "deterministic");
    }

    #[test]
    fn json_schema_per_version_closes_fields_and_requires_common_ones() {
        let c = load(&[("a.toml", BASE)]);
        let schemas = json_schemas(&c);
        let s = &schemas["item.viewed/v1"];
        assert_eq!(s["properties"]["event"]["const"], "item.viewed");
        assert_eq!(s["properties"]["env"]["enum"], json!(["web"]));
        let fields = &s["properties"]["fields"];
        assert_eq!(fields["additionalProperties"], false);
        assert_eq!(fields["required"], json!(["item_id", "session_id"]));
        assert_eq!(fields["properties"]["item_id"]["type"], "integer");
        assert_eq!(fields["properties"]["item_id"]["description"], "listing id");
        let again = serde_json::to_string(&json_schemas(&c)).unwrap();
        assert_eq!(serde_json::to_string(&schemas).unwrap(), again);
    }
}
