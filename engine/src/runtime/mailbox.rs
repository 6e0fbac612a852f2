//! A machine's mailbox: its bounded event queue, its requests (engine controls and live
//! operations), and, while it has nothing to do, the parked machine itself.
//!
//! One mailbox per machine, inside its shared status, instead of three channels: a tokio
//! channel allocates its first block of 32 slots when it is made, about 10 KB for the
//! three, which with 100,000 idle instances was most of their memory. Here the three
//! queues are `VecDeque`s that allocate nothing until something is queued, under one
//! lock (the machine's task and its senders are the only ones to take it, each for a few
//! instructions).
//!
//! A machine with nothing to do may park in its mailbox ([`Mailbox::park`]) instead of
//! keeping a task that waits: the next event or request takes it out and resumes it
//! ([`Resume`]: the launcher spawns a task for it again). See `runtime/launch.rs`.
//!
//! Backpressure: a full event queue refuses [`Mailbox::try_send`]; a sender that waits
//! does so on [`Mailbox::space`], notified when an event is taken out of a full queue,
//! and when the mailbox closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use super::event::Event;

/// A parked machine, resumed by the first event or request that comes for it.
pub(crate) trait Resume: Send {
    /// Runs the machine again (on a task of its own).
    fn resume(self: Box<Self>);
}

/// Why an event was not queued.
#[derive(Debug)]
pub enum TrySendError {
    /// The queue is full: the event is handed back.
    Full(Event),
    /// The machine has stopped.
    Closed(Event),
}

/// What the machine's task takes out of its mailbox.
pub(crate) enum Msg<C, L> {
    /// An engine request.
    Control(C),
    /// A live operation.
    Live(L),
    /// An event.
    Event(Event),
}

/// Events (bounded), requests of two kinds (unbounded: they come from the engine, which
/// waits for each answer), and the parked machine.
pub(crate) struct Mailbox<C, L> {
    inner: Mutex<Inner<C, L>>,
    /// The events queued, written under the lock, read without it.
    len: AtomicUsize,
    capacity: usize,
    /// Senders waiting for room.
    space: Notify,
}

struct Inner<C, L> {
    events: VecDeque<Event>,
    control: VecDeque<C>,
    live: VecDeque<L>,
    /// The machine's task, while it waits for its mailbox.
    waker: Option<Waker>,
    /// The machine, while it is parked without a task.
    parked: Option<Box<dyn Resume>>,
    closed: bool,
}

impl<C, L> Inner<C, L> {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.control.is_empty() && self.live.is_empty()
    }

    /// What is to be done, once the lock is released, about something just queued.
    fn wake(&mut self) -> Wake {
        if let Some(p) = self.parked.take() {
            return Wake::Resume(p);
        }
        match self.waker.take() {
            Some(w) => Wake::Task(w),
            None => Wake::Nothing,
        }
    }
}

enum Wake {
    Nothing,
    Task(Waker),
    Resume(Box<dyn Resume>),
}

impl Wake {
    fn run(self) {
        match self {
            Wake::Nothing => {}
            Wake::Task(w) => w.wake(),
            Wake::Resume(p) => p.resume(),
        }
    }
}

