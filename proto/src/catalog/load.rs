//! Loading a catalog: files read and merged (a name defined twice is a problem), the
//! revision hashed, the served JSON form, the built-in demo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::{CatalogFile, WireCatalog, WireFile};
use super::*;

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
        let mut catalog = Catalog::empty();
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
            let fields = catalog
                .fields
                .iter()
                .map(|(n, f)| (n.as_str(), std::sync::Arc::new(f.clone())))
                .collect();
            for def in catalog.events.values_mut() {
                for v in &mut def.versions {
                    v.index(&fields);
                }
            }
            for env in catalog.environments.values_mut() {
                env.index(&fields);
            }
            Ok(catalog)
        } else {
            Err(CatalogError { problems })
        }
    }
}

pub(super) fn merge<T>(
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
