//! What each connection may hold: a write timeout, progress tracking and the connection
//! budget that sheds the connection idle the longest when a new one needs its slot.
//!
//! Every connection is accepted at once. [`Budget`] keeps at most its `max` connections:
//! when all slots are taken, the connection that has gone longest without moving a byte
//! in either direction is closed to make room. Clients that hold connections without
//! reading their answers or without finishing their headers (slow readers, slowloris)
//! are therefore the first to go, and a health probe, which connects, asks and reads at
//! once, is always served, even when every client comes from the same address (so a cap
//! per client address would lock the probe out with the crowd, and is not used).
//!
//! A connection serving `GET /events` is marked ([`Progress::set_streaming`]) and never
//! shed: a quiet stream moves a byte only every heartbeat, yet is a client doing what it
//! should; stream clients are bounded by their own limit instead.
//!
//! [`Tracked`] wraps a connection's stream: it records the time of the last byte read or
//! written, and fails a write that has made no progress for its write timeout, so a
//! client that stops reading cannot hold a response (and its slot) for ever.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;
use tokio::time::Sleep;

/// When a connection last moved a byte, in milliseconds since its budget's start.
#[derive(Debug)]
pub(super) struct Progress {
    base: tokio::time::Instant,
    last_ms: AtomicU64,
    /// The connection serves `GET /events` now: it is never the one shed (stream clients
    /// have their own limit), however long it goes between records.
    streaming: AtomicBool,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// Marks the connection as serving a stream (or no longer).
    pub(super) fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
    }
}

struct Entry {
    progress: Arc<Progress>,
    abort: AbortHandle,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// Connections shed since the last warning, and when that was.
    shed_since_warning: u64,
    warned: Option<Instant>,
}

/// How often shedding is logged at most (at `warn`; each one is logged at `debug`).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The connection budget: at most `max` connections; a new one takes the slot of the
/// one idle the longest.
pub(super) struct Budget {
    max: usize,
    base: tokio::time::Instant,
    table: Mutex<Table>,
}

impl Budget {
    /// A budget of `max` connections (at least 1).
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            base: tokio::time::Instant::now(),
            table: Mutex::default(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for a new connection (closing the one idle the longest when the budget
    /// is full) and starts it with `spawn`, which gets the connection's [`Slot`] and
    /// returns its task's abort handle.
    pub(super) fn admit(self: &Arc<Self>, spawn: impl FnOnce(Slot) -> AbortHandle) {
        let progress = Arc::new(Progress {
            base: self.base,
            last_ms: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
        });
        progress.touch();
        let mut shed = None;
        let mut warn = None;
        {
            let mut t = self.table();
            if t.conns.len() >= self.max {
                let victim = t
                    .conns
                    .iter()
                    .filter(|(_, e)| !e.progress.streaming.load(Ordering::Relaxed))
                    .min_by_key(|(id, e)| (e.progress.last(), **id))
                    .map(|(id, _)| *id);
                if let Some(e) = victim.and_then(|id| t.conns.remove(&id)) {
                    let idle =
                        Duration::from_millis(progress.last().saturating_sub(e.progress.last()));
                    shed = Some((e.abort, idle));
                    t.shed_since_warning += 1;
                    if t.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                        warn = Some(t.shed_since_warning);
                        t.shed_since_warning = 0;
                        t.warned = Some(Instant::now());
                    }
                }
            }
            let id = t.next_id;
            t.next_id += 1;
            // Spawned under the lock: the slot's removal (when the task ends) waits until
            // it has been entered.
            let abort = spawn(Slot {
                budget: self.clone(),
                id,
                progress: progress.clone(),
            });
            t.conns.insert(id, Entry { progress, abort });
        }
        if let Some((abort, idle)) = shed {
            abort.abort();
            tracing::debug!(
                target: "turnstile::sidecar",
                idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                "all {} connection slots taken: closed the connection idle the longest",
                self.max
            );
        }
        if let Some(n) = warn {
            tracing::warn!(
                target: "turnstile::sidecar",
                shed = n,
                "all {} connection slots are taken: new connections close the ones idle the longest (slow or stuck clients?)",
                self.max
            );
        }
    }

    /// Connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().conns.len()
    }
}

