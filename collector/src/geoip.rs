//! Country and region of client addresses, from a MaxMind-format database
//! (`[proxy] geoip = "/path/GeoLite2-City.mmdb"`): GeoIP2 / GeoLite2 City or Country,
//! or any database with the same layout (DB-IP's lite databases).
//!
//! - `country` is `country.iso_code` (ISO 3166-1 alpha-2, `DE`), `region` is the first
//!   subdivision's `iso_code` (the ISO 3166-2 part after the dash, `BE`), as MaxMind
//!   and Snowplow give them. An address the database does not know gets neither.
//! - A configured file that does not exist yet is not an error: the fields stay absent
//!   and a warning says so; it is loaded once it appears. A file that is there but not
//!   a MaxMind database refuses to start, naming the file.
//! - The file is checked every minute and loaded again when it changes (geoipupdate
//!   replaces it in place), with no restart; a bad new file keeps the old database.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use maxminddb::{path, Reader};

/// Where an address is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// ISO 3166-2 subdivision code (without the country part).
    pub region: Option<String>,
}

/// A MaxMind-format database that follows its file.
pub struct GeoIp {
    path: PathBuf,
    db: ArcSwapOption<Reader<Vec<u8>>>,
    /// Modification time and length of the file loaded (or seen missing: `None`).
    seen: Mutex<Option<(SystemTime, u64)>>,
}

/// A database that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: not a readable MaxMind database ({reason}); point it at a GeoIP2/GeoLite2 City or Country .mmdb file, or remove the key")]
pub struct GeoIpError {
    path: String,
    reason: String,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load(path: &Path) -> Result<Reader<Vec<u8>>, GeoIpError> {
    let err = |reason: String| GeoIpError {
        path: path.display().to_string(),
        reason,
    };
    let reader = Reader::open_readfile(path).map_err(|e| err(e.to_string()))?;
    tracing::info!(
        file = %path.display(),
        database_type = %reader.metadata().database_type,
        build_epoch = reader.metadata().build_epoch,
        "geoip database loaded"
    );
    Ok(reader)
}

impl GeoIp {
    /// Opens `path`: an error if it is there but unreadable; missing is a warning.
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let g = GeoIp {
            path: path.to_path_buf(),
            db: ArcSwapOption::empty(),
            seen: Mutex::new(None),
        };
        let now = stamp(path);
        if now.is_some() {
            g.db.store(Some(Arc::new(load(path)?)));
        } else {
            tracing::warn!(
                file = %path.display(),
                "proxy.geoip: the file does not exist (yet); events get no country or region until it does"
            );
        }
        *g.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(g)
    }

    /// Loads the file again if it changed since it was last looked at. Blocking (reads
    /// the whole file): call it off the async workers. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now == *seen {
            return false;
        }
        *seen = now;
        if now.is_none() {
            // Removed: keep answering from what was loaded.
            return false;
        }
        match load(&self.path) {
            Ok(r) => {
                self.db.store(Some(Arc::new(r)));
                true
            }
            Err(e) => {
                tracing::error!("proxy.geoip: {e}; keeping the database loaded before");
                false
            }
        }
    }

    /// Whether a database is loaded.
    pub fn loaded(&self) -> bool {
        self.db.load().is_some()
    }

    /// When the database in use was built (Unix seconds; 0 when none is loaded).
    pub fn build_epoch(&self) -> u64 {
        self.db.load().as_deref().map_or(0, |d| d.metadata().build_epoch)
    }

    /// Country and region of `ip`; empty when unknown or no database is loaded.
    pub fn lookup(&self, ip: IpAddr) -> Geo {
        let ip = crate::proxy::unmapped(ip);
        let guard = self.db.load();
        let Some(db) = guard.as_deref() else {
            return Geo::default();
        };
        // An IPv6 address in an IPv4-only database is an error: not found.
        let Ok(found) = db.lookup(ip) else {
            return Geo::default();
        };
        let text = |p: &[maxminddb::PathElement<'_>]| {
            found
                .decode_path::<&str>(p)
                .ok()
                .flatten()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Geo {
            country: text(&path!["country", "iso_code"]),
            region: text(&path!["subdivisions", 0, "iso_code"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_no_database_yet() {
        let dir = tempfile::tempdir().unwrap();
        let g = GeoIp::open(&dir.path().join("none.mmdb")).unwrap();
        assert!(!g.loaded());
        assert_eq!(g.build_epoch(), 0);
        assert_eq!(g.lookup("81.2.69.160".parse().unwrap()), Geo::default());
        assert!(!g.reload_if_changed(), "still missing: nothing to load");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.mmdb");
        std::fs::write(&path, b"\x00\x01 not a maxmind database").unwrap();
        let e = GeoIp::open(&path).err().expect("refused").to_string();
        assert!(
            e.contains("not a readable MaxMind database") && e.contains("bad.mmdb"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_file_appearing_later_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.mmdb");
        let g = GeoIp::open(&path).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
        assert!(!g.reload_if_changed());
        assert!(!g.loaded());
    }
}
