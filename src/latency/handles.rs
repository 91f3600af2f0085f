//! Metric handles cached per recorder, read without locks.
//!
//! `metrics` resolves a handle through the recorder current at the call: a
//! thread-local one set by `with_local_recorder`, else the global one, else a
//! no-op. A handle resolved before an exporter is installed is a no-op
//! forever, so a cache must know which recorder each handle came from. Here
//! every handle is stored with the address of its recorder, and each use
//! compares it with the address of the recorder `metrics` would use now (a
//! thread-local read and an atomic load: no registry lookup, no lock).
//!
//! Two write-once slots serve the common lives of a process without locks:
//! one recorder for good, or the no-op then the exporter. Any further
//! recorder (tests swapping local recorders) goes through one replaceable
//! slot behind a lock.

use std::sync::{OnceLock, RwLock};

use metrics::Recorder;

/// The identity of a recorder: its address.
fn recorder_id(recorder: &dyn Recorder) -> usize {
    recorder as *const dyn Recorder as *const () as usize
}

#[derive(Debug)]
struct Resolved<T> {
    recorder: usize,
    handle: T,
}

/// One metric's handle, per recorder.
#[derive(Debug)]
pub(crate) struct Handles<T> {
    fixed: [OnceLock<Resolved<T>>; 2],
    spare: RwLock<Option<Resolved<T>>>,
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
    Fixed(&'a T, u8),
    Spare(T),
}

impl<T> std::ops::Deref for Handle<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Handle::Fixed(handle, _) => handle,
            Handle::Spare(handle) => handle,
        }
    }
}

impl<T: Clone> Handles<T> {
    /// The handle for the current recorder; `register` resolves it (once per
    /// recorder, or again after the spare slot moved to another recorder).
    pub(crate) fn get(&self, register: &dyn Fn(&dyn Recorder) -> T) -> Handle<'_, T> {
        metrics::with_recorder(|recorder| {
            let id = recorder_id(recorder);
            for (i, slot) in self.fixed.iter().enumerate() {
                let resolved = slot.get_or_init(|| Resolved {
                    recorder: id,
                    handle: register(recorder),
                });
                if resolved.recorder == id {
                    return Handle::Fixed(&resolved.handle, i as u8);
                }
            }
            let spare = self.spare.read().unwrap_or_else(|e| e.into_inner());
            if let Some(resolved) = spare.as_ref().filter(|r| r.recorder == id) {
                return Handle::Spare(resolved.handle.clone());
            }
            drop(spare);
            let handle = register(recorder);
            *self.spare.write().unwrap_or_else(|e| e.into_inner()) = Some(Resolved {
                recorder: id,
                handle: handle.clone(),
            });
            Handle::Spare(handle)
        })
    }

    /// The handle in write-once slot `i`, as returned by [`get`](Self::get).
    pub(crate) fn fixed(&self, i: u8) -> &T {
        &self.fixed[usize::from(i)]
            .get()
            .expect("a fixed slot is set before its index is handed out")
            .handle
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
        let (a, b, c) = (
            DebuggingRecorder::new(),
            DebuggingRecorder::new(),
            NoopRecorder,
        );
        let snapshot = |r: &DebuggingRecorder| r.snapshotter().snapshot().into_vec().len();
        for _ in 0..3 {
            metrics::with_local_recorder(&a, || handles.get(&register).increment(1.0));
            metrics::with_local_recorder(&b, || handles.get(&register).increment(1.0));
        }
        assert_eq!(
            registered.load(Ordering::Relaxed),
            2,
            "fixed slots: no re-resolution"
        );
        assert!(matches!(
            metrics::with_local_recorder(&a, || handles.get(&register)),
            Handle::Fixed(_, 0)
        ));
        // A third recorder uses the spare slot; switching back and forth re-resolves.
        metrics::with_local_recorder(&c, || handles.get(&register).increment(1.0));
        metrics::with_local_recorder(&c, || handles.get(&register).increment(1.0));
        assert_eq!(registered.load(Ordering::Relaxed), 3);
        assert_eq!((snapshot(&a), snapshot(&b)), (1, 1));
    }
}
