//! The shop's handlers: products, orders and the idempotency metrics.
//!
//! Every mutating handler counts its executions ([`crate::AppState::handler_runs`], and the
//! [`crate::ExecutionLog`] when one is configured) and bumps a `version` on what it writes, so a
//! duplicate execution is visible from outside. Each waits [`crate::SlowWork::before_write`]
//! (the payment-provider call) before its write and [`crate::SlowWork::after_write`] after it.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idempotency::unix_millis_now;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use idempotency::AnyStore;
use idempotency::http::TransactionalClaim;

use crate::AppState;
use crate::auth::Principal;
use crate::db::{Completion, Write, Written};
use crate::envelope::{ApiError, ok};
use crate::model::{Order, OrderStatus, Product};

/// The claim the layer hands to protected requests (absent on unprotected routers).
type Claim = Option<Extension<TransactionalClaim<AnyStore>>>;

#[derive(Deserialize)]
struct ProductInput {
    name: String,
    #[serde(deserialize_with = "whole_number")]
    price: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderInput {
    product_id: String,
    #[serde(deserialize_with = "whole_number")]
    quantity: u32,
}

/// A whole number in `T`'s range however the JSON writes it (`1`, `1.0`, `1e0`): the layer's
/// canonical JSON fingerprint (RFC 8785) counts those as one value, so the handler must read
/// them as one too — otherwise a retry that corrected `1.0` to `1` under the same key would be
/// "the same request" to the layer (its first answer replayed) but another to the handler.
/// Read from the number's decimal text, not through `f64`: `1.0000000000000001` is not whole
/// and `9007199254740993.0` is not `9007199254740992`, though their `f64`s say otherwise.
fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error as _;
    let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
    let text = raw.get().trim();
    whole_from_decimal(text)
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| D::Error::custom(format!("expected a whole number in range, got {text}")))
}

/// The value of a JSON number's text (RFC 8259 §6: `-? int frac? exp?`) when it is a whole
/// number from 0 to `u64::MAX`; `None` for anything else (not a number, a fraction, negative,
/// too large).
fn whole_from_decimal(text: &str) -> Option<u64> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int) || (mantissa.contains('.') && !digits_only(frac)) {
        return None;
    }
    if int.len() > 1 && int.starts_with('0') {
        return None;
    }
    // A huge exponent saturates: its sign and the digits decide the answer below.
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let (sign, e_digits) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if !digits_only(e_digits) {
                return None;
            }
            sign * e_digits.parse::<i64>().unwrap_or(i64::MAX / 2)
        }
    };
    // value = significant × 10^scale
    let all = [int, frac].concat();
    let digits = all.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0); // 0, -0, 0.000, 0e5
    }
    if negative {
        return None;
    }
    let significant = digits.trim_end_matches('0');
    let scale = exponent
        .saturating_sub(i64::try_from(frac.len()).ok()?)
        .saturating_add(i64::try_from(digits.len() - significant.len()).ok()?);
    if scale < 0 {
        return None; // a fraction remains
    }
    // At most 20 digits fit a u64.
    let zeros = usize::try_from(scale).ok()?;
    if significant.len().saturating_add(zeros) > 20 {
        return None;
    }
    format!("{significant}{}", "0".repeat(zeros)).parse().ok()
}

#[derive(Deserialize)]
struct StatusInput {
    status: OrderStatus,
}

/// The catalogue and the orders in memory, when no `DATABASE_URL` is given (else
/// [`crate::db::Database`] holds them).
#[derive(Debug, Default)]
pub(crate) struct Shop {
    pub(crate) products: BTreeMap<String, Product>,
    pub(crate) orders: BTreeMap<String, Order>,
    pub(crate) next_order: u64,
}

/// One execution of a mutating handler, as the execution log records it.
pub(crate) struct Run<'a> {
    /// The `Idempotency-Key` header as sent.
    pub(crate) key: Option<&'a str>,
    pub(crate) principal: &'a str,
    pub(crate) route: &'static str,
}

fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
}

/// Parse a JSON body, answering 400 with the envelope on anything wrong.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        let what = if error.is_data() {
            "invalid fields"
        } else {
            "invalid JSON"
        };
        ApiError::bad_request(format!("{what}: {error}"))
    })
}

fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{kind} id must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'"
        )))
    }
}

