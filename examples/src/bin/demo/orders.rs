//! Planted problem 1, **N+1 queries**: `GET /orders/{customer}`.
//!
//! The order history is loaded the way a naive ORM loop does it: one query
//! for the customer's orders, then one query per order for its lines, then
//! one query per line for the product's name. A business account's 200
//! orders of a dozen lines cost some 2 700 trips through SQLite's parser,
//! planner and executor.
//!
//! In Jaeger the request span holds a wall of `SELECT order_lines` child
//! spans, one per order; the profile (`profile.top_functions` on the request
//! span) is SQLite's per-statement work (preparing, seeking, allocating and
//! finalising) rather than reading rows. The fix would be one query with a
//! join:
//! `SELECT ... FROM orders JOIN order_lines ... JOIN products ... WHERE customer_id = ?1`.

use axum::http::StatusCode;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tracing::info_span;

use crate::shop::AppError;

/// One order as the API returns it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    pub order_id: u32,
    pub placed_day: u32,
    pub status: String,
    pub total_cents: i64,
    pub lines: Vec<LineView>,
}

/// One order line, with the product's name.
#[derive(Debug, Serialize)]
pub struct LineView {
    pub product_id: u32,
    pub product: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

const ORDERS_SQL: &str =
    "SELECT id, placed_day, status FROM orders WHERE customer_id = ?1 ORDER BY placed_day DESC";
const LINES_SQL: &str =
    "SELECT product_id, quantity, unit_price_cents FROM order_lines WHERE order_id = ?1";
const PRODUCT_SQL: &str = "SELECT name FROM products WHERE id = ?1";

/// A customer's orders, newest first: the N+1 way.
pub fn order_history(conn: &Connection, customer: u32) -> Result<Vec<OrderView>, AppError> {
    let mut orders = query_orders(conn, customer)?;
    if orders.is_empty() {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            format!("customer {customer} has no orders"),
        ));
    }
    for order in &mut orders {
        order.lines = query_lines_one_order_at_a_time(conn, order.order_id)?;
        order.total_cents = order
            .lines
            .iter()
            .map(|line| i64::from(line.quantity) * line.unit_price_cents)
            .sum();
    }
    Ok(orders)
}

#[inline(never)]
fn query_orders(conn: &Connection, customer: u32) -> rusqlite::Result<Vec<OrderView>> {
    let _query = info_span!(
        "SELECT orders",
        db.system = "sqlite",
        db.statement = ORDERS_SQL
    )
    .entered();
    let mut statement = conn.prepare(ORDERS_SQL)?;
    let rows = statement.query_map(params![customer], |row| {
        Ok(OrderView {
            order_id: row.get(0)?,
            placed_day: row.get(1)?,
            status: row.get(2)?,
            total_cents: 0,
            lines: Vec::new(),
        })
    })?;
    rows.collect()
}

/// The "+1": called once per order, and it looks up each line's product
/// with a query of its own (prepared anew each time, as ad-hoc SQL is).
#[inline(never)]
fn query_lines_one_order_at_a_time(
    conn: &Connection,
    order_id: u32,
) -> rusqlite::Result<Vec<LineView>> {
    let _query = info_span!(
        "SELECT order_lines",
        db.system = "sqlite",
        db.statement = LINES_SQL,
        order_id
    )
    .entered();
    let mut statement = conn.prepare(LINES_SQL)?;
    let rows = statement.query_map(params![order_id], |row| {
        Ok((row.get::<_, u32>(0)?, row.get(1)?, row.get(2)?))
    })?;
    let mut lines = Vec::new();
    for row in rows {
        let (product_id, quantity, unit_price_cents) = row?;
        lines.push(LineView {
            product_id,
            product: product_name(conn, product_id)?,
            quantity,
            unit_price_cents,
        });
    }
    Ok(lines)
}

#[inline(never)]
fn product_name(conn: &Connection, product_id: u32) -> rusqlite::Result<String> {
    let name = conn
        .query_row(PRODUCT_SQL, params![product_id], |row| row.get(0))
        .optional()?;
    Ok(name.unwrap_or_else(|| format!("product {product_id}")))
}
