//! The config file: TOML, the keys of DESIGN.md, `WEIR_*` environment overrides, and
//! paths derived from the data directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_collector::CollectorConfig;
use weir_loader::LoaderConfig;
use weir_router::config::BufferConfig;
use weir_router::RouterConfig;

/// The whole config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where spool, log, buffers and (by default) the warehouse live.
    pub data_dir: Option<PathBuf>,
    /// The catalog directory (the demo catalog when absent, for `weir up`).
    pub catalog: Option<String>,
    /// `[collector]`.
    pub collector: CollectorConfig,
    /// `[router]`.
    pub router: RouterConfig,
    /// `[loader]`.
    pub loader: LoaderConfig,
    /// `[proxy]`.
    pub proxy: weir_collector::proxy::ProxyConfig,
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's message: the line, the key, what was expected.
        message: String,
    },
    /// An environment override is not a config key or has a wrong value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

/// Replaces `${NAME}` in the config text with the environment variable `NAME`
/// (`${NAME:-default}` when it may be unset; `$$` is a literal `$`), as Vector does, so
/// secrets (recipient URLs with passwords) come from the environment (a Kubernetes
/// Secret) and never sit in the file. Comment lines are left alone. The error names the
/// line and the variable.
pub fn interpolate(text: &str, env: &[(String, String)]) -> Result<String, String> {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("line {}: `${{` without a closing `}}`", n + 1))?;
                let inner = &r[..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, d)) => (name, Some(d)),
                    None => (inner, None),
                };
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "line {}: `${{{inner}}}` is not an environment variable reference (write $$ for a literal $)",
                        n + 1
                    ));
                }
                let quoting = quoting(&line[..line.len() - rest.len() + i]);
                let value = match (lookup(name), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d,
                    (None, None) => {
                        return Err(format!(
                            "line {}: environment variable {name} is not set (referenced as ${{{name}}}; use ${{{name}:-default}} for an optional one)",
                            n + 1
                        ))
                    }
                };
                // A value is data, never TOML: escaped inside "...", refused where it
                // cannot be represented. The error names the variable, not the value.
                match quoting {
                    Quoting::Basic => escape_basic(value, &mut out),
                    Quoting::Literal if value.contains('\'') || value.contains('\n') => {
                        return Err(format!(
                            "line {}: the value of {name} contains a quote or a newline, which a '...' string cannot hold; write \"${{{name}}}\" instead",
                            n + 1
                        ))
                    }
                    _ => out.push_str(value),
                }
                rest = &r[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Where on a TOML line a `${VAR}` stands.
enum Quoting {
    /// Outside any string (a number, a boolean: the value is used as written).
    Bare,
    /// Inside `"..."`.
    Basic,
    /// Inside `'...'`.
    Literal,
}

/// Whether the end of `before` (the line up to a `$`) is inside a string.
fn quoting(before: &str) -> Quoting {
    let mut state = Quoting::Bare;
    let mut chars = before.chars();
    while let Some(c) = chars.next() {
        state = match (state, c) {
            (Quoting::Bare, '"') => Quoting::Basic,
            (Quoting::Bare, '\'') => Quoting::Literal,
            (Quoting::Bare, '#') => return Quoting::Bare,
            (Quoting::Basic, '\\') => {
                chars.next();
                Quoting::Basic
            }
            (Quoting::Basic, '"') | (Quoting::Literal, '\'') => Quoting::Bare,
            (s, _) => s,
        };
    }
    state
}

/// Appends `value` escaped for a TOML basic string.
fn escape_basic(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Whether a `catalog` value is a router's URL (collectors and proxies pull it) rather
/// than a directory.
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Variables starting with `WEIR_` that are not config keys.
const RESERVED_ENV: &[&str] = &["WEIR_LOG", "WEIR_BENCH_PINNED"];
const SECTIONS: &[&str] = &["collector", "router", "loader", "proxy"];

impl Config {
    /// Reads `path` (or the defaults when `None`) and applies `WEIR_*` variables from
    /// `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let (label, text) = match path {
            Some(p) => (
                p.to_path_buf(),
                std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
                    path: p.to_path_buf(),
                    error,
                })?,
            ),
            None => (PathBuf::from("<defaults>"), String::new()),
        };
        let raw = text;
        let text = interpolate(&raw, &env).map_err(|message| ConfigError::Invalid {
            path: label.clone(),
            message,
        })?;
        // After interpolation a TOML error would quote the line, secrets and all: then
        // it names the line and column only.
        let interpolated = text != raw;
        let invalid = |e: toml::de::Error| ConfigError::Invalid {
            path: label.clone(),
            message: match (interpolated, e.span()) {
                (true, Some(span)) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {col}: {}", e.message())
                }
                (true, None) => e.message().to_string(),
                (false, _) => e.to_string().trim_end().to_string(),
            },
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(invalid)?;
        // Refuse unknown keys in the file before any override is applied, so the error
        // names the file.
        let _: Config = toml::from_str(&text).map_err(invalid)?;
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("WEIR_") && !RESERVED_ENV.contains(&k.as_str()))
            .collect();
        overrides.sort();
        for (var, value) in &overrides {
            let key = var["WEIR_".len()..].to_ascii_lowercase();
            let (section, name) = match SECTIONS.iter().find(|s| key.starts_with(&format!("{s}_"))) {
                Some(s) => (Some(*s), key[s.len() + 1..].to_string()),
                None => (None, key.clone()),
            };
            let default = match section {
                Some(s) => defaults.get(s).and_then(|t| t.as_table()).and_then(|t| t.get(&name)),
                None => defaults.get(&name),
            };
            let parsed = match default {
                Some(toml::Value::String(_)) | None => toml::Value::String(value.clone()),
                Some(_) => toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(value.clone())),
            };
            let target = match section {
                Some(s) => table
                    .entry(s)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| ConfigError::Env {
                        var: var.clone(),
                        message: format!("[{s}] is not a table"),
                    })?,
                None => &mut table,
            };
            target.insert(name.clone(), parsed);
            let check: Result<Config, _> = toml::Value::Table(table.clone()).try_into();
            if let Err(e) = check {
                let msg = e.to_string();
                let msg = msg.trim_end();
                let message = if msg.contains("unknown field") {
                    format!(
                        "`{}` is not a config key ({msg})",
                        section.map_or(name.clone(), |s| format!("{s}.{name}"))
                    )
                } else {
                    msg.to_string()
                };
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message,
                });
            }
        }
        let collector = table.get("collector").and_then(|c| c.as_table());
        if collector.is_some_and(|c| c.contains_key("routers") && c.contains_key("kafka")) {
            return Err(ConfigError::Invalid {
                path: label.clone(),
                message: "collector.routers and collector.kafka are both set: a collector forwards either to routers (HTTP mode) or to Kafka (Kafka mode); remove one".into(),
            });
        }
        let cfg: Config = toml::Value::Table(table).try_into().map_err(invalid)?;
        let invalid_setting = |e: weir_proto::InvalidSetting| ConfigError::Invalid {
            path: label.clone(),
            message: e.to_string(),
        };
        cfg.router.validate().map_err(invalid_setting)?;
        cfg.collector.validate().map_err(invalid_setting)?;
        Ok(cfg)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("weir-data"))
    }

    /// The collector config with its socket paths resolved against the data directory
    /// (an empty path disables a socket).
    pub fn collector(&self) -> CollectorConfig {
        let mut c = self.collector.clone();
        c.socket.get_or_insert_with(|| self.data_dir().join("collector.sock"));
        c.datagram
            .get_or_insert_with(|| self.data_dir().join("collector.dgram"));
        c.dead_letter_dir
            .get_or_insert_with(|| self.data_dir().join("collector").join("dead-letters"));
        c
    }

    /// The collector's spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.collector
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("collector").join("spool"))
    }

    /// The router's paths.
    pub fn router_paths(&self) -> weir_router::RouterPaths {
        weir_router::RouterPaths {
            catalog_dir: None,
            log_dir: self
                .router
                .log_dir
                .clone()
                .unwrap_or_else(|| self.data_dir().join("router").join("log")),
            buffer_dir: self.buffer_dir(),
            dead_letter_dir: self
                .router
                .dead_letter_dir
                .clone()
                .unwrap_or_else(|| self.data_dir().join("router").join("dead-letters")),
        }
    }

    /// The hourly buffer directory (router writes, loader reads). With the MongoDB
    /// buffer, the local mirror the loader exports hours into.
    pub fn buffer_dir(&self) -> PathBuf {
        if let Some(d) = &self.loader.buffer_dir {
            return d.clone();
        }
        match &self.router.buffer {
            BufferConfig::File { dir: Some(d) } => d.clone(),
            BufferConfig::Mongo { .. } => self.data_dir().join("loader").join("mongo-buffer"),
            _ => self.data_dir().join("router").join("buffer"),
        }
    }

    /// The MongoDB buffer, when `router.buffer` is `{ kind = "mongo" }`.
    pub fn mongo_buffer(&self) -> Option<weir_loader::mongo_mirror::MongoSource> {
        match &self.router.buffer {
            BufferConfig::Mongo { url, db } => Some(weir_loader::mongo_mirror::MongoSource {
                url: url.clone(),
                db: db.clone(),
            }),
            BufferConfig::File { .. } => None,
        }
    }

    /// Where Parquet lands.
    pub fn warehouse(&self) -> PathBuf {
        self.loader
            .warehouse
            .clone()
            .unwrap_or_else(|| self.data_dir().join("warehouse"))
    }
}