fn data<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `PUT /api/products/{id}` `{"name", "price"}`: create or replace; 201 on create, 200 after.
pub(crate) async fn put_product(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    claim: Claim,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_id("product", &id)?;
    let input: ProductInput = parse(&body)?;
    let name = input.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("name must be 1 to 200 characters"));
    }
    state.work().before_write().await;
    let run = Run {
        key: idempotency_key(&headers),
        principal: &principal.0,
        route: "PUT /api/products/{id}",
    };
    if let Some(db) = state.db() {
        let product = Product {
            id: id.clone(),
            name: name.to_owned(),
            price: input.price,
            version: 1,
            updated_by: principal.0.clone(),
            updated_at: unix_millis_now(),
        };
        let completion = Completion::new(claim.map(|c| c.0), state.engine().store());
        let (_, response) = db
            .write(
                Write::Product { product: &product },
                completion,
                state.work(),
                |w| {
                    state.count_run(&run, &id);
                    match w {
                        Written::Product(product, created) => {
                            let status = if *created {
                                StatusCode::CREATED
                            } else {
                                StatusCode::OK
                            };
                            Ok(ok(status, data(product), Map::new()))
                        }
                        Written::Order(_) => Err(ApiError::database("unexpected write")),
                    }
                },
            )
            .await?;
        return Ok(response);
    }
    let (status, product) = {
        let mut shop = state.shop().lock();
        state.count_run(&run, &id);
        let previous = shop.products.get(&id).map(|p| p.version);
        let product = Product {
            id: id.clone(),
            name: name.to_owned(),
            price: input.price,
            version: previous.unwrap_or(0) + 1,
            updated_by: principal.0.clone(),
            updated_at: unix_millis_now(),
        };
        shop.products.insert(id, product.clone());
        let status = if previous.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        (status, product)
    };
    tracing::debug!(product = %product.id, version = product.version, "product written");
    state.work().after_write().await;
    Ok(ok(status, data(&product), Map::new()))
}

/// `GET /api/products/{id}`.
pub(crate) async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let product = match state.db() {
        Some(db) => db.product(&id).await?,
        None => state.shop().lock().products.get(&id).cloned(),
    };
    match product {
        Some(product) => Ok(ok(StatusCode::OK, data(&product), Map::new())),
        None => Err(ApiError::not_found(format!("no product `{id}`"))),
    }
}

/// `POST /api/orders` `{"productId", "quantity"}`: 201 with the new order and a `Location`.
pub(crate) async fn create_order(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    claim: Claim,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: OrderInput = parse(&body)?;
    if input.quantity == 0 {
        return Err(ApiError::bad_request("quantity must be at least 1"));
    }
    state.work().before_write().await;
    let run = Run {
        key: idempotency_key(&headers),
        principal: &principal.0,
        route: "POST /api/orders",
    };
    if let Some(db) = state.db() {
        let completion = Completion::new(claim.map(|c| c.0), state.engine().store());
        let write = Write::Order {
            product_id: &input.product_id,
            quantity: input.quantity,
            created_by: &principal.0,
            created_at: unix_millis_now(),
            key: run.key,
        };
        let (_, response) = db
            .write(write, completion, state.work(), |w| match w {
                Written::Order(order) => {
                    state.count_run(&run, &order.id);
                    tracing::debug!(order = %order.id, "order created");
                    Ok(order_created(order))
                }
                Written::Product(..) => Err(ApiError::database("unexpected write")),
            })
            .await?;
        return Ok(response);
    }
    let order = {
        let mut shop = state.shop().lock();
        if !shop.products.contains_key(&input.product_id) {
            return Err(ApiError::not_found(format!(
                "no product `{}`",
                input.product_id
            )));
        }
        shop.next_order += 1;
        let id = format!("ord_{:06}", shop.next_order);
        state.count_run(&run, &id);
        let order = Order {
            id,
            product_id: input.product_id,
            quantity: input.quantity,
            status: OrderStatus::Pending,
            version: 1,
            created_by: principal.0.clone(),
            created_at: unix_millis_now(),
        };
        shop.orders.insert(order.id.clone(), order.clone());
        order
    };
    tracing::debug!(order = %order.id, "order created");
    state.work().after_write().await;
    Ok(order_created(&order))
}

