//! The layer's settings, built by the [`LayerBuilder`](crate::LayerBuilder) and shared by every
//! service it builds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, StatusCode, response};

use crate::policy::{
    DEFAULT_HEADER, JsonFingerprint, OversizePolicy, default_is_stream, default_store_status,
};

type StatusPolicy = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;
type BodyCanonicalizer = Arc<dyn Fn(&Bytes) -> Bytes + Send + Sync>;
type StreamPredicate = Arc<dyn Fn(&response::Parts) -> bool + Send + Sync>;

/// The layer's settings, shared by every service it builds.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) key_required: bool,
    pub(crate) max_request_body: usize,
    pub(crate) store_status: StatusPolicy,
    pub(crate) keep_set_cookie: bool,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) canonical_body: Option<BodyCanonicalizer>,
    pub(crate) json: JsonFingerprint,
    pub(crate) oversize: OversizePolicy,
    pub(crate) is_stream: StreamPredicate,
    pub(crate) oversize_drain: usize,
    pub(crate) oversize_drain_time: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("methods", &self.methods)
            .field("header", &self.header)
            .field("key_required", &self.key_required)
            .field("max_request_body", &self.max_request_body)
            .field("keep_set_cookie", &self.keep_set_cookie)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("json", &self.json)
            .field("oversize", &self.oversize)
            .field("oversize_drain", &self.oversize_drain)
            .field("oversize_drain_time", &self.oversize_drain_time)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            methods: vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
            header: HeaderName::from_static(DEFAULT_HEADER),
            key_required: true,
            max_request_body: 1024 * 1024,
            store_status: Arc::new(default_store_status),
            keep_set_cookie: false,
            fingerprint_headers: Vec::new(),
            canonical_body: None,
            json: JsonFingerprint::Bytes,
            oversize: OversizePolicy::OmitBody,
            is_stream: Arc::new(default_is_stream),
            oversize_drain: 8 * 1024 * 1024,
            oversize_drain_time: Duration::from_secs(5),
        }
    }
}