/// A complete, commented config with every default (`weir config example`): the file
/// `src/example.toml`, which a test checks key by key against the config structs.
pub const EXAMPLE: &str = include_str!("example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weir.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    proptest::proptest! {
        /// Any config text: no panic, and text without `$` comes back unchanged.
        #[test]
        fn interpolation_never_panics(text in "\\PC{0,200}", dollar_heavy in "[${}:A-Z_a-z0-9 \n#-]{0,80}") {
            let env = vec![("A".to_string(), "x".to_string()), ("B_1".to_string(), "${A}".to_string())];
            for t in [&text, &dollar_heavy] {
                let out = interpolate(t, &env);
                if !t.contains('$') {
                    proptest::prop_assert_eq!(out.as_deref(), Ok(t.as_str()));
                }
            }
        }
    }

    #[test]
    fn interpolated_values_are_data_and_errors_do_not_echo_them() {
        let env = |v: &str| vec![("SECRET".to_string(), v.to_string())];
        // A value with a quote stays one string: it cannot add keys.
        let text = "[router]\ntoken = \"${SECRET}\"\n";
        let evil = "x\"\nretention_days = 0\n#";
        let out = interpolate(text, &env(evil)).unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["router"]["token"].as_str(), Some(evil));
        assert!(interpolate("t = '${SECRET}'\n", &env("it's"))
            .unwrap_err()
            .contains("SECRET"));
        assert_eq!(interpolate("n = ${SECRET}\n", &env("5")).unwrap(), "n = 5\n");
        // A TOML error on an interpolated file names the line, never the secret.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("weir.toml");
        std::fs::write(&path, "[router]\nretention_days = ${SECRET}\n").unwrap();
        let e = Config::load(Some(&path), env("hunter2-password"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn environment_references_are_replaced_and_missing_ones_named() {
        let env = vec![("AMQP_URL".to_string(), "amqp://u:p@mq:5672/%2f".to_string())];
        let text = "# ${NOT_EXPANDED}\nurl = \"${AMQP_URL}\"\nx = \"${UNSET:-fallback} $$5 $HOME\"\n";
        assert_eq!(
            interpolate(text, &env).unwrap(),
            "# ${NOT_EXPANDED}\nurl = \"amqp://u:p@mq:5672/%2f\"\nx = \"fallback $5 $HOME\"\n"
        );
        let e = interpolate("a = 1\nurl = \"${MISSING_URL}\"\n", &env).unwrap_err();
        assert!(e.contains("line 2") && e.contains("MISSING_URL"), "{e}");
        assert!(interpolate("x = \"${bad name}\"", &env).unwrap_err().contains("$$"));
        assert!(interpolate("x = \"${OPEN", &env).unwrap_err().contains("closing"));
    }

    #[test]
    fn example_parses_to_the_defaults() {
        let (_d, p) = write(EXAMPLE);
        let c = Config::load(Some(&p), []).unwrap();
        let d = Config::default();
        assert_eq!(
            toml::to_string(&c.collector).unwrap(),
            toml::to_string(&d.collector).unwrap()
        );
        assert_eq!(toml::to_string(&c.router).unwrap(), toml::to_string(&d.router).unwrap());
        assert_eq!(toml::to_string(&c.loader).unwrap(), toml::to_string(&d.loader).unwrap());
        assert_eq!(toml::to_string(&c.proxy).unwrap(), toml::to_string(&d.proxy).unwrap());
    }

    /// Every key path of a TOML table that holds a value (`router.retention_days`).
    fn key_paths(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) => key_paths(v, &path, out),
                    _ => out.push(path),
                }
            }
        }
    }

    #[test]
    fn the_example_names_every_key_that_has_a_default() {
        let example: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        key_paths(&defaults, "", &mut want);
        key_paths(&example, "", &mut have);
        let missing: Vec<&String> = want.iter().filter(|k| !have.contains(k)).collect();
        assert!(missing.is_empty(), "keys missing from src/example.toml: {missing:?}");
        // The other way round (a key the structs do not have) is refused by the parse in
        // `example_parses_to_the_defaults`: every section denies unknown fields.
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let (_d, p) = write("[collector]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n");
        let err = Config::load(Some(&p), []).unwrap_err().to_string();
        assert!(err.starts_with(&p.display().to_string()), "{err}");
        assert!(err.contains("unknown field `listne`"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let (_d, p) = write("[collector]\nspool_max_bytes = \"big\"\n");
        let err = Config::load(Some(&p), []).unwrap_err().to_string();
        assert!(err.contains("spool_max_bytes") || err.contains("line 2"), "{err}");
        let (_d, p) = write("[router.recipients.q]\nkind = \"carrier-pigeon\"\n");
        let err = Config::load(Some(&p), []).unwrap_err().to_string();
        assert!(err.contains("carrier-pigeon"), "{err}");
        let (_d, p) = write("[router.recipients.s]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ntopic = \"w.{evnt}\"\n");
        let err = Config::load(Some(&p), []).unwrap_err().to_string();
        assert!(err.starts_with(&p.display().to_string()), "{err}");
        assert!(
            err.contains("router.recipients.s.topic") && err.contains("{evnt}"),
            "{err}"
        );
        let (_d, p) = write("[router.recipients.m]\nkind = \"mongo\"\nurl = \"mongodb://x\"\n");
        let err = Config::load(Some(&p), []).unwrap_err().to_string();
        assert!(err.contains("missing field `db`"), "{err}");
    }

    #[test]
    fn environment_overrides() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = Config::load(
            None,
            env(&[
                ("WEIR_COLLECTOR_LISTEN", "127.0.0.1:9999"),
                ("WEIR_ROUTER_RETENTION_DAYS", "7"),
                ("WEIR_DATA_DIR", "/tmp/x"),
                ("WEIR_COLLECTOR_NAME", "123"),
                ("WEIR_COLLECTOR_ROUTERS", "[\"http://a\", \"http://b\"]"),
                ("WEIR_LOG", "debug"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.collector.listen, "127.0.0.1:9999");
        assert_eq!(c.router.retention_days, 7);
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(c.collector.name.as_deref(), Some("123"));
        assert_eq!(c.collector.routers, vec!["http://a", "http://b"]);
        let err = Config::load(None, env(&[("WEIR_COLLECTOR_LISTNE", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable WEIR_COLLECTOR_LISTNE: `collector.listne` is not a config key"),
            "{err}"
        );
        let err = Config::load(None, env(&[("WEIR_ROUTER_RETENTION_DAYS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable WEIR_ROUTER_RETENTION_DAYS"),
            "{err}"
        );
    }

    #[test]
    fn paths_derive_from_data_dir() {
        let c = Config {
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        assert_eq!(c.spool_dir(), PathBuf::from("/d/collector/spool"));
        assert_eq!(c.warehouse(), PathBuf::from("/d/warehouse"));
        assert_eq!(c.router_paths().buffer_dir, PathBuf::from("/d/router/buffer"));
        assert_eq!(c.buffer_dir(), PathBuf::from("/d/router/buffer"));
    }
}
