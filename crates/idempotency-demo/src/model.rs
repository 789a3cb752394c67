//! What the shop keeps: products and orders. Both stores of them (the in-memory [`Shop`] in
//! `shop` and the Postgres [`Database`] in `db`) and the handlers use these types.
//!
//! [`Shop`]: crate::shop
//! [`Database`]: crate::Database

use serde::{Deserialize, Serialize};

/// A product of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// From the path.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Price in cents.
    pub price: u64,
    /// Incremented by every execution of `PUT /api/products/{id}` (1 after the first).
    pub version: u64,
    /// The principal of the last write.
    pub updated_by: String,
    /// Unix milliseconds of the last write.
    pub updated_at: u64,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// `ord_000001`, ...
    pub id: String,
    /// The ordered product.
    pub product_id: String,
    /// How many.
    pub quantity: u32,
    /// Where it is.
    pub status: OrderStatus,
    /// Incremented by every status change (1 at creation).
    pub version: u64,
    /// Who ordered.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted, not started.
    Pending,
    /// Being prepared.
    Processing,
    /// On its way.
    Shipped,
    /// Arrived.
    Delivered,
    /// Called off.
    Cancelled,
}
