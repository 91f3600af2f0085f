//! Metric handles cached per recorder, read without locks.
//!
//! `metrics` resolves a handle through the recorder current at the call: a
//! thread-local one set by `with_local_recorder`, else the global one, else a
//! no-op. A handle resolved before an exporter is installed is a no-op
//! forever, so a cache must know which recorder each handle came from.
//!
//! A registry numbers the recorders it meets by address ([`Recorders`]): the
//! first two claim write-once slots 0 and 1 for good, which serves the common
//! lives of a process without locks (one recorder, or the no-op then the
//! exporter). Every cached metric ([`Handles`]) keeps one write-once handle
//! per slot, so a request finds its recorder's slot once, when it enters,
//! and then reads each handle with one atomic load. Any further recorder
//! (tests swapping local recorders) shares one replaceable slot behind a
//! lock.

use std::sync::{OnceLock, RwLock};

use metrics::Recorder;

/// The slot of recorders past the first two.
pub(crate) const SPARE: u8 = 2;

/// The identity of a recorder: its address.
fn recorder_id(recorder: &dyn Recorder) -> usize {
    recorder as *const dyn Recorder as *const () as usize
}

/// The recorders a registry has met, by address.
#[derive(Debug, Default)]
pub(crate) struct Recorders {
    fixed: [OnceLock<usize>; 2],
}

impl Recorders {
    /// The handle slot of `recorder`: 0 or 1, claimed for good by the first
    /// two recorders met, else [`SPARE`].
    #[inline]
    pub(crate) fn slot(&self, recorder: &dyn Recorder) -> u8 {
        let id = recorder_id(recorder);
        for (i, slot) in self.fixed.iter().enumerate() {
            if *slot.get_or_init(|| id) == id {
                return i as u8;
            }
        }
        SPARE
    }
}

/// One metric's handle, per recorder slot.
#[derive(Debug)]
pub(crate) struct Handles<T> {
    fixed: [OnceLock<T>; 2],
    spare: RwLock<Option<(usize, T)>>,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Self {
            fixed: [OnceLock::new(), OnceLock::new()],
            spare: RwLock::new(None),
        }
    }
}

/// A handle from [`Handles::get`]: borrowed from a write-once slot, or a
/// clone of the replaceable one.
#[derive(Debug)]
pub(crate) enum Handle<'a, T> {
    Fixed(&'a T),
    Spare(T),
}

impl<T> std::ops::Deref for Handle<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Handle::Fixed(handle) => handle,
            Handle::Spare(handle) => handle,
        }
    }
}

impl<T: Clone> Handles<T> {
    /// The handle of write-once slot `slot`, if resolved: the hot path.
    #[inline]
    pub(crate) fn resolved(&self, slot: u8) -> Option<&T> {
        self.fixed.get(usize::from(slot))?.get()
    }

    /// The handle for `recorder`, whose slot is `slot` (from
    /// [`Recorders::slot`]); `register` resolves it once per fixed slot, or
    /// again when the spare slot moved to another recorder.
    #[inline]
    pub(crate) fn get(
        &self,
        slot: u8,
        recorder: &dyn Recorder,
        register: impl FnOnce(&dyn Recorder) -> T,
    ) -> Handle<'_, T> {
        match self.fixed.get(usize::from(slot)) {
            Some(fixed) => Handle::Fixed(fixed.get_or_init(|| register(recorder))),
            None => self.spare(recorder, register),
        }
    }

    #[cold]
    fn spare(
        &self,
        recorder: &dyn Recorder,
        register: impl FnOnce(&dyn Recorder) -> T,
    ) -> Handle<'_, T> {
        let id = recorder_id(recorder);
        let spare = self.spare.read().unwrap_or_else(|e| e.into_inner());
        if let Some((_, handle)) = spare.as_ref().filter(|(r, _)| *r == id) {
            return Handle::Spare(handle.clone());
        }
        drop(spare);
        let handle = register(recorder);
        *self.spare.write().unwrap_or_else(|e| e.into_inner()) = Some((id, handle.clone()));
        Handle::Spare(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Gauge, NoopRecorder};
    use metrics_util::debugging::DebuggingRecorder;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn resolves_once_per_recorder() {
        let recorders = Recorders::default();
        let handles = Handles::<Gauge>::default();
        let registered = AtomicUsize::new(0);
        let register = |r: &dyn Recorder| {
            registered.fetch_add(1, Ordering::Relaxed);
            let key = metrics::Key::from_name("g");
            r.register_gauge(
                &key,
                &metrics::Metadata::new("t", metrics::Level::INFO, None),
            )
        };
        let get = |r: &dyn Recorder| handles.get(recorders.slot(r), r, register);
        let (a, b, c) = (
            DebuggingRecorder::new(),
            DebuggingRecorder::new(),
            NoopRecorder,
        );
        let snapshot = |r: &DebuggingRecorder| r.snapshotter().snapshot().into_vec().len();
        for _ in 0..3 {
            get(&a).increment(1.0);
            get(&b).increment(1.0);
        }
        assert_eq!(
            registered.load(Ordering::Relaxed),
            2,
            "fixed slots: no re-resolution"
        );
        assert_eq!((recorders.slot(&a), recorders.slot(&b)), (0, 1));
        assert!(handles.resolved(0).is_some() && handles.resolved(SPARE).is_none());
        // A third recorder uses the spare slot; switching back and forth re-resolves.
        assert_eq!(recorders.slot(&c), SPARE);
        get(&c).increment(1.0);
        get(&c).increment(1.0);
        assert_eq!(registered.load(Ordering::Relaxed), 3);
        assert!(matches!(get(&a), Handle::Fixed(_)));
        assert_eq!((snapshot(&a), snapshot(&b)), (1, 1));
    }
}
