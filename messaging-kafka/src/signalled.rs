//! A handle on a librdkafka queue that raises a signal of ours when the queue stops being
//! empty (`rd_kafka_queue_cb_event_enable`): the record queue wakes the consumer's task
//! with it, the producer's event queue its polling thread. rdkafka has no safe API for the
//! callback, hence this module's unsafe code.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::{self, NonNull};

use rdkafka::bindings as rd;

/// What librdkafka raises. Called under the queue's lock, from whichever thread queued the
/// element: it must not call librdkafka, nor wait for anyone who might.
pub(crate) trait Signal: Send + Sync {
    fn raise(&self);
}

/// A queue handle of ours, signalled on arrivals, destroyed on drop. It must be dropped
/// before its client is destroyed.
pub(crate) struct SignalledQueue<S: Signal> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Boxed: its address is what librdkafka holds.
    signal: Box<S>,
}

// SAFETY: librdkafka's queues are thread-safe (every operation takes the queue's lock), the
// handle is destroyed only by `Drop`, and the signal is `Send + Sync`.
unsafe impl<S: Signal> Send for SignalledQueue<S> {}
unsafe impl<S: Signal> Sync for SignalledQueue<S> {}

/// Called by librdkafka, under the queue's lock, when an element arrives on an empty queue.
unsafe extern "C" fn arrived<S: Signal>(_: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the boxed signal, which outlives the callback (`Drop` disables it
    // first).
    let signal = unsafe { &*(opaque as *const S) };
    signal.raise();
}

impl<S: Signal> SignalledQueue<S> {
    /// A new, empty queue of the live client `rk`.
    pub(crate) fn new(rk: *mut rd::rd_kafka_t, signal: S) -> Option<Self> {
        // SAFETY: `rk` is a live client; the handle is ours to destroy.
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_new(rk) })?;
        Some(Self::signalling(queue, signal))
    }

    /// A handle on the main queue of the live client `rk` (a producer's event queue).
    pub(crate) fn main(rk: *mut rd::rd_kafka_t, signal: S) -> Option<Self> {
        // SAFETY: `rk` is a live client; the handle is ours to destroy.
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_get_main(rk) })?;
        Some(Self::signalling(queue, signal))
    }

    fn signalling(queue: NonNull<rd::rd_kafka_queue_t>, signal: S) -> Self {
        let signal = Box::new(signal);
        // SAFETY: the signal lives as long as the handle and is unregistered in `Drop`.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(arrived::<S>),
                ptr::from_ref::<S>(&signal) as *mut c_void,
            );
        }
        Self { queue, signal }
    }

    /// The handle, for librdkafka's calls; valid as long as `self`.
    pub(crate) fn as_ptr(&self) -> *mut rd::rd_kafka_queue_t {
        self.queue.as_ptr()
    }

    pub(crate) fn signal(&self) -> &S {
        &self.signal
    }

    /// How many elements the queue holds.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: a live handle.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) }
    }
}

impl<S: Signal> Drop for SignalledQueue<S> {
    fn drop(&mut self) {
        // SAFETY: disabling takes the queue's lock, so no callback runs past this line and
        // the signal can go; the handle is not used again.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}
