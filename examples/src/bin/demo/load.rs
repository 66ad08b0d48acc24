//! The built-in load generator: a steady mix of requests, so one command
//! shows every planted problem.
//!
//! * Browsing clients (2 by default, `--clients`) cycle through order
//!   histories of business accounts, brand searches and the sales report,
//!   with a short pause after each answer.
//! * Three checkout clients place small orders back to back, enough to
//!   queue on the inventory lock.
//!
//! The sequence is deterministic (seeded per client). Every 30 seconds one
//! line reports what was sent; failed requests are logged once per route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::checkout::{CartItem, CheckoutRequest};
use crate::db::{self, BRANDS, CUSTOMERS, PRODUCTS, Rng};

pub const CHECKOUT_CLIENTS: usize = 3;
const BROWSING_PAUSE: Duration = Duration::from_millis(250);
const CHECKOUT_PAUSE: Duration = Duration::from_millis(100);
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The routes the generator calls, for counting.
#[derive(Clone, Copy)]
enum Route {
    Orders,
    Search,
    Report,
    Checkout,
}

const ROUTES: [(Route, &str); 4] = [
    (Route::Orders, "order histories"),
    (Route::Search, "searches"),
    (Route::Report, "reports"),
    (Route::Checkout, "checkouts"),
];

/// Requests sent and failed per route. Counters only: `Relaxed` suffices,
/// nothing else is published through them.
#[derive(Default)]
struct Counters {
    sent: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    failure_logged: [AtomicBool; 4],
}

/// The running generator; dropping it stops every client.
pub struct Load {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Load {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the clients against the shop at `shop`.
pub fn start(shop: SocketAddr, browsing_clients: usize) -> Load {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::new();
    for id in 0..browsing_clients {
        let caller = Caller::new(&client, shop, &counters);
        tasks.push(tokio::spawn(browse(caller, Rng(1 + id as u64))));
    }
    for id in 0..CHECKOUT_CLIENTS {
        let caller = Caller::new(&client, shop, &counters);
        tasks.push(tokio::spawn(buy(caller, Rng(1000 + id as u64))));
    }
    tasks.push(tokio::spawn(report(counters)));
    Load { tasks }
}

/// One browsing client: order history, search, order history, search,
/// report, and again.
async fn browse(caller: Caller, mut rng: Rng) {
    loop {
        for step in 0..5 {
            match step {
                0 | 2 => {
                    let customer = business_account(&mut rng);
                    caller
                        .get(Route::Orders, &format!("/orders/{customer}"))
                        .await;
                }
                1 | 3 => {
                    let brand = rng.pick(&BRANDS).replace(' ', "%20");
                    caller
                        .get(Route::Search, &format!("/search?brand={brand}"))
                        .await;
                }
                _ => caller.get(Route::Report, "/report").await,
            }
            tokio::time::sleep(BROWSING_PAUSE).await;
        }
    }
}

fn business_account(rng: &mut Rng) -> u32 {
    loop {
        let customer = 1 + rng.below(CUSTOMERS);
        if db::is_business_account(customer) {
            return customer;
        }
    }
}

/// One checkout client: a cart of one to four products, over and over.
async fn buy(caller: Caller, mut rng: Rng) {
    loop {
        let items = (0..1 + rng.below(4))
            .map(|_| CartItem {
                product_id: 1 + rng.below(PRODUCTS),
                quantity: 1 + rng.below(3),
            })
            .collect();
        let request = CheckoutRequest {
            customer_id: 1 + rng.below(CUSTOMERS),
            items,
        };
        let body = serde_json::to_vec(&request).expect("a cart serialises");
        caller.post(Route::Checkout, "/checkout", body).await;
        tokio::time::sleep(CHECKOUT_PAUSE).await;
    }
}

/// Prints one line of totals every [`REPORT_EVERY`].
async fn report(counters: Arc<Counters>) {
    let mut last = [0; 4];
    let mut interval = tokio::time::interval(REPORT_EVERY);
    interval.tick().await;
    loop {
        interval.tick().await;
        let mut parts = Vec::new();
        for (i, (_, name)) in ROUTES.iter().enumerate() {
            let sent = counters.sent[i].load(Ordering::Relaxed);
            parts.push(format!("{} {name}", sent - last[i]));
            last[i] = sent;
        }
        let failed: u64 = counters
            .failed
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .sum();
        println!(
            "load, last {} s: {}; {failed} failed since start",
            REPORT_EVERY.as_secs(),
            parts.join(", ")
        );
    }
}

/// Sends requests to the shop and counts them.
struct Caller {
    client: Client<HttpConnector, Full<Bytes>>,
    shop: SocketAddr,
    counters: Arc<Counters>,
}

impl Caller {
    fn new(
        client: &Client<HttpConnector, Full<Bytes>>,
        shop: SocketAddr,
        counters: &Arc<Counters>,
    ) -> Self {
        Caller {
            client: client.clone(),
            shop,
            counters: Arc::clone(counters),
        }
    }

    async fn get(&self, route: Route, path: &str) {
        self.send(route, Method::GET, path, Vec::new()).await;
    }

    async fn post(&self, route: Route, path: &str, json: Vec<u8>) {
        self.send(route, Method::POST, path, json).await;
    }

    async fn send(&self, route: Route, method: Method, path: &str, body: Vec<u8>) {
        let index = route as usize;
        self.counters.sent[index].fetch_add(1, Ordering::Relaxed);
        if let Err(reason) = self.try_send(method, path, body).await {
            self.counters.failed[index].fetch_add(1, Ordering::Relaxed);
            if !self.counters.failure_logged[index].swap(true, Ordering::Relaxed) {
                tracing::warn!("load generator: {path} failed: {reason} (logged once per route)");
            }
        }
    }

    async fn try_send(&self, method: Method, path: &str, body: Vec<u8>) -> Result<(), String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.shop))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body.to_bytes()).trim().to_owned();
            Err(format!("{status}: {text}"))
        }
    }
}
