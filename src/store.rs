//! Durable event log (being written: this is the interface the service
//! codes against; the SQLite writer thread replaces the body).

use std::path::Path;

use crate::events::Event;

/// Error opening or closing the store.
#[derive(Debug, thiserror::Error)]
#[error("event store: {0}")]
pub struct StoreError(pub String);

/// The open store; owns the writer thread.
pub struct Store {
    handle: StoreHandle,
}

/// Cheap-to-clone handle the service records events through. Never blocks
/// the async runtime.
#[derive(Clone, Default)]
pub struct StoreHandle {}

impl StoreHandle {
    /// Queues `event` for the writer thread.
    pub fn record(&self, _event: Event) {}
}

impl Store {
    /// Opens (creating, upgrading) the log in `dir`.
    pub fn open(_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            handle: StoreHandle::default(),
        })
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Writes everything queued and stops the writer thread.
    pub fn close(self) -> Result<(), StoreError> {
        Ok(())
    }
}
