//! The append-only rule: a created version, environment or field is never edited or
//! deleted; a change is a new version beside the old one.
//!
//! [`compatible`] compares a catalog with its previous revision and names every edit
//! that breaks the rule, with the file, event, version and field. Descriptions, owners,
//! recipients, `drop` and aliases are not part of the schema and may change freely.

use super::{Catalog, Problem};

/// Every breaking edit from `old` to `new`; empty when `new` only adds.
pub fn compatible(old: &Catalog, new: &Catalog) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |file: &std::path::Path, place: String, message: String| {
        problems.push(Problem {
            file: file.to_path_buf(),
            place,
            message,
        })
    };
    for (name, o) in &old.environments {
        let place = format!("environment {name:?}");
        let Some(n) = new.environments.get(name) else {
            push(
                &old.sources.environments[name],
                place,
                "was removed; environments are never deleted".into(),
            );
            continue;
        };
        let file = &new.sources.environments[name];
        if o.kind != n.kind {
            push(
                file,
                place.clone(),
                format!(
                    "kind changed from {:?} to {:?}; environments are never edited",
                    o.kind, n.kind
                ),
            );
        }
        for f in &o.fields {
            if !n.fields.contains(f) {
                push(file, format!("{place} field {f:?}"), "common field was removed".into());
            }
        }
        for f in &n.fields {
            if !o.fields.contains(f) {
                push(
                    file,
                    format!("{place} field {f:?}"),
                    "common field was added to an existing environment (it would make old events invalid)".into(),
                );
            }
        }
    }
    for (name, o) in &old.fields {
        let place = format!("field {name:?}");
        let Some(n) = new.fields.get(name) else {
            push(
                &old.sources.fields[name],
                place,
                "was removed; fields are never deleted".into(),
            );
            continue;
        };
        let file = &new.sources.fields[name];
        if o.ty != n.ty {
            push(
                file,
                place.clone(),
                format!("type changed from {} to {}; add a new field instead", o.ty, n.ty),
            );
        }
        if o.enum_values != n.enum_values {
            push(file, place.clone(), "enum changed; add a new field instead".into());
        }
        if o.max_length != n.max_length {
            push(
                file,
                place.clone(),
                format!(
                    "max_length changed from {:?} to {:?}; add a new field instead",
                    o.max_length, n.max_length
                ),
            );
        }
    }
    for (name, o) in &old.events {
        let place = format!("event {name:?}");
        let Some(n) = new.events.get(name) else {
            push(
                &old.sources.events[name],
                place,
                "was removed; events are never deleted (set drop = true to stop collecting it)".into(),
            );
            continue;
        };
        let file = &new.sources.events[name];
        for ov in &o.versions {
            let vplace = format!("{place} version {}", ov.version);
            let Some(nv) = n.version(ov.version) else {
                push(file, vplace, "was removed; versions are never deleted".into());
                continue;
            };
            for env in &ov.environments {
                if !nv.environments.contains(env) {
                    push(
                        file,
                        format!("{vplace} environment {env:?}"),
                        "was removed from an existing version; add a new version instead".into(),
                    );
                }
            }
            for env in &nv.environments {
                if !ov.environments.contains(env) {
                    push(
                        file,
                        format!("{vplace} environment {env:?}"),
                        "was added to an existing version; add a new version instead".into(),
                    );
                }
            }
            for (list, other, what) in [
                (&ov.required, &nv.required, "required"),
                (&ov.optional, &nv.optional, "optional"),
            ] {
                for f in list {
                    if !other.contains(f) {
                        let now = if nv.required.contains(f) {
                            "became required".to_string()
                        } else if nv.optional.contains(f) {
                            "became optional".to_string()
                        } else {
                            format!("{what} field was removed")
                        };
                        push(
                            file,
                            format!("{vplace} field {f:?}"),
                            format!("{now}; versions are never edited, add a new version instead"),
                        );
                    }
                }
            }
            for f in nv.required.iter().chain(&nv.optional) {
                if !ov.required.contains(f) && !ov.optional.contains(f) {
                    push(
                        file,
                        format!("{vplace} field {f:?}"),
                        "was added to an existing version; add a new version instead".into(),
                    );
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::DEMO_FILES;
    use std::path::PathBuf;

    fn demo_with(edit: impl Fn(&str, String) -> String) -> Catalog {
        let files = DEMO_FILES
            .iter()
            .map(|(n, t)| (PathBuf::from(n), edit(n, t.to_string())))
            .collect();
        Catalog::from_files(files).unwrap()
    }

    #[test]
    fn same_catalog_and_added_version_pass() {
        let old = Catalog::demo();
        assert!(compatible(&old, &old).is_empty());
        let new = demo_with(|n, t| {
            if n == "events.toml" {
                t + "\n[[events.\"page.viewed\".versions]]\nversion = 2\nenvironments = [\"web\", \"ios\"]\nrequired = [\"url\", \"title\"]\n"
            } else {
                t
            }
        });
        assert!(compatible(&old, &new).is_empty());
    }

    #[test]
    fn each_breaking_edit_is_named() {
        let old = Catalog::demo();
        let cases: Vec<(&str, &str, &str, &str)> = vec![
            (
                "fields.toml",
                "[fields.item_id]\ntype = \"int\"",
                "[fields.item_id]\ntype = \"string\"",
                "fields.toml: field \"item_id\": type changed from int to string",
            ),
            (
                "events.toml",
                "required = [\"item_id\"]\noptional = [\"source\"]",
                "required = [\"item_id\"]\noptional = []",
                "events.toml: event \"item.viewed\" version 1 field \"source\": optional field was removed",
            ),
            (
                "events.toml",
                "required = [\"item_id\"]\noptional = [\"source\"]",
                "required = [\"item_id\", \"source\"]\noptional = []",
                "event \"item.viewed\" version 1 field \"source\": became required",
            ),
            (
                "events.toml",
                "environments = [\"web\", \"ios\"]\nrequired = [\"item_id\"]\n",
                "environments = [\"web\"]\nrequired = [\"item_id\"]\n",
                "event \"item.viewed\" version 1 environment \"ios\": was removed from an existing version",
            ),
            (
                "environments.toml",
                "[environments.ios]\nkind = \"mobile\"",
                "[environments.ios]\nkind = \"backend\"",
                "environment \"ios\": kind changed",
            ),
        ];
        for (file, from, to, want) in cases {
            let new = demo_with(|n, t| if n == file { t.replacen(from, to, 1) } else { t });
            let got: Vec<String> = compatible(&old, &new).iter().map(|p| p.to_string()).collect();
            assert!(got.iter().any(|g| g.contains(want)), "want {want:?} in {got:?}");
        }
    }
}
