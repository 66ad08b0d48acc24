//! Headless Chromium driven through chromedriver's W3C WebDriver API: a
//! handful of raw HTTP requests (new session, navigate, find, click, read
//! text, screenshot), no WebDriver crate.
//!
//! Debian's `chromium` and `chromium-driver` packages provide
//! `/usr/bin/chromium` and `/usr/bin/chromedriver`; `CHROMIUM` and
//! `CHROMEDRIVER` override the paths. Chromium runs with the flags that work
//! as root in a container (`--no-sandbox`, ...) and a fresh profile
//! directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http;

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Finds an executable: `$env_var`, else `name` on `PATH`, else
/// `/usr/bin/name`. Fails the test, naming the Debian package, if none
/// exists.
pub fn find_executable(env_var: &str, name: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "${env_var} names {}, which does not exist",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .chain([Path::new("/usr/bin").join(name)])
        .find(|path| path.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "{name} not found (on PATH, in /usr/bin, or in ${env_var}): this test drives a real \
             headless browser. Install Debian's packages: \
             apt-get install -y chromium chromium-driver (this one comes from {package})"
        )
    })
}

/// A running chromedriver; killed on drop.
pub struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    pub fn start(chromedriver: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let ready = poll(Duration::from_secs(30), || {
            let status = http::get(&format!("{}/status", driver.base)).ok()?;
            (status.json()["value"]["ready"] == true).then_some(())
        });
        assert!(
            ready.is_some(),
            "chromedriver did not become ready on port {port}"
        );
        driver
    }

    /// Opens a headless Chromium with a fresh profile in `profile_dir`.
    pub fn session(&self, chromium: &Path, profile_dir: &Path) -> Session<'_> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile_dir.display()),
                ],
            },
        }}});
        let answer = self.call("POST", "/session", Some(&capabilities));
        let id = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_owned();
        Session { driver: self, id }
    }

    /// One WebDriver command; returns its `value`, failing on an error.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("{}{path}", self.base);
        // POST commands take a JSON object, even an empty one.
        let empty = json!({});
        let body = (method == "POST").then(|| body.unwrap_or(&empty));
        let response = http::request(method, &url, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let mut answer = response.json();
        assert!(
            response.status == 200,
            "WebDriver {method} {path} answered {}: {answer}",
            response.status
        );
        answer["value"].take()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session; the browser is closed on drop.
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

/// A reference to an element of the current page.
#[derive(Clone)]
pub struct Element(String);

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self.call(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        found
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str())
                    .map(|id| Element(id.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until an element matching `css` has text accepted by `accept`.
    pub fn wait_for(
        &self,
        css: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> Option<(Element, String)> {
        poll(timeout, || {
            self.find_all(css)
                .into_iter()
                .map(|element| {
                    let text = self.text(&element);
                    (element, text)
                })
                .find(|(_, text)| accept(text))
        })
    }

    pub fn text(&self, element: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", element.0), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn attribute(&self, element: &Element, name: &str) -> String {
        self.call(
            "GET",
            &format!("/element/{}/attribute/{name}", element.0),
            None,
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub fn click(&self, element: &Element) {
        self.call("POST", &format!("/element/{}/click", element.0), None);
    }

    /// The page's visible text.
    pub fn page_text(&self) -> String {
        let script = json!({ "script": "return document.body.innerText", "args": [] });
        self.call("POST", "/execute/sync", Some(&script))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.call("GET", "/screenshot", None);
        let png = base64_decode(encoded.as_str().unwrap_or_default());
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.driver.base, self.id);
        let _ = http::request("DELETE", &url, None);
    }
}

/// Calls `attempt` every 250 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Standard base64 (screenshots), without a dependency.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &s)| acc | u32::from(s) << (18 - 6 * i));
            let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
            bytes.into_iter().take(chunk.len().saturating_sub(1))
        })
        .collect()
}

#[test]
fn base64_round_trip() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8hIQ=="), b"hello!!");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

#[test]
#[should_panic(expected = "apt-get install -y chromium chromium-driver")]
fn a_missing_browser_fails_naming_the_packages() {
    find_executable(
        "SMOLDER_TEST_NO_SUCH_VARIABLE",
        "no-such-browser",
        "chromium",
    );
}
