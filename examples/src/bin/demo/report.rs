//! Planted problem 3, **CPU-heavy serialisation**: `GET /report`.
//!
//! The sales report reads the lines of the most recent orders (one indexed
//! query, quick), groups them into a nested model (category → product →
//! individual sales, plus a per-day series), and renders it as pretty JSON:
//! several megabytes of floats and strings, rebuilt on every request. Then it
//! serialises the whole model a second time, only to hash it into an `ETag`.
//!
//! In Jaeger the `render_report_json` and `report_etag` spans take most of
//! the request, and their `profile.top_functions` are serde_json's writer
//! and float formatting. The fixes: cache the rendered report, and hash
//! the bytes already rendered instead of serialising again.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};

use rusqlite::{Connection, params};
use serde::Serialize;
use tracing::info_span;

use crate::shop::AppError;

/// The report covers the lines of this many most recent orders.
const RECENT_ORDERS: u32 = 1_500;
/// Value-added tax applied to every sale in the report.
const TAX_RATE: f64 = 0.2;

/// A rendered report.
pub struct RenderedReport {
    pub body: String,
    pub etag: String,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct SalesReport {
    pub currency: &'static str,
    pub first_order: u32,
    pub orders: u32,
    pub revenue: f64,
    pub categories: Vec<CategorySales>,
}

/// One category's sales.
#[derive(Debug, Serialize)]
pub struct CategorySales {
    pub category: String,
    pub revenue: f64,
    pub units: u64,
    pub by_day: Vec<DaySales>,
    pub products: Vec<ProductSales>,
}

/// A category's sales on one day.
#[derive(Debug, Default, Serialize)]
pub struct DaySales {
    pub day: u32,
    pub revenue: f64,
    pub units: u64,
}

/// One product's sales, each listed.
#[derive(Debug, Serialize)]
pub struct ProductSales {
    pub product_id: u32,
    pub sku: String,
    pub name: String,
    pub units: u64,
    pub revenue: f64,
    pub share_of_category: f64,
    pub sales: Vec<Sale>,
}

/// One order line.
#[derive(Debug, Clone, Serialize)]
pub struct Sale {
    pub order_id: u32,
    pub customer_id: u32,
    pub day: u32,
    pub quantity: u32,
    pub unit_price: f64,
    pub net: f64,
    pub tax: f64,
    pub gross: f64,
}

/// A sale as read from the database, with its product.
struct SaleRow {
    category: String,
    product_id: u32,
    sku: String,
    name: String,
    sale: Sale,
}

const RECENT_SALES_SQL: &str = "\
SELECT p.category, p.id, p.sku, p.name, o.id, o.customer_id, o.placed_day, l.quantity, l.unit_price_cents
FROM order_lines l JOIN orders o ON o.id = l.order_id JOIN products p ON p.id = l.product_id
WHERE l.order_id > ?1";

/// Builds and renders the report (the request's work).
pub fn sales_report(conn: &Connection) -> Result<RenderedReport, AppError> {
    let (first_order, rows) = load_recent_sales(conn)?;
    let model = build_report_model(first_order, rows);
    let body = render_report_json(&model);
    let etag = report_etag(&model);
    Ok(RenderedReport { body, etag })
}

#[inline(never)]
fn load_recent_sales(conn: &Connection) -> rusqlite::Result<(u32, Vec<SaleRow>)> {
    let _query = info_span!(
        "SELECT order_lines",
        db.system = "sqlite",
        db.statement = RECENT_SALES_SQL
    )
    .entered();
    let last_order: u32 = conn.query_row("SELECT max(id) FROM orders", [], |row| row.get(0))?;
    let first_order = last_order.saturating_sub(RECENT_ORDERS);
    let mut statement = conn.prepare_cached(RECENT_SALES_SQL)?;
    let rows = statement.query_map(params![first_order], |row| {
        let quantity: u32 = row.get(7)?;
        let unit_price = row.get::<_, i64>(8)? as f64 / 100.0;
        let net = unit_price * f64::from(quantity);
        Ok(SaleRow {
            category: row.get(0)?,
            product_id: row.get(1)?,
            sku: row.get(2)?,
            name: row.get(3)?,
            sale: Sale {
                order_id: row.get(4)?,
                customer_id: row.get(5)?,
                day: row.get(6)?,
                quantity,
                unit_price,
                net,
                tax: net * TAX_RATE,
                gross: net * (1.0 + TAX_RATE),
            },
        })
    })?;
    Ok((first_order + 1, rows.collect::<rusqlite::Result<_>>()?))
}

/// Groups sales by category, product and day.
#[tracing::instrument(skip_all, fields(sales = rows.len()))]
#[inline(never)]
fn build_report_model(first_order: u32, rows: Vec<SaleRow>) -> SalesReport {
    let mut categories: BTreeMap<String, BTreeMap<u32, ProductSales>> = BTreeMap::new();
    for row in rows {
        let product = categories
            .entry(row.category)
            .or_default()
            .entry(row.product_id)
            .or_insert_with(|| ProductSales {
                product_id: row.product_id,
                sku: row.sku,
                name: row.name,
                units: 0,
                revenue: 0.0,
                share_of_category: 0.0,
                sales: Vec::new(),
            });
        product.units += u64::from(row.sale.quantity);
        product.revenue += row.sale.gross;
        product.sales.push(row.sale);
    }
    let categories: Vec<CategorySales> = categories
        .into_iter()
        .map(|(category, products)| category_sales(category, products))
        .collect();
    SalesReport {
        currency: "EUR",
        first_order,
        orders: RECENT_ORDERS,
        revenue: categories.iter().map(|c| c.revenue).sum(),
        categories,
    }
}

fn category_sales(category: String, products: BTreeMap<u32, ProductSales>) -> CategorySales {
    let mut products: Vec<ProductSales> = products.into_values().collect();
    let revenue: f64 = products.iter().map(|p| p.revenue).sum();
    let mut by_day: BTreeMap<u32, DaySales> = BTreeMap::new();
    for product in &mut products {
        product.share_of_category = product.revenue / revenue;
        for sale in &product.sales {
            let day = by_day.entry(sale.day).or_insert_with(|| DaySales {
                day: sale.day,
                ..DaySales::default()
            });
            day.revenue += sale.gross;
            day.units += u64::from(sale.quantity);
        }
    }
    products.sort_by(|a, b| b.revenue.total_cmp(&a.revenue));
    CategorySales {
        category,
        revenue,
        units: products.iter().map(|p| p.units).sum(),
        by_day: by_day.into_values().collect(),
        products,
    }
}

/// The response body: the whole model as pretty JSON.
#[tracing::instrument(skip_all)]
#[inline(never)]
fn render_report_json(model: &SalesReport) -> String {
    serde_json::to_string_pretty(model).expect("the report model serialises")
}

/// The `ETag`: a hash of the body, which it renders a second time to get
/// it.
#[tracing::instrument(skip_all)]
#[inline(never)]
fn report_etag(model: &SalesReport) -> String {
    let body = serde_json::to_string_pretty(model).expect("the report model serialises");
    let mut hasher = DefaultHasher::new();
    hasher.write(body.as_bytes());
    format!("\"{:016x}\"", hasher.finish())
}