/// A connection's place in the budget; dropping it (when the connection's task ends or
/// is aborted) frees it.
pub(super) struct Slot {
    budget: Arc<Budget>,
    id: u64,
    progress: Arc<Progress>,
}

impl Slot {
    /// The connection's progress, for [`Tracked`].
    pub(super) fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.table().conns.remove(&self.id);
    }
}

/// A stream that records its progress and fails a write stalled for `write_timeout`.
pub(super) struct Tracked<T> {
    io: T,
    progress: Arc<Progress>,
    write_timeout: Duration,
    /// Running while a write waits for the client to read.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<T> Tracked<T> {
    pub(super) fn new(io: T, progress: Arc<Progress>, write_timeout: Duration) -> Self {
        Self {
            io,
            progress,
            write_timeout,
            stall: None,
        }
    }

    /// After a write returned `Pending`: an error once the stall lasts `write_timeout`.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.write_timeout;
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {timeout:?}"),
        )))
    }

    fn wrote(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.stall = None;
                if n > 0 {
                    self.progress.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = ready!(Pin::new(&mut this.io).poll_read(cx, buf));
        if r.is_ok() && buf.filled().len() > before {
            this.progress.touch();
        }
        Poll::Ready(r)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            r => {
                this.stall = None;
                r
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_write_the_client_never_reads_fails_after_the_timeout() {
        let (a, mut b) = tokio::io::duplex(1024);
        let budget = Budget::new(4);
        let progress = Arc::new(Progress {
            base: budget.base,
            last_ms: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
        });
        let timeout = Duration::from_millis(300);
        let mut t = Tracked::new(a, progress.clone(), timeout);
        // Progress while the reader keeps up, even with pauses longer than the timeout
        // between writes ...
        t.write_all(&[1; 1024]).await.unwrap();
        let mut got = vec![0; 1024];
        b.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(timeout * 2).await;
        t.write_all(&[2; 1000]).await.unwrap();
        assert!(progress.last() >= 600, "{}", progress.last());
        // ... and a slow reader that takes a little now and then keeps it going ...
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..4 {
                tokio::time::sleep(timeout / 3).await;
                b.read_exact(&mut buf).await.unwrap();
            }
            b
        });
        t.write_all(&[3; 2048]).await.unwrap();
        let _b = reader.await.unwrap();
        // ... then a write the reader never takes: an error after the timeout.
        let started = tokio::time::Instant::now();
        let e = t.write_all(&[4; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_full_budget_sheds_the_connection_idle_the_longest() {
        let budget = Budget::new(3);
        let mut progress = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            budget.admit(|slot| {
                progress.push(slot.progress());
                let t = tokio::spawn(async move {
                    let _slot = slot;
                    std::future::pending::<()>().await;
                });
                let a = t.abort_handle();
                tasks.push(t);
                a
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(budget.len(), 3);
        // The first connection moves a byte: the second is now idle the longest.
        tokio::time::sleep(Duration::from_millis(10)).await;
        progress[0].touch();
        budget.admit(|slot| {
            let t = tokio::spawn(async move {
                let _slot = slot;
                std::future::pending::<()>().await;
            });
            let a = t.abort_handle();
            tasks.push(t);
            a
        });
        let second = tasks.remove(1);
        assert!(second.await.unwrap_err().is_cancelled());
        assert_eq!(budget.len(), 3);
        for t in &tasks {
            assert!(!t.is_finished());
        }
        // A streaming connection is never the one shed, however idle: the first one is
        // now idle the longest, yet the third goes.
        progress[0].set_streaming(true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        progress[2].touch();
        tokio::time::sleep(Duration::from_millis(10)).await;
        budget.admit(|slot| {
            let t = tokio::spawn(async move {
                let _slot = slot;
                std::future::pending::<()>().await;
            });
            let a = t.abort_handle();
            tasks.push(t);
            a
        });
        // tasks: [first (streaming), third, fourth, fifth]; the fourth (admitted above,
        // never touched since) is the idle one among those that are not streaming.
        let fourth = tasks.remove(2);
        assert!(fourth.await.unwrap_err().is_cancelled());
        assert!(!tasks[0].is_finished() && !tasks[1].is_finished());
        assert_eq!(budget.len(), 3);
        // A connection that ends frees its slot.
        tasks[0].abort();
        tokio::task::yield_now().await;
        for _ in 0..10 {
            if budget.len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.len(), 2);
    }
}
