//! TLS (`rediss://`) support: make sure rustls has a crypto provider.

/// rustls needs a process-wide crypto provider. When the application installed none, install
/// ring's (a no-op when one is already there, or when another thread won the race). Only
/// `rediss://` URLs need it.
pub(crate) fn ensure_crypto_provider(url: &str) {
    if !url.starts_with("rediss://") {
        return;
    }
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
