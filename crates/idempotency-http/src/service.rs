//! The middleware service: the DESIGN §5 table, request by request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use idempotency_core::{
    Begin, Fingerprint, Guard, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore,
    StoredOutcome,
};
use tower_service::Service;
use tracing::Instrument as _;

use crate::body::{BoxError, ResponseBody};
use crate::layer::{ScopeExtractor, Settings};
use crate::problem::Problem;
use crate::stored::{self, StoredResponse};

/// Header set on every replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Header set on a replay whose original body was too large to store.
pub const BODY_OMITTED_HEADER: &str = "idempotent-body-omitted";

/// The service built by [`crate::IdempotencyLayer`].
#[derive(Debug)]
pub struct IdempotencyService<Svc, S, E> {
    inner: Svc,
    engine: Idempotency<S>,
    scope: E,
    settings: Arc<Settings>,
}

impl<Svc: Clone, S, E: Clone> Clone for IdempotencyService<Svc, S, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            engine: self.engine.clone(),
            scope: self.scope.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<Svc, S, E> IdempotencyService<Svc, S, E> {
    pub(crate) fn new(
        inner: Svc,
        engine: Idempotency<S>,
        scope: E,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            inner,
            engine,
            scope,
            settings,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<Svc, S, E, ReqB, ResB> Service<Request<ReqB>> for IdempotencyService<Svc, S, E>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + 'static,
    ReqB: Body + From<Bytes> + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send,
    S: IdempotencyStore + 'static,
    E: ScopeExtractor,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Svc::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The clone is the one that was not driven to readiness: keep the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = Arc::clone(&self.settings);
        if !settings.methods.contains(request.method()) {
            return Box::pin(
                async move { Ok(inner.call(request).await?.map(ResponseBody::inner)) },
            );
        }
        let raw_key = request
            .headers()
            .get(&settings.header)
            .map(|v| v.as_bytes().to_vec());
        let Some(raw_key) = raw_key else {
            if settings.key_required {
                let header = settings.header.as_str().to_owned();
                return Box::pin(async move { Ok(problem(Problem::missing_key(&header))) });
            }
            return Box::pin(
                async move { Ok(inner.call(request).await?.map(ResponseBody::inner)) },
            );
        };
        let key = match IdempotencyKey::from_bytes(&raw_key) {
            Ok(key) => key,
            Err(e) => {
                let answer = Problem::from_engine(&IdempotencyError::InvalidKey(e));
                return Box::pin(async move { Ok(problem(answer)) });
            }
        };
        let (parts, body) = request.into_parts();
        let scope = match self.scope.extract(&parts) {
            Ok(scope) => scope,
            Err(rejection) => {
                let answer = Problem::new(
                    rejection.status,
                    "scope-rejected",
                    "Request not accepted",
                    rejection.detail,
                );
                return Box::pin(async move { Ok(problem(answer)) });
            }
        };
        let engine = self.engine.clone();
        let span = tracing::debug_span!("idempotency.http", method = %parts.method, path = parts.uri.path(), key = key.as_str());
        Box::pin(
            async move {
                let body = match Limited::new(body, settings.max_request_body)
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(error) => {
                        return Ok(problem(body_problem(&error, settings.max_request_body)));
                    }
                };
                let fingerprint = fingerprint(&parts, &body, &settings);
                let guard = match engine.begin(&scope, &key, fingerprint).await {
                    Ok(Begin::Run(guard)) => guard,
                    Ok(Begin::Replay(outcome)) => return Ok(replay(outcome)),
                    Err(error) => return Ok(problem(Problem::from_engine(&error))),
                };
                let request = Request::from_parts(parts, ReqB::from(body));
                // A panic in the handler drops `guard`, which releases the claim.
                let response = match inner.call(request).await {
                    Ok(response) => response,
                    Err(error) => {
                        release(guard).await;
                        return Err(error);
                    }
                };
                Ok(record(guard, response, &engine, &settings).await)
            }
            .instrument(span),
        )
    }
}

