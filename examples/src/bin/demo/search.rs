//! Planted problem 2, **a missing index**: `GET /search?brand=`.
//!
//! Finding a brand's cheapest products filters `products` on `brand`, a
//! column without an index, so SQLite reads all 200 000 rows, twice (once
//! to count the matches, once for the page), for the 5 000 that match. A
//! lookup by `id` or `sku` elsewhere in the shop uses an index and costs
//! microseconds.
//!
//! In Jaeger the `SELECT products` spans are long, and their
//! `profile.top_functions` is SQLite's row loop (`sqlite3VdbeExec`,
//! B-tree and record-comparison functions): CPU spent reading rows, not
//! returning them. `EXPLAIN QUERY PLAN` says `SCAN products`; the fix is
//! `CREATE INDEX products_by_brand ON products(brand, price_cents)`.

use rusqlite::{Connection, params};
use serde::Serialize;
use tracing::info_span;

/// A page of search results.
#[derive(Debug, Serialize)]
pub struct SearchResults {
    pub brand: String,
    pub matches: u32,
    pub cheapest: Vec<ProductHit>,
}

/// One product in the results.
#[derive(Debug, Serialize)]
pub struct ProductHit {
    pub id: u32,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
}

const COUNT_SQL: &str = "SELECT count(*) FROM products WHERE brand = ?1";
const PAGE_SQL: &str = "SELECT id, sku, name, price_cents FROM products WHERE brand = ?1 \
                        ORDER BY price_cents LIMIT 20";

/// The brand's 20 cheapest products and how many it has.
pub fn cheapest_of_brand(
    conn: &Connection,
    brand: &str,
) -> Result<SearchResults, crate::shop::AppError> {
    let matches = count_products_without_index(conn, brand)?;
    let cheapest = scan_products_without_index(conn, brand)?;
    Ok(SearchResults {
        brand: brand.to_owned(),
        matches,
        cheapest,
    })
}

#[inline(never)]
fn count_products_without_index(conn: &Connection, brand: &str) -> rusqlite::Result<u32> {
    let _query = info_span!(
        "SELECT products",
        db.system = "sqlite",
        db.statement = COUNT_SQL
    )
    .entered();
    conn.query_row(COUNT_SQL, params![brand], |row| row.get(0))
}

#[inline(never)]
fn scan_products_without_index(
    conn: &Connection,
    brand: &str,
) -> rusqlite::Result<Vec<ProductHit>> {
    let _query = info_span!(
        "SELECT products",
        db.system = "sqlite",
        db.statement = PAGE_SQL
    )
    .entered();
    let mut statement = conn.prepare_cached(PAGE_SQL)?;
    let rows = statement.query_map(params![brand], |row| {
        Ok(ProductHit {
            id: row.get(0)?,
            sku: row.get(1)?,
            name: row.get(2)?,
            price_cents: row.get(3)?,
        })
    })?;
    rows.collect()
}
