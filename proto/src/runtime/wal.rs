//! A segmented, append-only record log with group commit.
//!
//! Used as the collector's spool and as the router's durable log. Writers hand the log
//! whole groups of framed records ([`crate::record`]); one writer thread appends every
//! group that is waiting, calls `fdatasync` once for all of them, and only then answers
//! each writer. Under load one fsync covers many requests, so there is never an fsync per
//! event, and no lock is taken on the hot path (writers talk to the thread over a bounded
//! channel).
//!
//! The active segment is preallocated ahead of its data ([`PREALLOCATE_BYTES`] at a
//! time, while the file system has room to spare): an append then writes inside the
//! file instead of growing it, and `fdatasync` need not write the inode's new size each
//! time (`cargo bench -p weir-proto --bench wal`, 2-core VM: a 1-event append 100–108 µs
//! instead of 144–152 µs, a 16 KB one 222 µs instead of 263–276 µs). Preallocated space
//! is only reserved ("unwritten" extents on ext4 and XFS): the first write into each block
//! changes the extent tree, and the `fdatasync` after it writes the inode again (or
//! commits the journal), a third synchronous I/O beside the data and the cache flush. For
//! small groups (single events, a few KB: nearly every group starts a new block) zeros are
//! also written [`ZERO_FILL_BYTES`] ahead of the data, as PostgreSQL zero-fills its WAL
//! segments: the next `fdatasync` writes them once, and the groups after it only overwrite
//! written blocks (3.5 KB groups: 2.0 block-layer requests per `fdatasync` instead of 2.9,
//! 103–115 µs instead of 135–174 µs). Under large groups (100-event requests) it is off:
//! writing every byte twice costs more than one inode write per group, and the zeros
//! delay the group whose `fdatasync` writes them. The writer decides on its recent groups'
//! average size ([`ZERO_FILL_MAX_GROUP`]), so an odd small group among large ones does not
//! turn it on. The zeros after the data are cut when the segment is finished, and after a
//! crash when the log is opened again; the durable end is always the writer's, never the
//! file's length.
//!
//! Readers follow the durable end with a [`WalReader`] and persist how far they got with
//! [`save_cursor`]; segments every reader has passed are removed with
//! [`Wal::release_before`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    #[error("{what} {path}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
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
    /// Prefix of the log's metrics (`weir_collector_spool`, `weir_router_log`):
    /// `<prefix>_damaged_bytes_total` counts bytes skipped over as damage,
    /// `<prefix>_syncs_total` the groups written (one `fdatasync` each),
    /// `<prefix>_idle_waits_total{ended="limit"|"idle"}` (a gathering log's) the writer's
    /// waits for an idle runtime between groups (see [`DEFER_MAX_GROUP`]).
    pub metric_prefix: &'static str,
    /// Gather the appends of one turn of the async runtime into one group (see
    /// [`Gather`]): for a log written by many small requests (the collector's spool). A
    /// log whose appends are already batches (the router's: a collector's run each) sends
    /// each append to the writer at once. While a gathering log's groups are small, its
    /// writer also waits for an idle runtime between groups (see [`DEFER_MAX_GROUP`]).
    pub gather: bool,
}

/// Where an append's outcome is sent.
type Reply = oneshot::Sender<Result<(Position, Position), Arc<WalError>>>;

enum Request {
    /// Append framed records, each answered once it is durable.
    Append(Vec<(Vec<u8>, Reply)>),
    /// Start a new segment if the active one holds anything, so that a reader that
    /// passed all of it can release it; answered once done.
    Roll { done: oneshot::Sender<()> },
}

struct Shared {
    /// The writer is writing a group (appends then wait for it anyway).
    busy: AtomicBool,
    dir: PathBuf,
    name: &'static str,
    durable: watch::Sender<Position>,
    bytes: AtomicU64,
    segments: AtomicU64,
    /// Set when an append failed (a full disk, typically) and cleared by the next roll:
    /// then even a small active segment is rolled to free space.
    write_failed: AtomicBool,
    /// An active segment this large is rolled as soon as every reader has passed it.
    roll_bytes: u64,
    damaged: metrics::Counter,
    /// Groups written and synced.
    syncs: AtomicU64,
    syncs_total: metrics::Counter,
    /// Waits for an idle runtime between groups: ended by the limit, by an idle runtime.
    idle_waits: [AtomicU64; 2],
    idle_waits_total: [metrics::Counter; 2],
}

/// Handle to an open log. Cheap to clone; the writer thread stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    /// Appends waiting for the end of the runtime's turn, when the log gathers them.
    gather: Option<Arc<Gather>>,
}

/// A batch this many appends long goes to an idle writer at once, before the turn ends:
/// the disk then works while the runtime finishes the turn. Measured on a 2-core VM with
/// `wrk -c32` (1-event and 100-event bodies): 8 beat 2, 4, 6, 12, 16 and never.
pub const GATHER_EARLY_APPENDS: usize = 8;

/// Ready once the tasks already scheduled have run: the first poll wakes itself, which
/// puts the task at the back of the runtime's run queue (not in the slot that runs next,
/// and, unlike `tokio::task::yield_now`, not after the next poll of the sockets).
struct BackOfTheQueue(bool);