fn order_created(order: &Order) -> Response {
    let mut response = ok(StatusCode::CREATED, data(order), Map::new());
    if let Ok(location) = HeaderValue::from_str(&format!("/api/orders/{}", order.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `PUT /api/orders/{id}/status` `{"status"}`.
pub(crate) async fn set_order_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    claim: Claim,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: StatusInput = parse(&body)?;
    state.work().before_write().await;
    let run = Run {
        key: idempotency_key(&headers),
        principal: &principal.0,
        route: "PUT /api/orders/{id}/status",
    };
    if let Some(db) = state.db() {
        let completion = Completion::new(claim.map(|c| c.0), state.engine().store());
        let write = Write::Status {
            id: &id,
            status: input.status,
        };
        let (_, response) = db
            .write(write, completion, state.work(), |w| match w {
                Written::Order(order) => {
                    state.count_run(&run, &id);
                    Ok(ok(StatusCode::OK, data(order), Map::new()))
                }
                Written::Product(..) => Err(ApiError::database("unexpected write")),
            })
            .await?;
        return Ok(response);
    }
    let order = {
        let mut shop = state.shop().lock();
        let Some(order) = shop.orders.get_mut(&id) else {
            return Err(ApiError::not_found(format!("no order `{id}`")));
        };
        state.count_run(&run, &id);
        order.status = input.status;
        order.version += 1;
        order.clone()
    };
    state.work().after_write().await;
    Ok(ok(StatusCode::OK, data(&order), Map::new()))
}

/// `GET /api/orders`: every order, oldest first.
pub(crate) async fn list_orders(State(state): State<AppState>) -> Result<Response, ApiError> {
    let orders: Vec<Order> = match state.db() {
        Some(db) => db.orders().await?,
        None => state.shop().lock().orders.values().cloned().collect(),
    };
    let mut meta = Map::new();
    meta.insert("count".to_owned(), json!(orders.len()));
    Ok(ok(StatusCode::OK, data(&orders), meta))
}

/// `GET /api/internal/metrics/idempotency`: the engine's counters, for the admin token only.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    if !state.is_admin(&principal.0) {
        return Err(ApiError::forbidden(
            "the metrics are for the DEMO_ADMIN_TOKEN bearer only",
        ));
    }
    let engine = state.engine();
    let stats = engine.stats();
    let store = engine.store().description();
    let body = json!({
        "cacheHits": stats.replays,
        "cacheMisses": stats.claims,
        "cacheWrites": stats.completions,
        "hitRate": stats.hit_rate(),
        "inProgressConflicts": stats.in_progress,
        "fingerprintMismatches": stats.mismatches,
        "storeErrors": stats.store_errors,
        "failOpen": stats.fail_open,
        "handlerRuns": state.handler_runs(),
        "backend": store.kind().to_string(),
        "store": store.to_string(),
    });
    Ok(ok(StatusCode::OK, body, Map::new()))
}

/// Anything else: 404 in the envelope.
pub(crate) async fn not_found() -> impl IntoResponse {
    ApiError::not_found("no such route")
}

#[cfg(test)]
mod tests {
    use super::whole_from_decimal;

    #[test]
    fn whole_numbers_are_read_from_their_decimal_text() {
        for (text, value) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("0.0", Some(0)),
            ("-0.0", Some(0)),
            ("0e999999999999999999999", Some(0)),
            ("1", Some(1)),
            ("1.0", Some(1)),
            ("1e0", Some(1)),
            ("1E2", Some(100)),
            ("4.5e2", Some(450)),
            ("450.000", Some(450)),
            ("12000e-3", Some(12)),
            ("4294967295.0", Some(4_294_967_295)),
            ("9007199254740993.0", Some(9_007_199_254_740_993)),
            ("18446744073709551615", Some(u64::MAX)),
            ("1.8446744073709551615e19", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("1.8446744073709552e19", None),
            ("1e20", None),
            ("1e400", None),
            ("1e99999999999999999999", None),
            ("1.0000000000000001", None),
            ("0.99999999999999999", None),
            ("4294967295.0000001", None),
            ("1e-400", None),
            ("0.5", None),
            ("12001e-3", None),
            ("-1", None),
            ("-1e400", None),
            ("01", None),
            ("1.", None),
            (".5", None),
            ("1e", None),
            ("1e+", None),
            ("", None),
            (r#""1""#, None),
            ("null", None),
            ("true", None),
        ] {
            assert_eq!(whole_from_decimal(text), value, "{text}");
        }
    }
}
