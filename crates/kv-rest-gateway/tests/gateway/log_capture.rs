//! The `warn` and `error` lines of a test binary, captured by one global subscriber (the
//! operator ACL tests read them to check what the gateway logged, and how often).

use std::sync::{Mutex, Once};

/// Every `warn` and `error` line of this test binary.
pub(crate) static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

pub(crate) struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per binary).
pub(crate) fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
}