impl<C, L> Mailbox<C, L> {
    /// An empty mailbox for at most `capacity` queued events (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                control: VecDeque::new(),
                live: VecDeque::new(),
                waker: None,
                parked: None,
                closed: false,
            }),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C, L>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event if there is room (a parked machine is resumed).
    pub(crate) fn try_send(&self, ev: Event) -> Result<(), TrySendError> {
        let mut g = self.lock();
        if g.closed {
            return Err(TrySendError::Closed(ev));
        }
        if g.events.len() >= self.capacity {
            return Err(TrySendError::Full(ev));
        }
        g.events.push_back(ev);
        self.len.store(g.events.len(), Ordering::Relaxed);
        let wake = g.wake();
        drop(g);
        wake.run();
        Ok(())
    }

    /// Notified when room is made in a full queue, and when the mailbox closes: a sender
    /// that found the queue full enables its `notified()` before trying again.
    pub(crate) fn space(&self) -> &Notify {
        &self.space
    }

    /// Queues an engine request; handed back when the machine has stopped.
    pub(crate) fn control(&self, c: C) -> Result<(), C> {
        let mut g = self.lock();
        if g.closed {
            return Err(c);
        }
        g.control.push_back(c);
        let wake = g.wake();
        drop(g);
        wake.run();
        Ok(())
    }

    /// Queues a live operation; handed back when the machine has stopped.
    pub(crate) fn live(&self, l: L) -> Result<(), L> {
        let mut g = self.lock();
        if g.closed {
            return Err(l);
        }
        g.live.push_back(l);
        let wake = g.wake();
        drop(g);
        wake.run();
        Ok(())
    }

    /// The next queued event, if any.
    #[inline]
    pub(crate) fn try_recv(&self) -> Option<Event> {
        let mut g = self.lock();
        let full = g.events.len() >= self.capacity;
        let ev = g.events.pop_front();
        self.len.store(g.events.len(), Ordering::Relaxed);
        drop(g);
        if full && ev.is_some() {
            self.space.notify_one();
        }
        ev
    }

    /// The next queued live operation, if any.
    pub(crate) fn try_recv_live(&self) -> Option<L> {
        self.lock().live.pop_front()
    }

    /// The next request (engine requests first, then live operations) or, when `events`,
    /// event; else the task is woken when one comes.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>, events: bool) -> Poll<Msg<C, L>> {
        let mut g = self.lock();
        if let Some(c) = g.control.pop_front() {
            return Poll::Ready(Msg::Control(c));
        }
        if let Some(l) = g.live.pop_front() {
            return Poll::Ready(Msg::Live(l));
        }
        if events {
            let full = g.events.len() >= self.capacity;
            if let Some(ev) = g.events.pop_front() {
                self.len.store(g.events.len(), Ordering::Relaxed);
                drop(g);
                if full {
                    self.space.notify_one();
                }
                return Poll::Ready(Msg::Event(ev));
            }
        }
        match &mut g.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// [`Self::poll_recv`] as a future.
    pub(crate) async fn recv(&self, events: bool) -> Msg<C, L> {
        std::future::poll_fn(|cx| self.poll_recv(cx, events)).await
    }

    /// Events queued.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Nothing is queued (events or requests).
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().is_empty()
    }

    /// The machine stopped: nothing more is queued, what is queued is dropped (requests
    /// waiting for an answer get none: their callers see the machine stopped), waiting
    /// senders are told.
    pub(crate) fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        let events = std::mem::take(&mut g.events);
        self.len.store(0, Ordering::Relaxed);
        let control = std::mem::take(&mut g.control);
        let live = std::mem::take(&mut g.live);
        let parked = g.parked.take();
        g.waker = None;
        drop(g);
        drop((events, control, live, parked));
        self.space.notify_waiters();
    }

    /// Closed: the machine has stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Parks the machine `m` here until the next event or request, unless one is queued
    /// already or `still` (read under the lock) says no: then it is handed back.
    pub(crate) fn park<T: Resume + 'static>(
        &self,
        m: Box<T>,
        still: impl FnOnce(&T) -> bool,
    ) -> Result<(), Box<T>> {
        let mut g = self.lock();
        if g.closed || !g.is_empty() || !still(&m) {
            return Err(m);
        }
        g.waker = None;
        g.parked = Some(m);
        Ok(())
    }

    /// Resumes the parked machine, if any (the engine shuts down: it is to see that).
    pub(crate) fn unpark(&self) {
        let p = self.lock().parked.take();
        if let Some(p) = p {
            p.resume();
        }
    }

    /// A machine is parked here.
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.lock().parked.is_some()
    }

    /// Takes the parked machine out without resuming it (the engine is dropped: this
    /// breaks the cycle between the machine and its own status).
    pub(crate) fn take_parked(&self) -> Option<Box<dyn Resume>> {
        self.lock().parked.take()
    }
}