impl std::future::Future for BackOfTheQueue {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Appends made in one turn of the async runtime, handed to the writer thread together.
///
/// Waking the writer on every append let it preempt the runtime's thread at once (on one
/// core the woken writer runs first) and `fdatasync` a group of a few appends while the
/// requests behind them waited to be read: 4.5 appends per `fdatasync` at 1-event
/// requests, 3.9 at 100-event ones (`wrk -c32`), and each `fdatasync` costs ~45 µs of CPU
/// besides the disk's time. Now the first append of a turn spawns a task that steps to the
/// back of the run queue ([`BackOfTheQueue`]), so that every task ready in this turn runs
/// (and appends) first, then sends the whole batch in one message. A batch that reaches
/// [`GATHER_EARLY_APPENDS`] while the writer is idle is sent at once, so that the disk
/// is not idle while the rest of the turn runs.
#[derive(Default)]
struct Gather {
    pending: std::sync::Mutex<Vec<(Vec<u8>, Reply)>>,
}

/// A gathering log's writer, once a group is durable and answered, may wait for the async
/// runtime to go idle before it takes the next group ([`Pacing`] decides when), while its
/// recent groups average less than this (and again once they average less than half of it).
///
/// Small groups (single events, 100-event requests: a few KB to a few hundred) cost
/// mostly their `fdatasync`. On a core shared with a busy neighbour, every wake-up of the
/// writer waits for the neighbour's time slice: woken when its sync returned, the writer
/// took the few appends queued so far, and each group paid two such waits. Waiting until
/// a worker thread parks ([`runtime_parked`], tokio's `on_thread_park`), at most
/// [`IDLE_WAIT_MAX`], the next group holds every request read meanwhile (collector pinned
/// to one core with a busy loop beside it, `wrk -c32`: 30–35k requests/s instead of
/// 11–14k). Where the core is not contended the same wait only turns the pipeline into
/// turns of CPU, then disk, with the CPU idle during each sync (a 40 µs `fdatasync`:
/// 46–53k instead of 91–97k), so [`Pacing`] waits only while the writer's core is
/// contended (a busy neighbour, or a runtime saturated by 100-event requests).
/// A group of fewer than [`GATHER_EARLY_APPENDS`] appends (few senders) has little to
/// gather and never waits. See the README's performance section.
///
/// Large groups (datagram bursts of a MB) cost mostly the copy into the page cache, which
/// is cheapest while what was just built is still in the CPU's cache: above this the
/// writer takes them at once. (Deferring those too, `copy_folio_from_iter_atomic` went
/// from 6.5% to 21.5% of the core and datagrams from 1.26M to 1.0M events/s.)
pub const DEFER_MAX_GROUP: u64 = 1 << 20;

/// The longest a writer waits for an idle runtime between two groups: a runtime that
/// never idles (a core saturated by requests) still has its appends synced this often.
pub const IDLE_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// How often a gathering log's writer reads how long it waited for a CPU (see [`Pacing`]).
pub const PACING_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer thread's mean wait for a CPU per time it ran, in nanoseconds, from which
/// its core counts as contended (half of it to stop counting so). Measured with the
/// collector pinned to one core, `wrk -c32`: 0.5–0.9 µs alone, 19–38 µs with a busy loop
/// on the core.
pub const CONTENDED_RUN_DELAY_NS: u64 = 5_000;

/// When a gathering log's writer waits for an idle runtime between groups (see
/// [`DEFER_MAX_GROUP`]): while its core is contended, which it learns from its own wait
/// for a CPU (`/proc/thread-self/schedstat`: time runnable but not running, and times
/// run), read every [`PACING_WINDOW`] at most. Where the kernel does not tell, it always
/// waits (the safe choice on a shared core).
#[derive(Debug)]
struct Pacing {
    schedstat: Option<File>,
    /// Run delay (ns) and times run at the last reading.
    last: (u64, u64),
    read_at: std::time::Instant,
    waiting: bool,
}

impl Pacing {
    /// Pacing for the calling thread (the writer's own schedstat).
    fn new() -> Pacing {
        #[cfg(test)]
        if tests::ALWAYS_WAIT.load(Ordering::Relaxed) {
            return Pacing::from(None);
        }
        Pacing::from(File::open("/proc/thread-self/schedstat").ok())
    }

    /// Pacing that reads `schedstat` (a thread's; `None`: always wait).
    fn from(schedstat: Option<File>) -> Pacing {
        let last = schedstat.as_ref().and_then(read_schedstat).unwrap_or_default();
        Pacing {
            schedstat,
            last,
            read_at: std::time::Instant::now(),
            waiting: false,
        }
    }

    /// Whether to wait after this group (one of at least [`GATHER_EARLY_APPENDS`]).
    fn wait_now(&mut self) -> bool {
        let Some(file) = &self.schedstat else {
            return true;
        };
        let now = std::time::Instant::now();
        if now.duration_since(self.read_at) >= PACING_WINDOW {
            self.read_at = now;
            if let Some(read) = read_schedstat(file) {
                let delay = read.0.saturating_sub(self.last.0);
                let runs = read.1.saturating_sub(self.last.1);
                self.waiting = contended(delay, runs, self.waiting);
                self.last = read;
            }
        }
        self.waiting
    }
}

/// Whether `delay_ns` of waiting for a CPU over `runs` times run is a contended core,
/// for a writer that `was` waiting (hysteresis: it stops below half the threshold).
fn contended(delay_ns: u64, runs: u64, was: bool) -> bool {
    if runs == 0 {
        return was;
    }
    let per_run = delay_ns / runs;
    if was {
        per_run >= CONTENDED_RUN_DELAY_NS / 2
    } else {
        per_run >= CONTENDED_RUN_DELAY_NS
    }
}

/// (run delay in ns, times run) from an open `schedstat` file.
fn read_schedstat(file: &File) -> Option<(u64, u64)> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1).map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Times a worker thread of the runtime went idle, as [`runtime_parked`] reports them.
static RUNTIME_PARKS: AtomicU64 = AtomicU64::new(0);
/// Writers waiting for the next idle runtime.
static IDLE_WAITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static IDLE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
static IDLE: std::sync::Condvar = std::sync::Condvar::new();

/// Tells the gathering logs' writers that a worker thread of the async runtime has no
/// task to run: install it as the runtime's `on_thread_park`. Cheap when no writer waits
/// (an atomic add and load). Without it, writers never wait (see [`DEFER_MAX_GROUP`]).
pub fn runtime_parked() {
    RUNTIME_PARKS.fetch_add(1, Ordering::SeqCst);
    if IDLE_WAITERS.load(Ordering::SeqCst) > 0 {
        let _held = IDLE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        IDLE.notify_all();
    }
}

/// Waits until the runtime has gone idle since `parks` was read from [`RUNTIME_PARKS`],
/// at most [`IDLE_WAIT_MAX`]. Whether it ended by an idle runtime (`true`) or by the
/// limit; `None` (no wait) when no runtime reports its parks.
fn wait_for_an_idle_runtime(parks: u64) -> Option<bool> {
    if parks == 0 {
        return None;
    }
    let deadline = std::time::Instant::now() + IDLE_WAIT_MAX;
    IDLE_WAITERS.fetch_add(1, Ordering::SeqCst);
    let mut held = IDLE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let idle = loop {
        if RUNTIME_PARKS.load(Ordering::SeqCst) != parks {
            break true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            break false;
        }
        held = IDLE
            .wait_timeout(held, deadline - now)
            .map_or_else(|p| p.into_inner().0, |r| r.0);
    };
    drop(held);
    IDLE_WAITERS.fetch_sub(1, Ordering::SeqCst);
    Some(idle)
}

/// The active segment is preallocated this far past its data at a time.
pub const PREALLOCATE_BYTES: u64 = 8 << 20;

/// Zeros are written this far past the data at a time, inside the preallocated space: a
/// block the writer has written is overwritten without changing the extent tree. Small
/// enough that the `fdatasync` which writes them out is not a latency spike.
pub const ZERO_FILL_BYTES: u64 = 256 << 10;

/// Zeros are written ahead only while the recent groups average less than this (a moving
/// average, 1/8 weight to each new group): a larger group amortizes its inode write, and
/// zero-filling would write its bytes twice.
pub const ZERO_FILL_MAX_GROUP: u64 = 32 << 10;

/// Space is preallocated only while the file system keeps this much free besides: on a
/// nearly full disk the log writes exactly what it holds, as without preallocation, and
/// the space it would reserve stays free for cursors and for the readers' work.
pub const PREALLOCATE_MIN_FREE: u64 = 64 << 20;

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// Lists the segment numbers present in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let entries = fs::read_dir(dir).map_err(|error| WalError::Io {
        what: "cannot list",
        path: dir.to_path_buf(),
        error,
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

