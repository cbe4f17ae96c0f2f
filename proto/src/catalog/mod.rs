//! The event catalog ("reference book"): environments, typed fields and append-only
//! event versions, read from a directory of TOML files that are merged.
//!
//! [`Catalog::load_dir`] parses and cross-checks a catalog; [`Catalog::validate`]
//! checks one event against it; [`check::compatible`] refuses edits that would break
//! the append-only rule.

pub mod check;
mod columns;
mod cross_check;
mod demo;
pub mod docs;
mod error;
mod load;
mod model;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub use columns::Column;
pub use demo::{demo_body, DEMO_FILES};
pub use error::{CatalogError, Problem};
pub use model::*;
pub use validate::Checked;

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
    /// Every recipient an event names that `defined` does not have, as one message each
    /// naming the file, the event and the name (with the closest defined name). Such an
    /// event's deliveries would silently go nowhere, so a router refuses the catalog.
    pub fn unknown_recipients<'a>(&self, defined: impl IntoIterator<Item = &'a str> + Clone) -> Vec<String> {
        let mut out = Vec::new();
        for (event, def) in &self.events {
            for r in &def.recipients {
                if defined.clone().into_iter().any(|d| d == r) {
                    continue;
                }
                let file = self
                    .sources
                    .events
                    .get(event)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the catalog".into());
                let names: Vec<&str> = defined.clone().into_iter().collect();
                let hint = match crate::text::closest(r, names.iter().copied()) {
                    Some(c) => format!("; did you mean {c:?}?"),
                    None if names.is_empty() => "; the config defines no recipients".to_string(),
                    None => format!("; defined: {}", names.join(", ")),
                };
                out.push(format!(
                    "{file}: event {event:?} names recipient {r:?}, which [router.recipients] does not define{hint}"
                ));
            }
        }
        out
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
