//! The warehouse columns of an event version (what the loader's Parquet schema is
//! built from).

use super::*;

impl Catalog {
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
pub(super) const RESERVED_COLUMNS: &[&str] = &[
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
