//! A zone's events as a [`futures_core::Stream`] ([`ZoneHandle::events_async`]).

use crate::events::{COALESCE_FOR, EventStream, ZoneEvent};
use crate::zone::ZoneHandle;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Sleep;

/// A subscription to a zone's events, for a task: the same events as [`EventStream`] (the
/// first subscription of a zone holds every event since it was built), ending once the zone is
/// gone and the queue is empty.
///
/// ```no_run
/// # async fn run(zone: &zone_core::Zone) {
/// let mut events = zone.events_async();
/// while let Some(event) = events.next().await {
///     println!("{event}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncEvents {
    inner: EventStream,
    /// While waiting, a timer that lets coalesced violations through when they are due.
    tick: Option<Pin<Box<Sleep>>>,
}

impl AsyncEvents {
    /// The next event; `None` once the zone is gone and every event was taken.
    pub async fn next(&mut self) -> Option<ZoneEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<ZoneEvent>> {
        loop {
            if let Poll::Ready(event) = self.inner.poll_event(cx) {
                self.tick = None;
                return Poll::Ready(event);
            }
            let tick = self
                .tick
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(COALESCE_FOR)));
            if tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Coalesced violations may be due: look again, with a fresh timer.
            self.tick = None;
        }
    }
}

impl From<EventStream> for AsyncEvents {
    fn from(inner: EventStream) -> Self {
        Self { inner, tick: None }
    }
}

impl futures_core::Stream for AsyncEvents {
    type Item = ZoneEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ZoneEvent>> {
        self.get_mut().poll_event(cx)
    }
}

impl ZoneHandle {
    /// A new subscription to the zone's events as a stream for tasks (see
    /// [`ZoneHandle::events`] for which events it holds).
    pub fn events_async(&self) -> AsyncEvents {
        self.events().into()
    }
}