fn problem<B>(answer: Problem) -> Response<ResponseBody<B>> {
    answer.into_response().map(ResponseBody::full)
}

fn body_problem(error: &BoxError, limit: usize) -> Problem {
    if error.is::<http_body_util::LengthLimitError>() {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("idempotent requests may carry at most {limit} bytes"),
        )
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "body-unreadable",
            "Request body unreadable",
            error.to_string(),
        )
    }
}

/// Method, path and query, content type, configured headers, then the (canonical) body; each a
/// length-prefixed part, so nothing can shift between them.
fn fingerprint(parts: &http::request::Parts, body: &Bytes, settings: &Settings) -> Fingerprint {
    let mut builder = Fingerprint::builder();
    builder.push(parts.method.as_str().as_bytes());
    builder.push(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    builder.push(content_type.map_or(&b""[..], HeaderValue::as_bytes));
    for name in &settings.fingerprint_headers {
        builder.push(name.as_str().as_bytes());
        for value in parts.headers.get_all(name) {
            builder.push(value.as_bytes());
        }
    }
    match &settings.canonical_body {
        Some(canonical) => builder.push(&canonical(body)),
        None => builder.push(body),
    }
    builder.finish()
}

fn replay<B>(outcome: StoredOutcome) -> Response<ResponseBody<B>> {
    if outcome.content_type.as_deref() != Some(stored::CONTENT_TYPE) {
        tracing::error!("stored outcome was not written by the HTTP layer (shared prefix?)");
        return problem(Problem::from_engine(&IdempotencyError::CorruptRecord(
            idempotency_core::CorruptRecord::new("not an HTTP response"),
        )));
    }
    let stored = match StoredResponse::decode(&outcome.body) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(%error, "stored HTTP response is corrupt");
            return problem(Problem::from_engine(&IdempotencyError::CorruptRecord(
                error,
            )));
        }
    };
    let mut response = Response::new(ResponseBody::full(stored.body));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        headers.append(name, value);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    if stored.body_omitted {
        headers.insert(BODY_OMITTED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

async fn release<S: IdempotencyStore + 'static>(guard: Guard<S>) {
    if let Err(error) = guard.release().await {
        tracing::debug!(%error, "releasing the claim did not apply; it lapses with its lease");
    }
}

/// Store the handler's response if the policy says so, and answer with it.
async fn record<S, B>(
    guard: Guard<S>,
    response: Response<B>,
    engine: &Idempotency<S>,
    settings: &Settings,
) -> Response<ResponseBody<B>>
where
    S: IdempotencyStore + 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !(settings.store_status)(response.status()) {
        release(guard).await;
        return response.map(ResponseBody::inner);
    }
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let error: BoxError = error.into();
            tracing::warn!(%error, "response body failed; releasing the claim");
            release(guard).await;
            return problem(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "response-failed",
                "Response failed",
                "the response could not be produced; retry with the same key",
            ));
        }
    };
    let mut stored = StoredResponse {
        status: parts.status,
        headers: StoredResponse::replayable_headers(&parts.headers, settings.keep_set_cookie),
        body,
        body_omitted: false,
    };
    let mut encoded = stored.encode();
    let max = engine.config().max_outcome_size();
    let body = stored.body.clone();
    if encoded.len() > max {
        tracing::warn!(
            size = body.len(),
            max,
            "response too large to store; recording it without its body"
        );
        stored.body = Bytes::new();
        stored.body_omitted = true;
        encoded = stored.encode();
    }
    if let Err(error) = guard
        .complete(StoredOutcome::new(
            encoded,
            Some(stored::CONTENT_TYPE.to_owned()),
        ))
        .await
    {
        // The handler ran: answer with its response anyway; a retry may run it again.
        tracing::warn!(%error, "response could not be recorded");
    }
    Response::from_parts(parts, ResponseBody::full(body))
}
