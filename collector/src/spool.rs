//! The collector's durable spool: events are acknowledged only once they are here
//! (fsynced, group commit), and leave only once a router has acknowledged them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_proto::wal::{self, Position, Wal, WalError, WalOptions};

/// The spool: a [`Wal`] with a size bound, an identity and the forwarder's cursor.
#[derive(Clone)]
pub struct Spool {
    wal: Wal,
    max_bytes: u64,
    id: Arc<str>,
    cursor: Arc<Path>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`.
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> Result<Spool, WalError> {
        let wal = Wal::open(WalOptions {
            dir: dir.to_path_buf(),
            segment_bytes,
            name: "spool",
        })?;
        let id_path = dir.join("spool.id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = uuid::Uuid::now_v7().simple().to_string();
                std::fs::write(&id_path, &id).map_err(|source| WalError::Io {
                    what: "cannot write",
                    path: id_path.clone(),
                    source,
                })?;
                id
            }
        };
        Ok(Spool {
            wal,
            max_bytes,
            id: id.into(),
            cursor: dir.join("forwarder.cursor").into(),
        })
    }

    /// Whether `n` more bytes fit under `spool_max_bytes`.
    pub fn has_room(&self, n: usize) -> bool {
        self.wal.bytes().saturating_add(n as u64) <= self.max_bytes
    }

    /// Appends framed records; resolves once they are durable.
    pub async fn append(&self, framed: Vec<u8>) -> Result<Position, Arc<WalError>> {
        self.wal.append(framed).await
    }

    /// The underlying log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// This spool's identity (part of every batch id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the forwarder got to, or the start of the oldest segment.
    pub fn forwarded(&self) -> Result<Position, WalError> {
        match wal::load_cursor(&self.cursor)? {
            Some(p) => Ok(p),
            None => self.wal.first_position(),
        }
    }

    /// Records that everything before `pos` was acknowledged and frees those segments.
    pub fn acknowledge(&self, pos: Position) -> Result<(), WalError> {
        wal::save_cursor(&self.cursor, pos)?;
        self.wal.release_before(pos)
    }

    /// The spool directory.
    pub fn dir(&self) -> PathBuf {
        self.wal.dir().to_path_buf()
    }
}
