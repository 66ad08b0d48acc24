//! The shop's database: SQLite in a temporary file, seeded with the same
//! data on every start and deleted on exit.
//!
//! Schema: `customers`, `products` (200 000 rows), `orders` and
//! `order_lines`. Orders are indexed by customer and lines by order, as a
//! real shop's would be; `products.brand` deliberately has **no index**,
//! which is the planted "missing index" problem (`GET /search`).
//!
//! The file is in write-ahead-log mode and memory-mapped, as a production
//! SQLite would be: readers never block the checkout's writes, so the only
//! waits in the demo are the planted ones. Each thread that touches the
//! database opens its own connection once ([`with_connection`]), like a
//! pool with one connection per worker.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rusqlite::{Connection, params};

/// The database file, once created.
static PATH: OnceLock<PathBuf> = OnceLock::new();

/// File names: `smolder-demo-<pid>.sqlite`, plus SQLite's `-wal` and `-shm`.
const FILE_PREFIX: &str = "smolder-demo-";
const FILE_SUFFIX: &str = ".sqlite";

pub const PRODUCTS: u32 = 200_000;
pub const CUSTOMERS: u32 = 1_000;

/// Brands, each on about 1 in 40 products: `GET /search?brand=` finds
/// thousands of rows, after reading all 200 000.
pub const BRANDS: [&str; 40] = [
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Gringotts",
    "Oscorp",
    "Aperture",
    "Monarch",
    "Dunder",
    "Pied Piper",
    "Massive",
    "Blue Sun",
    "Buy n Large",
    "Ollivander",
    "Zorg",
    "Nakatomi",
    "Prestige",
    "Sirius",
    "Virtucon",
    "Gekko",
    "Krusty",
    "Duff",
    "Bluth",
    "Sterling",
    "Pendant",
    "Rekall",
    "Weyland",
    "Yoyodyne",
    "Omni",
    "Spacely",
    "Cogswell",
];

const CATEGORIES: [&str; 12] = [
    "kitchen", "garden", "tools", "toys", "books", "audio", "office", "sports", "outdoor", "bath",
    "lighting", "pets",
];
const ADJECTIVES: [&str; 16] = [
    "compact",
    "deluxe",
    "classic",
    "rugged",
    "slim",
    "smart",
    "quiet",
    "eco",
    "mini",
    "heavy-duty",
    "portable",
    "modular",
    "vintage",
    "wireless",
    "foldable",
    "premium",
];
const NOUNS: [&str; 16] = [
    "kettle",
    "lamp",
    "drill",
    "speaker",
    "backpack",
    "chair",
    "blender",
    "tent",
    "hose",
    "notebook",
    "headphones",
    "scale",
    "heater",
    "planter",
    "clock",
    "mixer",
];
const FIRST_NAMES: [&str; 12] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Radia", "Donald",
    "Frances", "John",
];
const LAST_NAMES: [&str; 12] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton", "Torvalds",
    "Perlman", "Knuth", "Allen", "Backus",
];
const CITIES: [&str; 8] = [
    "Lyon", "Porto", "Leeds", "Graz", "Turku", "Gdansk", "Ghent", "Bilbao",
];

/// The database file; removed on drop.
pub struct Database {
    path: PathBuf,
    /// Orders in the seeded data.
    pub orders: u32,
    /// Order lines in the seeded data.
    pub order_lines: u32,
}

impl Drop for Database {
    fn drop(&mut self) {
        remove_files(&self.path);
    }
}

/// Opens a connection to the database file.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // A writer waits for another writer instead of failing (readers never
    // block it in WAL mode).
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "mmap_size", 512_i64 << 20)?;
    // A demo needs no durability; it saves fsyncs on every checkout.
    conn.pragma_update(None, "synchronous", "OFF")?;
    Ok(conn)
}

/// Creates the database file in the temporary directory, with the schema
/// and the seeded data. Files left by demos that were killed are removed
/// first.
pub fn create() -> rusqlite::Result<Database> {
    let dir = std::env::temp_dir();
    remove_stale_files(&dir);
    let path = dir.join(format!("{FILE_PREFIX}{}{FILE_SUFFIX}", std::process::id()));
    remove_files(&path);
    // From here on, a failure removes the file again.
    let mut database = Database {
        path: path.clone(),
        orders: 0,
        order_lines: 0,
    };
    let mut conn = open(&path)?;
    conn.execute_batch(SCHEMA)?;
    let tx = conn.transaction()?;
    let mut rng = Rng(0x5eed_5a1e);
    seed_products(&tx, &mut rng)?;
    seed_customers(&tx, &mut rng)?;
    (database.orders, database.order_lines) = seed_orders(&tx, &mut rng)?;
    tx.commit()?;
    conn.execute_batch("ANALYZE")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    drop(conn);
    PATH.set(path).expect("the database is created once");
    Ok(database)
}

