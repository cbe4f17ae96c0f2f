//! A segmented, append-only record log with group commit.
//!
//! Used as the collector's spool and as the router's durable log. Writers hand the log
//! whole groups of framed records ([`crate::record`]); one writer thread appends every
//! group that is waiting, calls `fdatasync` once for all of them, and only then answers
//! each writer. Under load one fsync covers many requests, so there is never an fsync per
//! event, and no lock is taken on the hot path (writers talk to the thread over a bounded
//! channel).
//!
//! Readers follow the durable end with a [`WalReader`] and persist how far they got with
//! [`save_cursor`]; segments every reader has passed are removed with
//! [`Wal::release_before`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::record::{self, Decoded};

/// A place in the log: a segment number and a byte offset inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Segment number (the file `<segment>.seg`).
    pub segment: u64,
    /// Byte offset inside the segment.
    pub offset: u64,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The log directory could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A write or fsync failed; nothing of the group is acknowledged.
    #[error("write to {path} failed: {message}")]
    Write {
        /// The segment file.
        path: PathBuf,
        /// The underlying error, as text (it is shared by every writer of the group).
        message: String,
    },
    /// The writer thread has stopped (the process is shutting down).
    #[error("the log at {0} is closed")]
    Closed(PathBuf),
    /// Another process has the log open.
    #[error("{0} is in use by another weir process (two writers would corrupt it); stop that one or use another data directory")]
    InUse(PathBuf),
}

/// How to open a log.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Directory holding the segment files; created when missing.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Name used for the writer thread and in logs (`spool`, `router-log`).
    pub name: &'static str,
}

struct Request {
    data: Vec<u8>,
    done: oneshot::Sender<Result<Position, Arc<WalError>>>,
}

struct Shared {
    dir: PathBuf,
    durable: watch::Sender<Position>,
    bytes: AtomicU64,
    segments: AtomicU64,
}

