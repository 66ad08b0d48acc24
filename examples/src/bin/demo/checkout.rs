//! Planted problem 4, **waiting on a contended lock**: `POST /checkout`.
//!
//! Stock levels live in memory behind one `std::sync::Mutex`. A checkout
//! prices the cart (quick, indexed queries), then takes the lock and, while
//! holding it, reserves stock, *calls the payment provider* (150 ms of
//! waiting on the network, simulated) and writes the order. So concurrent
//! checkouts queue behind each other: the shop serves at most about 6 per
//! second however many cores it has.
//!
//! In Jaeger a checkout takes hundreds of milliseconds, most of it in the
//! `inventory.lock_wait` span, yet the request span's `profile.cpu_time_ms`
//! is a few milliseconds: the profile says this time is not CPU, the trace
//! says where it goes. The fix: call the payment provider before taking the
//! lock, and hold the lock only to update the stock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use smolder_examples::lock;
use tracing::info_span;

use crate::shop::AppError;

/// How long the simulated payment provider takes to answer.
const PAYMENT_LATENCY: Duration = Duration::from_millis(150);
/// Units of each product in stock at start, and after a restock.
const INITIAL_STOCK: u32 = 500;

/// A checkout request body.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckoutRequest {
    pub customer_id: u32,
    pub items: Vec<CartItem>,
}

/// One product in the cart.
#[derive(Debug, Serialize, Deserialize)]
pub struct CartItem {
    pub product_id: u32,
    pub quantity: u32,
}

/// What a successful checkout answers.
#[derive(Debug, Serialize)]
pub struct Receipt {
    pub order_id: i64,
    pub total_cents: i64,
    pub authorization: String,
}

/// Units in stock by product id; products not yet sold have
/// [`INITIAL_STOCK`].
#[derive(Default)]
pub struct Inventory {
    stock: Mutex<HashMap<u32, u32>>,
}

/// A priced cart line.
struct PricedItem {
    product_id: u32,
    quantity: u32,
    unit_price_cents: i64,
}

/// Prices the cart, then reserves, charges and records with the inventory
/// locked throughout (the planted problem).
pub fn checkout(
    inventory: &Inventory,
    conn: &Connection,
    request: &CheckoutRequest,
) -> Result<Receipt, AppError> {
    if request.items.is_empty() || request.items.iter().any(|item| item.quantity == 0) {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "the cart is empty or has a zero quantity",
        ));
    }
    let priced = price_cart(conn, &request.items)?;
    let total_cents = priced
        .iter()
        .map(|item| item.unit_price_cents * i64::from(item.quantity))
        .sum();

    let mut stock = {
        let _wait = info_span!("inventory.lock_wait").entered();
        lock(&inventory.stock)
    };
    reserve_stock(&mut stock, &priced);
    let authorization = authorize_payment(request.customer_id, total_cents);
    let order_id = record_order(conn, request.customer_id, &priced)?;
    drop(stock);

    Ok(Receipt {
        order_id,
        total_cents,
        authorization,
    })
}

const PRICE_SQL: &str = "SELECT price_cents FROM products WHERE id = ?1";

#[inline(never)]
fn price_cart(conn: &Connection, items: &[CartItem]) -> Result<Vec<PricedItem>, AppError> {
    let _query = info_span!(
        "SELECT products",
        db.system = "sqlite",
        db.statement = PRICE_SQL
    )
    .entered();
    let mut statement = conn.prepare_cached(PRICE_SQL)?;
    let mut priced = Vec::with_capacity(items.len());
    for item in items {
        let price: Option<i64> = statement
            .query_row(params![item.product_id], |row| row.get(0))
            .optional()?;
        let unit_price_cents = price.ok_or_else(|| {
            AppError::new(
                StatusCode::NOT_FOUND,
                format!("no product {}", item.product_id),
            )
        })?;
        priced.push(PricedItem {
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price_cents,
        });
    }
    Ok(priced)
}

/// Takes the cart's units out of stock; a product that runs out is
/// restocked (the demo never refuses a sale).
#[tracing::instrument(skip_all)]
#[inline(never)]
fn reserve_stock(stock: &mut HashMap<u32, u32>, items: &[PricedItem]) {
    for item in items {
        let left = stock.entry(item.product_id).or_insert(INITIAL_STOCK);
        if *left < item.quantity {
            *left += INITIAL_STOCK;
        }
        *left -= item.quantity;
    }
}

/// The payment provider's answer, after its network round trip.
#[tracing::instrument(skip(total_cents), fields(amount_cents = total_cents))]
#[inline(never)]
fn authorize_payment(customer_id: u32, total_cents: i64) -> String {
    std::thread::sleep(PAYMENT_LATENCY);
    format!("auth-{customer_id}-{total_cents}")
}

/// The seeded orders span days 0 to 364; new orders are placed "today".
const TODAY: u32 = 365;
const ORDER_SQL: &str =
    "INSERT INTO orders (customer_id, placed_day, status) VALUES (?1, ?2, 'paid')";
const LINE_SQL: &str = "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents) \
                        VALUES (?1, ?2, ?3, ?4)";

#[inline(never)]
fn record_order(
    conn: &Connection,
    customer_id: u32,
    items: &[PricedItem],
) -> rusqlite::Result<i64> {
    let _query = info_span!(
        "INSERT orders",
        db.system = "sqlite",
        db.statement = ORDER_SQL
    )
    .entered();
    let tx = conn.unchecked_transaction()?;
    tx.execute(ORDER_SQL, params![customer_id, TODAY])?;
    let order_id = tx.last_insert_rowid();
    let mut insert = tx.prepare_cached(LINE_SQL)?;
    for item in items {
        insert.execute(params![
            order_id,
            item.product_id,
            item.quantity,
            item.unit_price_cents
        ])?;
    }
    drop(insert);
    tx.commit()?;
    Ok(order_id)
}
