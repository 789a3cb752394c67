//! The layer and its builder (the policy types it takes live in [`crate::policy`], the scope
//! extractor in [`crate::scope`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, StatusCode, response};
use idempotency_core::{Idempotency, IdempotencyStore};
use tower_layer::Layer;

use crate::policy::{JsonFingerprint, OversizePolicy};
use crate::scope::{GlobalScope, NoScope, ScopeExtractor};
use crate::service::{IdempotencyService, LayerState};
use crate::settings::Settings;

/// Configures an [`IdempotencyLayer`]. Start with [`IdempotencyLayer::builder`]; choose a scope
/// ([`scope`](Self::scope) or [`global_scope`](Self::global_scope)) before [`build`](Self::build).
#[derive(Debug)]
pub struct LayerBuilder<S, E> {
    engine: Idempotency<S>,
    scope: E,
    settings: Settings,
}

impl<S: IdempotencyStore + 'static> LayerBuilder<S, NoScope> {
    /// Scope keys by what `extractor` finds in the request (the authenticated principal from an
    /// extension, a tenant header...).
    pub fn scope<E: ScopeExtractor>(self, extractor: E) -> LayerBuilder<S, E> {
        LayerBuilder {
            engine: self.engine,
            scope: extractor,
            settings: self.settings,
        }
    }

    /// One key space for every client (no tenants).
    pub fn global_scope(self) -> LayerBuilder<S, GlobalScope> {
        self.scope(GlobalScope)
    }
}

impl<S, E> LayerBuilder<S, E> {
    /// Methods the layer protects (default POST, PUT, PATCH, DELETE); others pass through.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = methods.into_iter().collect();
        self
    }

    /// Whether a covered request without the header is refused with 400 (default) or passes
    /// through unprotected.
    #[must_use]
    pub fn key_required(mut self, required: bool) -> Self {
        self.settings.key_required = required;
        self
    }

    /// Header carrying the key (default `Idempotency-Key`).
    #[must_use]
    pub fn header_name(mut self, header: HeaderName) -> Self {
        self.settings.header = header;
        self
    }

    /// Largest request body accepted on covered requests (default 1 MiB; larger → 413).
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.settings.max_request_body = bytes;
        self
    }

    /// How much of an oversize request body is still read and discarded before the 413 is sent
    /// (default 8 MiB beyond the limit, for at most 5 s).
    ///
    /// A server that answers while the client is still sending, and closes, makes many clients
    /// see a broken pipe (or a TCP reset that destroys the 413 in flight) instead of the answer;
    /// reading the rest first lets them see the 413. Past either bound the 413 is sent with
    /// `Connection: close` and the connection is dropped after all. `0` disables draining.
    #[must_use]
    pub fn oversize_drain(mut self, bytes: usize, max_time: Duration) -> Self {
        self.settings.oversize_drain = bytes;
        self.settings.oversize_drain_time = max_time;
        self
    }

    /// Which response statuses are stored and replayed (default
    /// [`default_store_status`](crate::default_store_status)).
    /// Responses not stored release the claim, so a retry runs again.
    #[must_use]
    pub fn store_status(
        mut self,
        policy: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings.store_status = Arc::new(policy);
        self
    }

    /// Store and replay `Set-Cookie` headers too (default: not stored).
    #[must_use]
    pub fn store_set_cookie(mut self, keep: bool) -> Self {
        self.settings.keep_set_cookie = keep;
        self
    }

    /// Also fingerprint these request headers (default: method, path and query, content type
    /// and body only).
    #[must_use]
    pub fn fingerprint_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings.fingerprint_headers = headers.into_iter().collect();
        self
    }

    /// How JSON bodies are fingerprinted: byte for byte (the default) or in their RFC 8785
    /// canonical form, so a retry that re-serialises the same object with another key order or
    /// spacing is still "the same request" (see [`JsonFingerprint`]).
    #[must_use]
    pub fn fingerprint_json(mut self, mode: JsonFingerprint) -> Self {
        self.settings.json = mode;
        self
    }

    /// What to record when a response body is larger than the engine's maximum outcome size,
    /// or a stream (default [`OversizePolicy::OmitBody`]).
    #[must_use]
    pub fn oversize_response(mut self, policy: OversizePolicy) -> Self {
        self.settings.oversize = policy;
        self
    }

    /// Which responses are streams by nature and never recorded (default
    /// [`default_is_stream`](crate::default_is_stream): `text/event-stream`). Their body passes
    /// through untouched and no copy is kept; the claim ends when the head is ready, by the
    /// [`oversize_response`](Self::oversize_response) policy (default: recorded without its body,
    /// so a retry gets the status and headers plus `Idempotent-Body-Omitted: true`, not the
    /// events, and the operation does not run again).
    #[must_use]
    pub fn stream_responses(
        mut self,
        is_stream: impl Fn(&response::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings.is_stream = Arc::new(is_stream);
        self
    }

    /// Fingerprint a canonical form of the body instead of its bytes (e.g. parse JSON and drop a
    /// client timestamp field). Takes precedence over [`fingerprint_json`](Self::fingerprint_json)
    /// for the body (the media type is still normalised in canonical mode).
    #[must_use]
    pub fn fingerprint_body_with(
        mut self,
        canonical: impl Fn(&Bytes) -> Bytes + Send + Sync + 'static,
    ) -> Self {
        self.settings.canonical_body = Some(Arc::new(canonical));
        self
    }
}

impl<S: IdempotencyStore + 'static, E: ScopeExtractor> LayerBuilder<S, E> {
    /// The layer.
    pub fn build(self) -> IdempotencyLayer<S, E> {
        IdempotencyLayer {
            state: Arc::new(LayerState {
                engine: self.engine,
                scope: self.scope,
                settings: self.settings,
            }),
        }
    }
}

/// Tower layer applying the `Idempotency-Key` protocol to the services it wraps.
#[derive(Debug)]
pub struct IdempotencyLayer<S, E> {
    /// The engine, scope extractor and settings every service of this layer shares.
    state: Arc<LayerState<S, E>>,
}

impl<S, E> Clone for IdempotencyLayer<S, E> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: IdempotencyStore + 'static> IdempotencyLayer<S, NoScope> {
    /// Start configuring a layer over `engine` (timeouts, retention, failure policy and the kill
    /// switch are the engine's settings).
    pub fn builder(engine: Idempotency<S>) -> LayerBuilder<S, NoScope> {
        LayerBuilder {
            engine,
            scope: NoScope,
            settings: Settings::default(),
        }
    }
}

impl<S, E, Svc> Layer<Svc> for IdempotencyLayer<S, E> {
    type Service = IdempotencyService<Svc, S, E>;

    fn layer(&self, inner: Svc) -> Self::Service {
        IdempotencyService::new(inner, Arc::clone(&self.state))
    }
}