/// Cuts a torn tail off a file of records (what a crash or a full disk mid-append
/// leaves: bytes never acknowledged), and zeros after the last record (preallocated
/// space), and returns the length kept. Damage followed by
/// intact records is left for readers to skip, since those records were acknowledged.
pub fn cut_torn_tail(path: &Path, what: &str) -> io::Result<u64> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let scan = record::scan(&file)?;
    if scan.valid_prefix == len {
        return Ok(len);
    }
    if scan.intact_after {
        tracing::error!(
            file = what,
            path = %path.display(),
            offset = scan.valid_prefix,
            "damaged bytes between intact records; readers skip them"
        );
        return Ok(len);
    }
    let cut_bytes = len - scan.valid_prefix;
    if scan.zero_tail {
        tracing::debug!(file = what, path = %path.display(), cut_bytes, "cutting space preallocated after the last record");
    } else {
        tracing::warn!(
            file = what,
            path = %path.display(),
            cut_bytes,
            "cutting a torn tail left by a crash or a failed write (bytes never acknowledged)"
        );
    }
    file.set_len(scan.valid_prefix)?;
    file.sync_all()?;
    Ok(scan.valid_prefix)
}

/// Makes the entries of `dir` (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `opts.dir`, cuts a torn tail left by a crash, and
    /// starts the writer thread. New records go to a fresh segment.
    pub fn open(opts: WalOptions) -> Result<Wal, WalError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(|error| WalError::Io {
            what: "cannot create",
            path: dir.clone(),
            error,
        })?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| WalError::Io {
                what: "cannot open",
                path: lock_path.clone(),
                error,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(WalError::InUse(dir)),
            Err(fs::TryLockError::Error(error)) => {
                return Err(WalError::Io {
                    what: "cannot lock",
                    path: lock_path,
                    error,
                })
            }
        }
        let segments = list_segments(&dir)?;
        let mut total = 0u64;
        for (i, &seg) in segments.iter().enumerate() {
            let path = segment_path(&dir, seg);
            let io_err = |error| WalError::Io {
                what: "cannot recover",
                path: path.clone(),
                error,
            };
            let len = fs::metadata(&path).map_err(io_err)?.len();
            if i == segments.len() - 1 {
                total += cut_torn_tail(&path, opts.name).map_err(io_err)?;
            } else {
                total += len;
            }
        }
        let active = segments.last().map_or(1, |s| s + 1);
        let path = segment_path(&dir, active);
        let file = create_segment(&path)
            .and_then(|f| sync_dir(&dir).map(|_| f))
            .map_err(|error| WalError::Io {
                what: "cannot create",
                path: path.clone(),
                error,
            })?;
        let start = Position {
            segment: active,
            offset: 0,
        };
        let (durable, _) = watch::channel(start);
        let segment_bytes = opts.segment_bytes.max(1);
        let shared = Arc::new(Shared {
            busy: AtomicBool::new(false),
            dir: dir.clone(),
            name: opts.name,
            durable,
            bytes: AtomicU64::new(total),
            segments: AtomicU64::new(segments.len() as u64 + 1),
            write_failed: AtomicBool::new(false),
            roll_bytes: segment_bytes.min(1 << 20),
            damaged: metrics::counter!(format!("{}_damaged_bytes_total", opts.metric_prefix)),
            syncs: AtomicU64::new(0),
            syncs_total: metrics::counter!(format!("{}_syncs_total", opts.metric_prefix)),
            idle_waits: Default::default(),
            // Only a gathering log ever waits: no always-zero series for the others.
            idle_waits_total: ["limit", "idle"].map(|ended| match opts.gather {
                true => metrics::counter!(format!("{}_idle_waits_total", opts.metric_prefix), "ended" => ended),
                false => metrics::Counter::noop(),
            }),
        });
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            _lock: lock,
            shared: shared.clone(),
            file,
            path,
            pos: start,
            allocated: 0,
            zeroed: 0,
            group_average: 0,
            defers: opts.gather.then_some(true),
            preallocate: true,
            segment_bytes,
        };
        std::thread::Builder::new()
            .name(format!("weir-{}-writer", opts.name))
            .spawn(move || writer.run(rx))
            .map_err(|error| WalError::Io {
                what: "cannot start the writer thread for",
                path: dir,
                error,
            })?;
        Ok(Wal {
            tx,
            shared,
            gather: opts.gather.then(Arc::default),
        })
    }

    /// Appends framed records (see [`record::encode_into`]) and resolves once they are on
    /// disk (fsynced). Returns the position right after them (durable).
    pub async fn append(&self, framed: Vec<u8>) -> Result<Position, Arc<WalError>> {
        self.append_span(framed).await.map(|(_, end)| end)
    }

    /// [`Wal::append`], returning where the appended records start and end: a reader at
    /// the start reads exactly them up to the end (they are in one segment).
    pub async fn append_span(&self, framed: Vec<u8>) -> Result<(Position, Position), Arc<WalError>> {
        let closed = || Arc::new(WalError::Closed(self.shared.dir.clone()));
        let (done, wait) = oneshot::channel();
        let Some(gather) = &self.gather else {
            self.tx
                .send(Request::Append(vec![(framed, done)]))
                .await
                .map_err(|_| closed())?;
            return wait.await.map_err(|_| closed())?;
        };
        let (first, early) = {
            let mut pending = gather.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push((framed, done));
            let early = pending.len() >= GATHER_EARLY_APPENDS && !self.shared.busy.load(Ordering::Relaxed);
            (pending.len() == 1, early.then(|| std::mem::take(&mut *pending)))
        };
        if let Some(batch) = early {
            self.shared.busy.store(true, Ordering::Relaxed);
            // Never awaited here: a caller that gives up must not take the batch (other
            // appenders' replies) with it.
            if let Err(mpsc::error::TrySendError::Full(req)) = self.tx.try_send(Request::Append(batch)) {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(req).await;
                });
            }
        } else if first {
            // A task of its own, so that a caller that gives up (a client gone) cannot
            // strand the batch.
            let (tx, gather) = (self.tx.clone(), gather.clone());
            tokio::spawn(async move {
                BackOfTheQueue(false).await;
                let batch = std::mem::take(&mut *gather.pending.lock().unwrap_or_else(|p| p.into_inner()));
                // A closed log drops the replies: every appender gets `Closed`.
                if !batch.is_empty() {
                    let _ = tx.send(Request::Append(batch)).await;
                }
            });
        }
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

    /// The writer's waits for an idle runtime between groups (see [`DEFER_MAX_GROUP`]):
    /// how many ended at [`IDLE_WAIT_MAX`], and how many when the runtime went idle.
    pub fn idle_waits(&self) -> (u64, u64) {
        let [limit, idle] = &self.shared.idle_waits;
        (limit.load(Ordering::Relaxed), idle.load(Ordering::Relaxed))
    }

    /// Groups written since the log was opened, each with one `fdatasync` (appends per
    /// sync = appends / this).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
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

    /// Deletes every segment wholly before `pos`. Call it with the smallest position all
    /// readers have reached. When `pos` is the durable end and the active segment is
    /// large (or an append failed since the last roll: a full disk), the writer first
    /// starts a new segment so that the old one can go too: freeing space never needs
    /// more than an empty file, and never waits for more appends. Returns the bytes freed.
    pub async fn release_before(&self, pos: Position) -> Result<u64, WalError> {
        let durable = self.durable();
        let big = durable.offset >= self.shared.roll_bytes || self.shared.write_failed.load(Ordering::Relaxed);
        if pos >= durable && durable.offset > 0 && big {
            let (done, wait) = oneshot::channel();
            if self.tx.send(Request::Roll { done }).await.is_ok() {
                let _ = wait.await;
            }
        }
        self.delete_passed(pos)
    }

    /// Deletes the segments a reader at `pos` has wholly passed (never the active one):
    /// those before `pos.segment`, and `pos.segment` itself when `pos` is at its end.
    /// Unlike [`Wal::release_before`] it never rolls the active segment.
    pub fn delete_passed(&self, pos: Position) -> Result<u64, WalError> {
        let active = self.durable().segment;
        let mut freed = 0;
        for seg in list_segments(&self.shared.dir)? {
            if seg >= active || seg > pos.segment {
                break;
            }
            let path = segment_path(&self.shared.dir, seg);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if seg == pos.segment && pos.offset < len {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    freed += len;
                    self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
                    self.shared.segments.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(WalError::Io {
                        what: "cannot delete",
                        path,
                        error,
                    })
                }
            }
        }
        Ok(freed)
    }

    /// Where a reader whose cursor is saved at `path` starts: the saved position, or
    /// `default` when none was ever saved. A cursor that cannot be read (empty, garbled,
    /// unreadable, or past the log's end) falls back to the oldest retained position —
    /// records are read again, never skipped — with an error log and one count on
    /// `resets` (`weir_<component>_cursor_resets_total`). A cursor older than the oldest
    /// segment (deleted before the cursor was saved) starts at the oldest data.
    pub fn resume(&self, path: &Path, default: Position, resets: &'static str) -> Result<Position, WalError> {
        let first = self.first_position()?;
        let reset = |why: String| {
            tracing::error!(
                cursor = %path.display(),
                reason = %why,
                log = self.shared.name,
                "cannot use the saved cursor; reading again from the oldest retained record (duplicates are dropped by event id)"
            );
            metrics::counter!(resets).increment(1);
            first
        };
        let start = match read_cursor(path) {
            SavedCursor::Missing => default,
            SavedCursor::Unreadable(why) => reset(why),
            SavedCursor::At(p) if p > self.durable() => reset(format!(
                "it points past the end of the log ({p:?} > {:?})",
                self.durable()
            )),
            SavedCursor::At(p) => p,
        };
        Ok(start.max(first))
    }
}

