//! The shop's HTTP API: routes, the request spans, and how handlers reach
//! the database.
//!
//! Each handler is one root span named after its route
//! (`GET /orders/{customer}`, ...), so Jaeger lists the routes as operations.
//! The work runs on tokio's blocking pool with the request span entered
//! ([`blocking`]), as it should for synchronous database calls; the child
//! spans it opens there (queries, serialisation, the lock wait) join the
//! request's trace, and the profiler credits the CPU sampled on that thread
//! to them.
//!
//! Each planted problem lives in its own module: [`crate::orders`] (N+1
//! queries), [`crate::search`] (a missing index), [`crate::report`]
//! (CPU-heavy serialisation) and [`crate::checkout`] (a contended lock).
//!
//! The functions doing each request's work are `#[inline(never)]`: a
//! release build has no debug information to recover inlined frames from,
//! and flame graphs should name them.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde::Deserialize;
use tracing::Span;

use crate::checkout::{CheckoutRequest, Inventory};
use crate::{checkout, db, orders, report, search};

/// State shared by the handlers.
pub struct Shop {
    pub inventory: Inventory,
}

/// The shop's routes.
pub fn router(shop: Arc<Shop>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/orders/{customer}", get(order_history))
        .route("/search", get(search_by_brand))
        .route("/report", get(sales_report))
        .route("/checkout", post(place_order))
        .with_state(shop)
}

const INDEX: &str = "\
smolder demo shop

GET  /orders/{customer}   a customer's order history (customers 1 to 1000)
GET  /search?brand=Acme   a brand's cheapest products
GET  /report              the sales report, as JSON
POST /checkout            {\"customer_id\": 7, \"items\": [{\"product_id\": 42, \"quantity\": 1}]}
";

async fn index() -> &'static str {
    INDEX
}

#[tracing::instrument(name = "GET /orders/{customer}", skip_all, fields(customer = customer))]
async fn order_history(Path(customer): Path<u32>) -> Result<Response, AppError> {
    let history = blocking(move |conn| orders::order_history(conn, customer)).await?;
    Ok(Json(history).into_response())
}

#[derive(Deserialize)]
struct SearchParams {
    brand: String,
}

#[tracing::instrument(name = "GET /search", skip_all, fields(brand = %params.brand))]
async fn search_by_brand(Query(params): Query<SearchParams>) -> Result<Response, AppError> {
    let found = blocking(move |conn| search::cheapest_of_brand(conn, &params.brand)).await?;
    Ok(Json(found).into_response())
}

#[tracing::instrument(name = "GET /report", skip_all)]
async fn sales_report() -> Result<Response, AppError> {
    let rendered = blocking(report::sales_report).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, rendered.etag),
        ],
        rendered.body,
    )
        .into_response())
}

#[tracing::instrument(
    name = "POST /checkout",
    skip_all,
    fields(customer = request.customer_id, items = request.items.len())
)]
async fn place_order(
    State(shop): State<Arc<Shop>>,
    Json(request): Json<CheckoutRequest>,
) -> Result<Response, AppError> {
    let receipt = blocking(move |conn| checkout::checkout(&shop.inventory, conn, &request)).await?;
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

/// Runs `f` on the blocking pool with this thread's database connection,
/// inside the current span.
async fn blocking<R, F>(f: F) -> Result<R, AppError>
where
    F: FnOnce(&Connection) -> Result<R, AppError> + Send + 'static,
    R: Send + 'static,
{
    let span = Span::current();
    let task = tokio::task::spawn_blocking(move || span.in_scope(|| db::with_connection(f)));
    match task.await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(AppError::internal(error)),
    }
}

/// An error answer: a status and a one-line reason.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    message: String,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(error: rusqlite::Error) -> Self {
        AppError::internal(format_args!("database: {error}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        (self.status, self.message + "\n").into_response()
    }
}