/// Runs `f` with this thread's connection, opening it on first use.
///
/// # Panics
/// If the database was not created first, or the file cannot be opened
/// any more.
pub fn with_connection<R>(f: impl FnOnce(&Connection) -> R) -> R {
    thread_local! {
        static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    }
    CONNECTION.with(|cell| {
        let mut slot = cell.borrow_mut();
        let conn = slot.get_or_insert_with(|| {
            let path = PATH.get().expect("the database was created at start");
            open(path).expect("open the shop database")
        });
        f(conn)
    })
}

/// Removes a database file and SQLite's files beside it.
fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

/// Removes database files whose demo process no longer runs (it was
/// killed before it could clean up).
fn remove_stale_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(FILE_PREFIX))
            .and_then(|n| n.strip_suffix(FILE_SUFFIX));
        if let Some(pid) = pid.filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            && !Path::new("/proc").join(pid).exists()
        {
            remove_files(&entry.path());
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE customers (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL,
    email TEXT NOT NULL,
    city  TEXT NOT NULL
);
CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    sku         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    brand       TEXT NOT NULL,          -- no index: GET /search scans every row
    category    TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE orders (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    placed_day  INTEGER NOT NULL,       -- days since the shop opened
    status      TEXT NOT NULL
);
CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE TABLE order_lines (
    id               INTEGER PRIMARY KEY,
    order_id         INTEGER NOT NULL REFERENCES orders(id),
    product_id       INTEGER NOT NULL REFERENCES products(id),
    quantity         INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL
);
CREATE INDEX order_lines_by_order ON order_lines(order_id);
";

fn seed_products(tx: &Connection, rng: &mut Rng) -> rusqlite::Result<()> {
    let mut insert = tx.prepare(
        "INSERT INTO products (id, sku, name, brand, category, price_cents, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for id in 1..=PRODUCTS {
        let adjective = rng.pick(&ADJECTIVES);
        let noun = rng.pick(&NOUNS);
        let brand = rng.pick(&BRANDS);
        let category = rng.pick(&CATEGORIES);
        let price_cents = 199 + rng.below(49_800);
        let description = format!(
            "A {adjective} {noun} by {brand} for {category}: model {}, {} colours.",
            rng.below(9000) + 1000,
            rng.below(8) + 1
        );
        insert.execute(params![
            id,
            format!("SKU-{id:06}"),
            format!("{brand} {adjective} {noun}"),
            brand,
            category,
            price_cents,
            description
        ])?;
    }
    Ok(())
}

fn seed_customers(tx: &Connection, rng: &mut Rng) -> rusqlite::Result<()> {
    let mut insert =
        tx.prepare("INSERT INTO customers (id, name, email, city) VALUES (?1, ?2, ?3, ?4)")?;
    for id in 1..=CUSTOMERS {
        let first = rng.pick(&FIRST_NAMES);
        let last = rng.pick(&LAST_NAMES);
        let email = format!(
            "{}.{}{id}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        );
        insert.execute(params![
            id,
            format!("{first} {last}"),
            email,
            rng.pick(&CITIES)
        ])?;
    }
    Ok(())
}

/// Each customer has 10 to 39 orders of 1 to 6 lines; each business account
/// (every tenth customer) has 150 to 249 orders of 5 to 20 lines. Returns
/// the number of orders and lines.
fn seed_orders(tx: &Connection, rng: &mut Rng) -> rusqlite::Result<(u32, u32)> {
    let mut order = tx.prepare(
        "INSERT INTO orders (id, customer_id, placed_day, status) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut line = tx.prepare(
        "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let (mut orders, mut lines) = (0, 0);
    for customer in 1..=CUSTOMERS {
        let (order_count, line_count) = if is_business_account(customer) {
            (150 + rng.below(100), 5..21)
        } else {
            (10 + rng.below(30), 1..7)
        };
        for _ in 0..order_count {
            orders += 1;
            let status = rng.pick(&["delivered", "delivered", "delivered", "shipped", "returned"]);
            order.execute(params![orders, customer, rng.below(365), status])?;
            for _ in 0..rng.within(line_count.clone()) {
                lines += 1;
                let product = 1 + rng.below(PRODUCTS);
                line.execute(params![
                    orders,
                    product,
                    1 + rng.below(4),
                    199 + rng.below(49_800)
                ])?;
            }
        }
    }
    Ok((orders, lines))
}

/// Every tenth customer is a business account, with hundreds of orders.
pub fn is_business_account(customer: u32) -> bool {
    customer.is_multiple_of(10)
}

/// SplitMix64: a small deterministic generator, so every run seeds the same
/// data and the load generator sends the same sequence.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n)) as u32
    }

    /// A number in `range`.
    pub fn within(&mut self, range: std::ops::Range<u32>) -> u32 {
        range.start + self.below(range.end - range.start)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u32) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        for _ in 0..1000 {
            let x = a.below(13);
            assert_eq!(x, b.below(13));
            assert!(x < 13);
        }
    }
}