/// Handle to an open log. Cheap to clone; the writer thread stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// Lists the segment numbers present in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let entries = fs::read_dir(dir).map_err(|source| WalError::Io {
        what: "cannot list",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut segments: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `opts.dir`, cuts a torn tail left by a crash, and
    /// starts the writer thread. New records go to a fresh segment.
    pub fn open(opts: WalOptions) -> Result<Wal, WalError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(|source| WalError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| WalError::Io {
                what: "cannot open",
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(WalError::InUse(dir)),
            Err(fs::TryLockError::Error(source)) => {
                return Err(WalError::Io {
                    what: "cannot lock",
                    path: lock_path,
                    source,
                })
            }
        }
        let segments = list_segments(&dir)?;
        let mut total = 0u64;
        for (i, &seg) in segments.iter().enumerate() {
            let path = segment_path(&dir, seg);
            let io_err = |source| WalError::Io {
                what: "cannot recover",
                path: path.clone(),
                source,
            };
            let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err)?;
            let len = file.metadata().map_err(io_err)?.len();
            if i == segments.len() - 1 {
                let (_, valid) = record::read_all(&mut file).map_err(io_err)?;
                if valid < len {
                    tracing::warn!(
                        log = opts.name,
                        path = %path.display(),
                        cut = len - valid,
                        "cutting a torn tail left by a crash (bytes never acknowledged)"
                    );
                    file.set_len(valid).map_err(io_err)?;
                    file.sync_all().map_err(io_err)?;
                }
                total += valid;
            } else {
                total += len;
            }
        }
        let active = segments.last().map_or(1, |s| s + 1);
        let path = segment_path(&dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|f| sync_dir(&dir).map(|_| f))
            .map_err(|source| WalError::Io {
                what: "cannot create",
                path: path.clone(),
                source,
            })?;
        let start = Position {
            segment: active,
            offset: 0,
        };
        let (durable, _) = watch::channel(start);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            durable,
            bytes: AtomicU64::new(total),
            segments: AtomicU64::new(segments.len() as u64 + 1),
        });
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            _lock: lock,
            shared: shared.clone(),
            file,
            path,
            pos: start,
            segment_bytes: opts.segment_bytes.max(1),
        };
        std::thread::Builder::new()
            .name(format!("weir-{}-writer", opts.name))
            .spawn(move || writer.run(rx))
            .map_err(|source| WalError::Io {
                what: "cannot start the writer thread for",
                path: dir,
                source,
            })?;
        Ok(Wal { tx, shared })
    }

    /// Appends framed records (see [`record::encode_into`]) and resolves once they are on
    /// disk (fsynced). Returns the durable end position after them.
    pub async fn append(&self, framed: Vec<u8>) -> Result<Position, Arc<WalError>> {
        let closed = || Arc::new(WalError::Closed(self.shared.dir.clone()));
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { data: framed, done })
            .await
            .map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }

    /// The end of what is durable now.
    pub fn durable(&self) -> Position {
        *self.shared.durable.borrow()
    }

    /// A receiver that changes whenever more becomes durable.
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.shared.durable.subscribe()
    }

    /// Bytes held in all segments.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the log from `from` up to `to` (what a reader at `from` has left to read
    /// when the log ends at `to`), from the segment files' sizes.
    pub fn distance(&self, from: Position, to: Position) -> u64 {
        if to <= from {
            return 0;
        }
        if to.segment == from.segment {
            return to.offset - from.offset;
        }
        let size = |seg: u64| fs::metadata(segment_path(&self.shared.dir, seg)).map_or(0, |m| m.len());
        let mut total = size(from.segment).saturating_sub(from.offset) + to.offset;
        for seg in from.segment + 1..to.segment {
            total += size(seg);
        }
        total
    }

    /// Number of segment files.
    pub fn segments(&self) -> u64 {
        self.shared.segments.load(Ordering::Relaxed)
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The start of the oldest segment still on disk.
    pub fn first_position(&self) -> Result<Position, WalError> {
        let segments = list_segments(&self.shared.dir)?;
        Ok(Position {
            segment: segments.first().copied().unwrap_or(self.durable().segment),
            offset: 0,
        })
    }

    /// A reader starting at `from`.
    pub fn reader(&self, from: Position) -> WalReader {
        WalReader {
            shared: self.shared.clone(),
            pos: from,
            file: None,
        }
    }

    /// Deletes every whole segment before `pos.segment` (never the active one). Call it
    /// with the smallest position all readers have saved.
    pub fn release_before(&self, pos: Position) -> Result<(), WalError> {
        let active = self.durable().segment;
        for seg in list_segments(&self.shared.dir)? {
            if seg >= pos.segment || seg >= active {
                break;
            }
            let path = segment_path(&self.shared.dir, seg);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
                    self.shared.segments.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(WalError::Io {
                        what: "cannot delete",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

struct Writer {
    /// Held for as long as the writer runs: one process per log.
    _lock: File,
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    pos: Position,
    segment_bytes: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::with_capacity(256);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < 4096 {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            let result = self.write_group(&group).map_err(Arc::new);
            if let Err(e) = &result {
                tracing::error!(error = %e, "append to the log failed; writers get an error");
            }
            if result.is_ok() && self.pos.offset >= self.segment_bytes {
                if let Err(e) = self.roll() {
                    tracing::error!(error = %e, "cannot start a new segment; staying on the current one");
                }
            }
            for req in group.drain(..) {
                let _ = req.done.send(result.clone());
            }
        }
    }

    fn write_group(&mut self, group: &[Request]) -> Result<Position, WalError> {
        let start = self.pos.offset;
        let mut written = 0u64;
        let mut result = Ok(());
        for req in group {
            if let Err(e) = self.file.write_all(&req.data) {
                result = Err(e);
                break;
            }
            written += req.data.len() as u64;
        }
        let result = result.and_then(|_| self.file.sync_data());
        if let Err(e) = result {
            // Leave the segment as it was before the group: nothing of it was acknowledged.
            let _ = self.file.set_len(start);
            return Err(WalError::Write {
                path: self.path.clone(),
                message: e.to_string(),
            });
        }
        self.pos.offset += written;
        self.shared.bytes.fetch_add(written, Ordering::Relaxed);
        self.shared.durable.send_replace(self.pos);
        Ok(self.pos)
    }

    fn roll(&mut self) -> io::Result<()> {
        let next = self.pos.segment + 1;
        let path = segment_path(&self.shared.dir, next);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.shared.dir)?;
        self.file = file;
        self.path = path;
        self.pos = Position {
            segment: next,
            offset: 0,
        };
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        self.shared.durable.send_replace(self.pos);
        Ok(())
    }
}

/// Reads durable records in order, across segments. Its methods do blocking file I/O:
/// call them from a blocking thread (`spawn_blocking`).
pub struct WalReader {
    shared: Arc<Shared>,
    pos: Position,
    file: Option<(u64, File)>,
}

impl WalReader {
    /// Where the next read starts.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Moves the reader back (or forward) to `pos`.
    pub fn seek(&mut self, pos: Position) {
        self.pos = pos;
    }

    /// Reads whole records after the current position up to the durable end: at most
    /// `max_records`, and about `max_bytes` (always at least one record when one is
    /// there). Returns an empty vector when the reader is at the durable end.
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Bytes>, WalError> {
        let mut out = Vec::new();
        loop {
            let durable = *self.shared.durable.borrow();
            if self.pos >= durable {
                return Ok(out);
            }
            let limit = if self.pos.segment == durable.segment {
                durable.offset
            } else {
                u64::MAX
            };
            if !self.open_current()? {
                self.next_segment(durable)?;
                continue;
            }
            let Some((_, file)) = self.file.as_ref() else {
                continue;
            };
            let path = segment_path(&self.shared.dir, self.pos.segment);
            let io_err = |source| WalError::Io {
                what: "cannot read",
                path: path.clone(),
                source,
            };
            let file_len = file.metadata().map_err(io_err)?.len();
            let end = limit.min(file_len);
            if self.pos.offset >= end {
                if self.pos.segment < durable.segment {
                    self.next_segment(durable)?;
                    continue;
                }
                return Ok(out);
            }
            let mut want = ((end - self.pos.offset) as usize).min(max_bytes.max(record::HEADER_LEN));
            loop {
                let mut buf = vec![0u8; want];
                file.read_exact_at(&mut buf, self.pos.offset).map_err(io_err)?;
                let buf = Bytes::from(buf);
                let mut used = 0usize;
                let mut corrupt = false;
                while out.len() < max_records {
                    match record::decode(&buf[used..]) {
                        Decoded::Record(_, n) => {
                            out.push(buf.slice(used + record::HEADER_LEN..used + n));
                            used += n;
                        }
                        Decoded::Incomplete => break,
                        Decoded::Corrupt => {
                            corrupt = true;
                            break;
                        }
                    }
                }
                self.pos.offset += used as u64;
                if corrupt {
                    tracing::error!(
                        path = %path.display(),
                        offset = self.pos.offset,
                        "corrupt record in the log; skipping the rest of this segment"
                    );
                    self.pos.offset = end;
                    break;
                }
                if used == 0 {
                    // One record larger than what was read: read exactly it.
                    let header = buf.get(..record::HEADER_LEN);
                    let len = header.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
                    let need = record::HEADER_LEN + len;
                    if need <= want || self.pos.offset + need as u64 > end {
                        // Should not happen below the durable end; skip what cannot be read.
                        tracing::error!(path = %path.display(), "unreadable record; skipping the rest of this segment");
                        self.pos.offset = end;
                        break;
                    }
                    want = need;
                    continue;
                }
                break;
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Opens the current segment; false when it no longer exists.
    fn open_current(&mut self) -> Result<bool, WalError> {
        if self.file.as_ref().map(|(s, _)| *s) != Some(self.pos.segment) {
            let path = segment_path(&self.shared.dir, self.pos.segment);
            match File::open(&path) {
                Ok(f) => self.file = Some((self.pos.segment, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.file = None;
                    return Ok(false);
                }
                Err(source) => {
                    return Err(WalError::Io {
                        what: "cannot open",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(true)
    }

    fn next_segment(&mut self, durable: Position) -> Result<(), WalError> {
        let next = list_segments(&self.shared.dir)?
            .into_iter()
            .find(|&s| s > self.pos.segment)
            .unwrap_or(durable.segment);
        self.pos = Position {
            segment: next,
            offset: 0,
        };
        self.file = None;
        Ok(())
    }
}

/// Loads a reader's saved position, if any.
pub fn load_cursor(path: &Path) -> Result<Option<Position>, WalError> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| WalError::Io {
            what: "cannot parse the cursor",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WalError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Saves a reader's position atomically (write, then rename). Not fsynced: losing the
/// newest cursor only means re-reading records, which every consumer tolerates.
pub fn save_cursor(path: &Path, pos: Position) -> Result<(), WalError> {
    let tmp = path.with_extension("tmp");
    let io_err = |source| WalError::Io {
        what: "cannot save the cursor",
        path: path.to_path_buf(),
        source,
    };
    let data = serde_json::to_vec(&pos).map_err(|e| io_err(io::Error::other(e)))?;
    fs::write(&tmp, data).map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            record::encode_into(&mut out, p);
        }
        out
    }

    /// Opens, waiting for an earlier handle's writer thread to let go of the lock.
    fn open(dir: &Path, segment_bytes: u64) -> Wal {
        for _ in 0..200 {
            match Wal::open(WalOptions {
                dir: dir.to_path_buf(),
                segment_bytes,
                name: "test",
            }) {
                Err(WalError::InUse(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
                other => return other.unwrap(),
            }
        }
        panic!("log still in use");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn appends_rolls_reads_and_releases() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 64);
        let start = wal.first_position().unwrap();
        for i in 0..20u32 {
            wal.append(framed(&[format!("record-{i:02}").as_bytes()]))
                .await
                .unwrap();
        }
        assert!(wal.segments() > 2, "segments roll at 64 bytes");
        let mut reader = wal.reader(start);
        let mut got = Vec::new();
        loop {
            let batch = tokio::task::block_in_place(|| reader.read(3, 1 << 20)).unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 3);
            got.extend(batch);
        }
        let want: Vec<String> = (0..20).map(|i| format!("record-{i:02}")).collect();
        let got: Vec<String> = got.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect();
        assert_eq!(got, want);
        let before = wal.segments();
        wal.release_before(reader.position()).unwrap();
        assert!(wal.segments() < before);
        assert_eq!(wal.bytes(), 0, "every full segment was released");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reopen_cuts_torn_tail_and_keeps_records() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let wal = open(tmp.path(), 1 << 20);
            wal.append(framed(&[b"a", b"b"])).await.unwrap();
        }
        // Simulate a crash mid-append: half a record at the end of the segment.
        let seg = segment_path(tmp.path(), 1);
        let mut torn = Vec::new();
        record::encode_into(&mut torn, b"never acknowledged");
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn[..10]).unwrap();
        drop(f);
        let wal = open(tmp.path(), 1 << 20);
        wal.append(framed(&[b"c"])).await.unwrap();
        let mut reader = wal.reader(wal.first_position().unwrap());
        let mut got = Vec::new();
        loop {
            let batch = tokio::task::block_in_place(|| reader.read(100, 1 << 20)).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch);
        }
        let got: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"c"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn large_record_is_read_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 1 << 30);
        let big = vec![7u8; 100_000];
        wal.append(framed(&[&big, b"small"])).await.unwrap();
        let mut reader = wal.reader(wal.first_position().unwrap());
        let got = tokio::task::block_in_place(|| reader.read(10, 1024)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 100_000);
        let got = tokio::task::block_in_place(|| reader.read(10, 1024)).unwrap();
        assert_eq!(&got[0][..], b"small");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_writer_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 1 << 20);
        let err = Wal::open(WalOptions {
            dir: tmp.path().to_path_buf(),
            segment_bytes: 1,
            name: "t",
        })
        .err()
        .unwrap();
        assert!(matches!(err, WalError::InUse(_)), "{err}");
        drop(wal);
    }

    #[test]
    fn cursor_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.cursor");
        assert_eq!(load_cursor(&path).unwrap(), None);
        let pos = Position { segment: 3, offset: 99 };
        save_cursor(&path, pos).unwrap();
        assert_eq!(load_cursor(&path).unwrap(), Some(pos));
    }
}