struct Writer {
    /// Held for as long as the writer runs: one process per log.
    _lock: File,
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    /// The durable end: where the next group is written.
    pos: Position,
    /// The active segment's length: `pos.offset` and the zeros preallocated after it.
    allocated: u64,
    /// Where the zeros written past the data end ([`ZERO_FILL_BYTES`] at a time).
    zeroed: u64,
    /// The recent groups' average size in bytes (see [`ZERO_FILL_MAX_GROUP`]).
    group_average: u64,
    /// For a gathering log, whether it now waits for an idle runtime between groups (see
    /// [`DEFER_MAX_GROUP`]); `None` for a log of batches.
    defers: Option<bool>,
    /// Off once the file system said it cannot preallocate.
    preallocate: bool,
    segment_bytes: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // In this thread: it reads this thread's own schedstat.
        let mut pacing = Pacing::new();
        let mut group: Vec<(Vec<u8>, Reply)> = Vec::with_capacity(256);
        let mut rolls: Vec<oneshot::Sender<()>> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut take = |req| match req {
                Request::Append(batch) => group.extend(batch),
                Request::Roll { done } => rolls.push(done),
            };
            take(first);
            for _ in 0..4096 {
                match rx.try_recv() {
                    Ok(req) => take(req),
                    Err(_) => break,
                }
            }
            self.shared.busy.store(true, Ordering::Relaxed);
            let result = if group.is_empty() {
                Ok(self.pos)
            } else {
                self.write_group(&group).map_err(Arc::new)
            };
            if let Err(e) = &result {
                self.shared.write_failed.store(true, Ordering::Relaxed);
                tracing::error!(log = self.shared.name, error = %e, "append to the log failed; writers get an error");
            }
            let full = result.is_ok() && self.pos.offset >= self.segment_bytes;
            if (full || !rolls.is_empty()) && self.pos.offset > 0 {
                match self.roll() {
                    Ok(()) => self.shared.write_failed.store(false, Ordering::Relaxed),
                    Err(e) => {
                        tracing::error!(log = self.shared.name, error = %e, "cannot start a new segment; staying on the current one")
                    }
                }
            }
            // The group was written in order, ending at `end`: each append's own span.
            let total: u64 = group.iter().map(|(data, _)| data.len() as u64).sum();
            let mut at = result.as_ref().map_or(self.pos, |end| Position {
                offset: end.offset - total,
                ..*end
            });
            // Read before the replies wake the runtime: its next park counts.
            let parks = self.defers.map(|_| RUNTIME_PARKS.load(Ordering::SeqCst));
            let appends = group.len();
            for (data, done) in group.drain(..) {
                let span = result.clone().map(|_| {
                    let start = at;
                    at.offset += data.len() as u64;
                    (start, at)
                });
                let _ = done.send(span);
            }
            for done in rolls.drain(..) {
                let _ = done.send(());
            }
            // A group of fewer appends than an early batch: few senders, little to gather.
            if self.defer_now() && appends >= GATHER_EARLY_APPENDS && pacing.wait_now() {
                if let Some(idle) = parks.and_then(wait_for_an_idle_runtime) {
                    self.shared.idle_waits[usize::from(idle)].fetch_add(1, Ordering::Relaxed);
                    self.shared.idle_waits_total[usize::from(idle)].increment(1);
                }
            }
            self.shared.busy.store(false, Ordering::Relaxed);
        }
    }

    /// Whether to wait for the runtime before the next group (a gathering log's only):
    /// while the recent groups average under [`DEFER_MAX_GROUP`], until they average over
    /// it, then again once they are under half of it.
    fn defer_now(&mut self) -> bool {
        let Some(defers) = self.defers else {
            return false;
        };
        let limit = if defers { DEFER_MAX_GROUP } else { DEFER_MAX_GROUP / 2 };
        let defer = self.group_average < limit;
        self.defers = Some(defer);
        defer
    }

    fn write_group(&mut self, group: &[(Vec<u8>, Reply)]) -> Result<Position, WalError> {
        let start = self.pos.offset;
        let written: u64 = group.iter().map(|(data, _)| data.len() as u64).sum();
        self.group_average = self.group_average - self.group_average / 8 + written / 8;
        self.make_room(start + written, self.group_average < ZERO_FILL_MAX_GROUP);
        let result = write_all_at(&self.file, group.iter().map(|(data, _)| data.as_slice()), start)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = result {
            // Leave the segment as it was before the group: nothing of it was acknowledged
            // (the space preallocated after it goes too).
            if let Err(cut) = self.file.set_len(start) {
                tracing::error!(path = %self.path.display(), error = %cut, "cannot cut a failed append back; the next start cuts it");
            }
            self.allocated = self.file.metadata().map_or(start, |m| m.len());
            self.zeroed = self.zeroed.min(self.allocated);
            return Err(WalError::Write {
                path: self.path.clone(),
                message: e.to_string(),
            });
        }
        self.pos.offset += written;
        self.allocated = self.allocated.max(self.pos.offset);
        self.shared.bytes.fetch_add(written, Ordering::Relaxed);
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.syncs_total.increment(1);
        self.shared.durable.send_replace(self.pos);
        Ok(self.pos)
    }

    /// Preallocates the active segment past `need` bytes when it is shorter, up to
    /// [`PREALLOCATE_BYTES`] ahead (not past the segment size), while the file system
    /// has [`PREALLOCATE_MIN_FREE`] to spare, and, when `zero_fill`, writes zeros
    /// [`ZERO_FILL_BYTES`] past `need` inside that space. Best effort: when it cannot, the
    /// append grows the file as it writes.
    fn make_room(&mut self, need: u64, zero_fill: bool) {
        if need <= self.zeroed || !self.preallocate {
            return;
        }
        if need > self.allocated {
            self.preallocate_past(need);
        }
        let end = need.saturating_add(ZERO_FILL_BYTES).min(self.allocated);
        if zero_fill && end > need {
            if let Err(e) = write_zeros_at(&self.file, need, end - need) {
                tracing::debug!(log = self.shared.name, error = %e, "cannot write zeros ahead of the data");
            }
            self.zeroed = end;
        }
    }

    fn preallocate_past(&mut self, need: u64) {
        let target = need.saturating_add(PREALLOCATE_BYTES).min(self.segment_bytes.max(need));
        let free = super::disk::free_bytes(&self.shared.dir).unwrap_or(0);
        if free < PREALLOCATE_MIN_FREE.saturating_add(target - self.allocated) {
            return;
        }
        let from = self.allocated;
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), from, target - from) {
            Ok(()) => self.allocated = target,
            Err(rustix::io::Errno::OPNOTSUPP) => {
                tracing::debug!(
                    log = self.shared.name,
                    "the file system cannot preallocate; appends grow the segment"
                );
                self.preallocate = false;
            }
            // A failure may have allocated part of the range: the file says what it holds.
            Err(_) => self.allocated = self.file.metadata().map_or(from, |m| m.len()),
        }
    }

    fn roll(&mut self) -> io::Result<()> {
        // A finished segment ends where its data does: readers read it to its length.
        if self.allocated > self.pos.offset {
            self.file.set_len(self.pos.offset)?;
            self.file.sync_data()?;
            self.allocated = self.pos.offset;
        }
        let next = self.pos.segment + 1;
        let path = segment_path(&self.shared.dir, next);
        let file = create_segment(&path)?;
        sync_dir(&self.shared.dir)?;
        self.file = file;
        self.path = path;
        self.allocated = 0;
        self.zeroed = 0;
        self.pos = Position {
            segment: next,
            offset: 0,
        };
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        self.shared.durable.send_replace(self.pos);
        Ok(())
    }
}

/// Creates a new segment file, failing if one of that name exists (the writer never
/// writes over a segment it did not start).
fn create_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(true).open(path)
}

/// Writes `len` zeros at `offset`, in one `pwritev` of a static zero page (mostly).
fn write_zeros_at(file: &File, offset: u64, len: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let whole = (len / ZEROS.len() as u64) as usize;
    let rest = (len % ZEROS.len() as u64) as usize;
    let bufs = std::iter::repeat_n(&ZEROS[..], whole).chain(std::iter::once(&ZEROS[..rest]));
    write_all_at(file, bufs, offset)
}

/// Writes every buffer in order at `offset`, with as few `pwritev` calls as the kernel
/// takes (one, normally): a system call per group of appends, not one per append.
fn write_all_at<'a>(file: &File, bufs: impl Iterator<Item = &'a [u8]>, mut offset: u64) -> io::Result<()> {
    /// Linux's IOV_MAX: the most buffers one `pwritev` takes.
    const MAX_IOV: usize = 1024;
    let mut slices: Vec<io::IoSlice<'a>> = bufs.filter(|b| !b.is_empty()).map(io::IoSlice::new).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_IOV);
        match rustix::io::pwritev(file, &rest[..n], offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                offset += written as u64;
                io::IoSlice::advance_slices(&mut rest, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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

    /// The log's durable end now: what a read may return ends there.
    pub fn durable(&self) -> Position {
        *self.shared.durable.borrow()
    }

    /// Moves the reader back (or forward) to `pos`.
    pub fn seek(&mut self, pos: Position) {
        self.pos = pos;
    }

    /// Reads whole records after the current position up to the durable end: at most
    /// `max_records`, and about `max_bytes` (always at least one record when one is
    /// there). Returns an empty vector when the reader is at the durable end.
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Bytes>, WalError> {
        Ok(self
            .read_with_ends(max_records, max_bytes)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// [`WalReader::read`], with where each record ends. The records of one read are in
    /// one segment; the reader's position afterwards may be past the last end (damage it
    /// skipped).
    pub fn read_with_ends(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<(Bytes, Position)>, WalError> {
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
            let io_err = |error| WalError::Io {
                what: "cannot read",
                path: path.clone(),
                error,
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
                            let end = Position {
                                segment: self.pos.segment,
                                offset: self.pos.offset + (used + n) as u64,
                            };
                            out.push((buf.slice(used + record::HEADER_LEN..used + n), end));
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
                    skip_damage(&self.shared, &mut self.pos, file, end, &path).map_err(io_err)?;
                    break;
                }
                if used == 0 {
                    // One record larger than what was read: read exactly it.
                    let header = buf.get(..record::HEADER_LEN);
                    let len = header.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
                    let need = record::HEADER_LEN + len;
                    if need <= want || self.pos.offset + need as u64 > end {
                        // A length past the durable end: damage, not a record.
                        skip_damage(&self.shared, &mut self.pos, file, end, &path).map_err(io_err)?;
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
                Err(error) => {
                    return Err(WalError::Io {
                        what: "cannot open",
                        path,
                        error,
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

/// Skips damaged bytes at `pos` to the next intact record of the segment (or its end),
/// counting and logging what was skipped.
fn skip_damage(shared: &Shared, pos: &mut Position, file: &File, end: u64, path: &Path) -> io::Result<()> {
    let mut rest = vec![0u8; (end - pos.offset) as usize];
    file.read_exact_at(&mut rest, pos.offset)?;
    let skip = record::resync(&rest).unwrap_or(rest.len()) as u64;
    tracing::error!(
        log = shared.name,
        path = %path.display(),
        offset = pos.offset,
        skipped_bytes = skip,
        "damaged bytes in the log (not a record); skipped to the next intact record"
    );
    shared.damaged.increment(skip);
    pos.offset += skip;
    Ok(())
}

/// What a cursor file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum SavedCursor {
    /// No cursor was ever saved.
    Missing,
    /// The saved position.
    At(Position),
    /// The file exists but cannot be used (empty, garbled, unreadable); why.
    Unreadable(String),
}

/// Reads a reader's saved position.
pub fn read_cursor(path: &Path) -> SavedCursor {
    match fs::read(path) {
        Ok(data) => match serde_json::from_slice(&data) {
            Ok(p) => SavedCursor::At(p),
            Err(e) if data.is_empty() => SavedCursor::Unreadable(format!("the file is empty ({e})")),
            Err(e) => SavedCursor::Unreadable(format!("not a cursor: {e}")),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => SavedCursor::Missing,
        Err(e) => SavedCursor::Unreadable(e.to_string()),
    }
}

/// Saves a reader's position durably and atomically: a temporary file, fsync, rename
/// over the cursor, fsync of the directory. A crash leaves the old cursor or the new one,
/// never a torn one.
pub fn save_cursor(path: &Path, pos: Position) -> Result<(), WalError> {
    let data = serde_json::to_vec(&pos).map_err(|e| WalError::Io {
        what: "cannot save the cursor",
        path: path.to_path_buf(),
        error: io::Error::other(e),
    })?;
    write_atomic(path, &data).map_err(|error| WalError::Io {
        what: "cannot save the cursor",
        path: path.to_path_buf(),
        error,
    })
}

/// Replaces `path` with `data` atomically and durably (temporary file in the same
/// directory, fsync, rename, fsync of the directory): every cursor and marker weir
/// reads back is written this way.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes writers opened from now on always wait for an idle runtime (as on a contended
    /// core), whatever their schedstat says.
    pub(super) static ALWAYS_WAIT: AtomicBool = AtomicBool::new(false);

    #[test]
    fn a_writer_waits_while_its_core_is_contended() {
        // 0.5–0.9 µs per run alone, 19–38 µs beside a busy loop (measured).
        assert!(!contended(900 * 1000, 1000, false));
        assert!(contended(19_000 * 1000, 1000, false));
        // Hysteresis: a waiting writer stops below half the threshold only.
        assert!(contended(3_000 * 1000, 1000, true));
        assert!(!contended(2_000 * 1000, 1000, true));
        assert!(!contended(3_000 * 1000, 1000, false));
        // Did not run: no news.
        assert!(contended(0, 0, true) && !contended(0, 0, false));

        // This thread's own schedstat is readable on Linux.
        let own = File::open("/proc/thread-self/schedstat").unwrap();
        let (_, runs) = read_schedstat(&own).unwrap();
        assert!(runs > 0);

        // A writer follows what its schedstat says, once per window.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("schedstat");
        let set = |delay: u64, runs: u64| fs::write(&path, format!("123456 {delay} {runs}\n")).unwrap();
        set(0, 0);
        let mut pacing = Pacing::from(Some(File::open(&path).unwrap()));
        let past = || std::time::Instant::now() - PACING_WINDOW;
        assert!(!pacing.wait_now(), "starts not waiting");
        set(20_000 * 1000, 1000);
        assert!(!pacing.wait_now(), "read once per window only");
        pacing.read_at = past();
        assert!(pacing.wait_now(), "20 µs per run: contended");
        set(20_000 * 1000 + 1_000 * 1000, 2000);
        pacing.read_at = past();
        assert!(!pacing.wait_now(), "1 µs per run since: not contended");
        fs::write(&path, "garbled").unwrap();
        pacing.read_at = past();
        assert!(!pacing.wait_now(), "an unreadable schedstat changes nothing");
        assert_eq!(read_schedstat(&File::open(&path).unwrap()), None);
        assert!(Pacing::from(None).wait_now(), "no schedstat: always wait");
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            record::encode_into(&mut out, p);
        }
        out
    }

    /// Every record from the reader's position to the durable end.
    fn read_to_end(reader: &mut WalReader) -> Vec<Bytes> {
        let mut got = Vec::new();
        loop {
            let batch = tokio::task::block_in_place(|| reader.read(100, 1 << 20)).unwrap();
            if batch.is_empty() {
                return got;
            }
            got.extend(batch);
        }
    }

    /// Opens, waiting for an earlier handle's writer thread to let go of the lock.
    fn open(dir: &Path, segment_bytes: u64) -> Wal {
        for _ in 0..200 {
            match Wal::open(WalOptions {
                dir: dir.to_path_buf(),
                segment_bytes,
                name: "test",
                metric_prefix: "weir_test_log",
                gather: true,
            }) {
                Err(WalError::InUse(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
                other => return other.unwrap(),
            }
        }
        panic!("log still in use");
    }

    /// A gathering log's writer on a contended core, after a small group of many appends,
    /// waits for the runtime to go idle (here a thread reporting parks), at most
    /// [`IDLE_WAIT_MAX`]; groups of a few appends, large groups and a log of batches do
    /// not wait.
    #[tokio::test(flavor = "current_thread")]
    async fn a_gathering_writer_waits_for_an_idle_runtime_between_small_groups() {
        let tmp = tempfile::tempdir().unwrap();
        let open = |name: &'static str, gather| {
            Wal::open(WalOptions {
                dir: tmp.path().join(name),
                segment_bytes: 64 << 20,
                name,
                metric_prefix: "weir_test_log",
                gather,
            })
            .unwrap()
        };
        runtime_parked(); // a runtime that reports its parks
        ALWAYS_WAIT.store(true, Ordering::Relaxed); // a contended core
        let wal = open("gathers", true);
        // An early batch of appends at a time (one group each): nothing parks, so each wait
        // ends at the limit, and 5 such groups one after the other take at least 4 of them.
        let many = || async {
            let tasks: Vec<_> = (0..GATHER_EARLY_APPENDS)
                .map(|_| {
                    let wal = wal.clone();
                    tokio::spawn(async move { wal.append(framed(&[b"small"])).await })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        };
        let started = std::time::Instant::now();
        for _ in 0..5 {
            many().await;
        }
        assert!(started.elapsed() >= IDLE_WAIT_MAX * 4, "{:?}", started.elapsed());
        assert!(wal.idle_waits().0 >= 4, "{:?}", wal.idle_waits());
        // One append at a time (one sender): little to gather, no waits.
        let waits = wal.idle_waits();
        for _ in 0..5 {
            wal.append(framed(&[b"small"])).await.unwrap();
        }
        assert!(
            wal.idle_waits().0 <= waits.0 + 1,
            "{:?} after {waits:?}",
            wal.idle_waits()
        );
        // A runtime that parks all the time: waits end when it does.
        let stop = Arc::new(AtomicBool::new(false));
        let parker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    runtime_parked();
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            })
        };
        let (_, idle) = wal.idle_waits();
        for _ in 0..5 {
            many().await;
        }
        assert!(wal.idle_waits().1 > idle, "{:?}", wal.idle_waits());
        stop.store(true, Ordering::Relaxed);
        parker.join().unwrap();
        // Groups of 2 MiB: after a few, the writer takes them at once.
        let big = vec![b'x'; 2 * DEFER_MAX_GROUP as usize];
        for _ in 0..8 {
            wal.append(framed(&[&big])).await.unwrap();
        }
        let waits = wal.idle_waits();
        for _ in 0..4 {
            wal.append(framed(&[&big])).await.unwrap();
        }
        assert_eq!(wal.idle_waits(), waits, "large groups: no waits");
        // A log of batches never waits.
        let batches = open("batches", false);
        for _ in 0..3 {
            batches.append(framed(&[b"small"])).await.unwrap();
        }
        assert_eq!(batches.idle_waits(), (0, 0));
    }

    /// Appends made in one turn of the runtime go to the disk together: five tasks ready
    /// at once are one group and one `fdatasync` (they were five when each append woke the
    /// writer); twenty are at most three (a batch of [`GATHER_EARLY_APPENDS`] goes to an
    /// idle writer at once). Every append still gets its own span, in order.
    #[tokio::test(flavor = "current_thread")]
    async fn appends_of_one_turn_share_one_fdatasync() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 1 << 20);
        for (n, most) in [(5, 1), (20, 3)] {
            let before = wal.syncs();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        // A request's parse and validation, on the runtime's thread: long
                        // enough for the writer to wake between two appends if it were woken.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        wal.append_span(framed(&[format!("r{i:02}").as_bytes()])).await.unwrap()
                    })
                })
                .collect();
            let mut spans = Vec::new();
            for t in tasks {
                spans.push(t.await.unwrap());
            }
            let syncs = wal.syncs() - before;
            assert!(
                (1..=most).contains(&syncs),
                "{n} appends of one turn took {syncs} fdatasyncs"
            );
            for pair in spans.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "spans follow each other in the order appended");
            }
        }
        // All 25 records in one read (no `block_in_place` on this runtime).
        let mut got = wal.reader(wal.first_position().unwrap()).read(100, 1 << 20).unwrap();
        got.truncate(6);
        assert_eq!(got[..5], ["r00", "r01", "r02", "r03", "r04"].map(Bytes::from));
        assert_eq!(got[5], "r00");
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
        wal.release_before(reader.position()).await.unwrap();
        assert!(wal.segments() < before);
        assert_eq!(wal.bytes(), 0, "every full segment was released");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn each_append_of_a_group_commit_gets_its_own_span() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 100);
        // Waves of writers at once: group commits of several appends, segments rolling
        // between them.
        let mut spans = Vec::new();
        for wave in 0..4u32 {
            let tasks: Vec<_> = (0..10u32)
                .map(|i| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        let payload = format!("record-{wave}{i}-{}", "x".repeat(i as usize % 7));
                        (
                            payload.clone(),
                            wal.append_span(framed(&[payload.as_bytes()])).await.unwrap(),
                        )
                    })
                })
                .collect();
            for t in tasks {
                spans.push(t.await.unwrap());
            }
        }
        assert!(wal.segments() > 2);
        for (payload, (start, end)) in spans {
            assert_eq!(start.segment, end.segment);
            assert_eq!(end.offset - start.offset, (payload.len() + record::HEADER_LEN) as u64);
            let mut reader = wal.reader(start);
            let got = tokio::task::block_in_place(|| reader.read_with_ends(1, 1 << 20)).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(&got[0].0[..], payload.as_bytes(), "the span starts at its own record");
            assert_eq!(got[0].1, end);
        }
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
        let got = read_to_end(&mut wal.reader(wal.first_position().unwrap()));
        let got: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"c"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn preallocated_space_is_never_read_nor_kept_after_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let seg = segment_path(tmp.path(), 1);
        let data = framed(&[b"a", b"bb"]);
        {
            let wal = open(tmp.path(), 64 << 20);
            wal.append(data.clone()).await.unwrap();
            assert_eq!(wal.bytes(), data.len() as u64);
            assert_eq!(
                fs::metadata(&seg).unwrap().len(),
                data.len() as u64 + PREALLOCATE_BYTES,
                "the writer preallocates ahead of the data"
            );
            let mut reader = wal.reader(wal.first_position().unwrap());
            let got = tokio::task::block_in_place(|| reader.read(100, 1 << 20)).unwrap();
            assert_eq!(got.len(), 2);
            let more = tokio::task::block_in_place(|| reader.read(100, 1 << 20)).unwrap();
            assert!(more.is_empty(), "the zeros after the durable end are not records");
        }
        // A crash leaves the zeros, here with half a record written into them.
        let mut torn = Vec::new();
        record::encode_into(&mut torn, b"never acknowledged");
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&torn[..10], data.len() as u64).unwrap();
        drop(f);
        let wal = open(tmp.path(), 64 << 20);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            data.len() as u64,
            "reopening cuts both"
        );
        assert_eq!(wal.bytes(), data.len() as u64);
        wal.append(framed(&[b"c"])).await.unwrap();
        let got = read_to_end(&mut wal.reader(wal.first_position().unwrap()));
        let got: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        assert_eq!(got, vec![&b"a"[..], b"bb", b"c"]);
    }

    /// The blocks past the data are written zeros, not only reserved: the appends after
    /// the first overwrite blocks the file system already holds, and their `fdatasync`
    /// does not change the extent tree. On ext4 and XFS, `SEEK_HOLE` reports reserved but
    /// never written space as a hole (elsewhere it may report the file's end, which
    /// passes too).
    #[tokio::test(flavor = "multi_thread")]
    async fn zeros_are_written_ahead_of_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 64 << 20);
        let data = framed(&[&[7u8; 3000]]);
        let end = wal.append(data.clone()).await.unwrap();
        let file = File::open(segment_path(tmp.path(), end.segment)).unwrap();
        let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)).unwrap();
        assert!(
            hole >= end.offset + ZERO_FILL_BYTES,
            "written up to {hole}, data ends at {}",
            end.offset
        );
        // Past the zero-filled part the segment is reserved, and the data is still all
        // there is to read.
        assert_eq!(file.metadata().unwrap().len(), end.offset + PREALLOCATE_BYTES);
        let got = read_to_end(&mut wal.reader(wal.first_position().unwrap()));
        assert_eq!(got.len(), 1);
    }

    /// Large groups overwrite no zeros: past the zeros written while the writer had seen
    /// only small groups, the segment is reserved, not written. Checked where the file
    /// system reports reserved space as a hole (ext4, XFS), which the test first asks it.
    #[tokio::test(flavor = "multi_thread")]
    async fn large_groups_are_not_zero_filled() {
        let tmp = tempfile::tempdir().unwrap();
        let probe = tmp.path().join("probe");
        let f = File::create(&probe).unwrap();
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 1 << 20).unwrap();
        if rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(0)).unwrap() != 0 {
            return; // Reserved space is reported as data here: nothing to tell apart.
        }
        let wal = open(tmp.path(), 64 << 20);
        let mut end = Position::default();
        for _ in 0..12 {
            end = wal.append(framed(&[&[7u8; 100_000]])).await.unwrap();
        }
        let file = File::open(segment_path(tmp.path(), end.segment)).unwrap();
        let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)).unwrap();
        assert!(
            hole < end.offset + 4096,
            "written up to {hole}, data ends at {}",
            end.offset
        );
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
            metric_prefix: "weir_test_log",
            gather: false,
        })
        .err()
        .unwrap();
        assert!(matches!(err, WalError::InUse(_)), "{err}");
        drop(wal);
    }

    #[test]
    fn a_group_of_more_buffers_than_iov_max_is_written_whole_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let f = File::create(&path).unwrap();
        let bufs: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_string().into_bytes()).collect();
        write_all_at(&f, bufs.iter().map(|b| b.as_slice()).chain([&[][..]]), 0).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bufs.concat());
        write_all_at(&f, [&b"xy"[..]].into_iter(), 1).unwrap();
        assert_eq!(
            &fs::read(&path).unwrap()[..4],
            b"0xy3",
            "written where asked, not at the end"
        );
    }

    #[test]
    fn cursor_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.cursor");
        assert_eq!(read_cursor(&path), SavedCursor::Missing);
        let pos = Position { segment: 3, offset: 99 };
        save_cursor(&path, pos).unwrap();
        assert_eq!(read_cursor(&path), SavedCursor::At(pos));
        assert!(!tmp.path().join("c.cursor.tmp").exists());
        fs::write(&path, b"").unwrap();
        assert!(matches!(read_cursor(&path), SavedCursor::Unreadable(w) if w.contains("empty")));
        fs::write(&path, b"{\"segm").unwrap();
        assert!(matches!(read_cursor(&path), SavedCursor::Unreadable(_)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unusable_cursor_resumes_at_the_oldest_record() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 1 << 20);
        let end = wal.append(framed(&[b"a"])).await.unwrap();
        let path = tmp.path().join("r.cursor");
        let first = wal.first_position().unwrap();
        assert_eq!(
            wal.resume(&path, end, "weir_test_cursor_resets_total").unwrap(),
            end,
            "missing: the default"
        );
        for garbage in [&b""[..], b"nonsense", b"{\"segment\":99999,\"offset\":0}"] {
            fs::write(&path, garbage).unwrap();
            assert_eq!(wal.resume(&path, end, "weir_test_cursor_resets_total").unwrap(), first);
        }
        save_cursor(&path, Position { segment: 0, offset: 5 }).unwrap();
        assert_eq!(
            wal.resume(&path, end, "weir_test_cursor_resets_total").unwrap(),
            first,
            "older than the oldest segment"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn releasing_the_whole_log_rolls_the_active_segment_away() {
        let tmp = tempfile::tempdir().unwrap();
        // Segments far larger than what is written: the active one must still go.
        let wal = open(tmp.path(), 1 << 30);
        let mut end = wal.durable();
        for _ in 0..10 {
            end = wal.append(framed(&[&[1u8; 200_000]])).await.unwrap();
        }
        assert_eq!(wal.segments(), 1);
        assert!(wal.bytes() >= 2_000_000);
        let freed = wal.release_before(end).await.unwrap();
        assert!(freed >= 2_000_000, "freed {freed}");
        assert_eq!(wal.bytes(), 0);
        // Appends go on in the new segment, and a reader at the old end reads them.
        let mut reader = wal.reader(end);
        wal.append(framed(&[b"after"])).await.unwrap();
        let got = tokio::task::block_in_place(|| reader.read(10, 1 << 20)).unwrap();
        assert_eq!(&got[0][..], b"after");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reader_skips_damage_to_the_next_intact_record() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = open(tmp.path(), 1 << 30);
        let start = wal.durable();
        wal.append(framed(&[b"one", b"two", b"three"])).await.unwrap();
        // Damage the second record's payload in place.
        let seg = segment_path(tmp.path(), start.segment);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"XX", (record::HEADER_LEN + 3 + record::HEADER_LEN) as u64)
            .unwrap();
        let mut reader = wal.reader(start);
        let mut got = Vec::new();
        loop {
            let batch = tokio::task::block_in_place(|| reader.read(10, 1 << 20)).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch);
        }
        let got: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        assert_eq!(got, vec![&b"one"[..], b"three"]);
    }

    /// Model-based test (as Vector's disk buffer has): random appends, reads, releases
    /// and crashes that leave a torn write at a random byte of the last segment, checked
    /// against a plain list of acknowledged records. A reader resumed from its saved
    /// cursor must see exactly the acknowledged records after it, in order: nothing lost,
    /// nothing torn read as a record.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Append(Vec<usize>),
            Read(usize),
            Release,
            Crash(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => proptest::collection::vec(1usize..300, 1..5).prop_map(Op::Append),
                3 => (1usize..10).prop_map(Op::Read),
                2 => Just(Op::Release),
                1 => (1usize..60).prop_map(Op::Crash),
            ]
        }

        fn payload(n: usize, seq: usize) -> Vec<u8> {
            let mut p = format!("{seq}:").into_bytes();
            p.resize(n.max(p.len()), (seq % 251) as u8);
            p
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            #[test]
            fn the_log_matches_a_list_of_acknowledged_records(ops in proptest::collection::vec(op(), 1..60)) {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
                let tmp = tempfile::tempdir().unwrap();
                let cursor = tmp.path().join("model.cursor");
                let mut wal = Some(open(tmp.path(), 512));
                let start = wal.as_ref().unwrap().first_position().unwrap();
                let mut reader = wal.as_ref().unwrap().reader(start);
                let (mut acked, mut next, mut saved) = (Vec::<Vec<u8>>::new(), 0usize, 0usize);
                save_cursor(&cursor, start).unwrap();
                for op in ops {
                    let w = wal.as_ref().unwrap();
                    match op {
                        Op::Append(sizes) => {
                            let records: Vec<Vec<u8>> =
                                sizes.iter().enumerate().map(|(i, n)| payload(*n, acked.len() + i)).collect();
                            let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
                            rt.block_on(w.append(framed(&refs))).unwrap();
                            acked.extend(records);
                        }
                        Op::Read(max) => {
                            let got = reader.read(max, 1 << 20).unwrap();
                            let want = &acked[next..(next + max).min(acked.len())];
                            let got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
                            // A read may stop early at a segment's end, never at nothing.
                            prop_assert!(got.len() <= want.len() && (!got.is_empty() || want.is_empty()));
                            prop_assert_eq!(&got[..], &want[..got.len()]);
                            next += got.len();
                        }
                        Op::Release => {
                            rt.block_on(w.release_before(reader.position())).unwrap();
                            save_cursor(&cursor, reader.position()).unwrap();
                            saved = next;
                        }
                        Op::Crash(torn) => {
                            // The process dies mid-append: part of a record is on disk, at
                            // the durable end (in the zeros preallocated after it).
                            let end = w.durable();
                            drop(wal.take());
                            let mut partial = Vec::new();
                            record::encode_into(&mut partial, &payload(400, 999_999));
                            let f = OpenOptions::new().write(true).open(segment_path(tmp.path(), end.segment)).unwrap();
                            f.write_all_at(&partial[..torn.min(partial.len() - 1)], end.offset).unwrap();
                            drop(f);
                            let w = open(tmp.path(), 512);
                            let from = w.resume(&cursor, w.first_position().unwrap(), "weir_test_cursor_resets_total").unwrap();
                            reader = w.reader(from);
                            next = saved;
                            wal = Some(w);
                        }
                    }
                }
                // Whatever happened, the rest reads back whole.
                let mut rest = Vec::new();
                loop {
                    let got = reader.read(1000, 1 << 20).unwrap();
                    if got.is_empty() {
                        break;
                    }
                    rest.extend(got.iter().map(|b| b.to_vec()));
                }
                prop_assert_eq!(&rest[..], &acked[next..]);
            }
        }
    }
}
