//! A headless Chromium driven over WebDriver (chromedriver), for the console's
//! browser tests, with axe-core for their accessibility checks.
//!
//! Needs `chromedriver` and `chromium` (`.ci/browser` installs Debian's) and
//! axe-core (`PAYBOND_AXE`); skipped only with `PAYBOND_SKIP_BROWSER=1`.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session on it.
pub struct Browser {
    driver: Child,
    url: String,
    client: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser chromedriver started is in chromedriver's process group
        // (see `start`): the whole group goes, so no browser outlives its test,
        // whether the test passed or panicked.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.driver.id()))
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    pub async fn start() -> Option<Self> {
        if std::env::var("PAYBOND_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("skipped: PAYBOND_SKIP_BROWSER=1");
            return None;
        }
        let driver = find_program("PAYBOND_CHROMEDRIVER", &["chromedriver"]);
        let chromium = find_program(
            "PAYBOND_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            panic!(
                "this test needs chromedriver and chromium: run the tests with `bash .ci/test` \
                 (it installs Debian's chromium and chromium-driver), or skip it with \
                 PAYBOND_SKIP_BROWSER=1"
            );
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            // A process group of its own, which the browser it starts joins.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut browser = Self {
            driver: child,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let start = Instant::now();
        loop {
            let ready = browser
                .client
                .get(format!("{}/status", browser.url))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session = browser
            .raw(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                                 "--disable-gpu", "--window-size=1280,900"]
                    }
                }}})),
            )
            .await;
        let id = session["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_owned();
        browser.url = format!("{}/session/{id}", browser.url);
        Some(browser)
    }

    pub async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        let value = v["value"].clone();
        assert!(
            value.get("error").is_none(),
            "WebDriver {method} {path}: {value}"
        );
        value
    }

    pub async fn goto(&self, url: &str) {
        self.raw("POST", "/url", Some(json!({"url": url}))).await;
    }

    pub async fn current_url(&self) -> String {
        self.raw("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn find_all(&self, css: &str) -> Vec<String> {
        self.raw(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
        .collect()
    }

    /// Waits (up to 15 s) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no `{css}` on the page: {}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.raw("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.raw(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The rendered text of the first element matching `css` ("" if none), read
    /// in one step: a live update may replace the element between two.
    pub async fn text(&self, css: &str) -> String {
        self.raw(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                "args": [css]
            })),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_owned()
    }

    pub async fn source(&self) -> String {
        self.raw("GET", "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn script(&self, script: &str) -> Value {
        self.raw(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the viewport to `target/console-screenshots/<name>`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let data = self.raw("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    /// Signs in with `key` and checks where it lands (`overview` for operators and
    /// admins, `approvals` for agents).
    pub async fn sign_in(&self, base: &str, key: &str, landing: &str) {
        self.goto(&format!("{base}/console")).await;
        self.type_into("#api_key", key).await;
        self.click("button[type=submit]").await;
        self.wait_for(if landing == "overview" {
            "#overview"
        } else {
            "#approval-rows"
        })
        .await;
        assert!(
            self.current_url()
                .await
                .ends_with(&format!("/console/{landing}"))
        );
    }

    /// Runs axe-core on the page as it stands; fails on any serious or critical
    /// violation, naming each rule and element.
    pub async fn axe(&self, page: &str) {
        let source = axe_source();
        // Evaluated by the driver (as WebDriver scripts are), not by the page, so
        // the console's CSP, which allows no inline script, does not apply.
        self.raw(
            "POST",
            "/execute/sync",
            Some(json!({"script": format!("{source}\nreturn typeof window.axe;"), "args": []})),
        )
        .await;
        let found = self
            .raw(
                "POST",
                "/execute/async",
                Some(json!({"script": r"
                    const done = arguments[arguments.length - 1];
                    window.axe.run(document, {resultTypes: ['violations']})
                      .then(r => done(r.violations
                        .filter(v => v.impact === 'serious' || v.impact === 'critical')
                        .map(v => v.impact + ' ' + v.id + ' (' + v.help + '): ' +
                             v.nodes.map(n => n.target.join(' ')).join(', '))))
                      .catch(e => done(['axe failed: ' + e]));",
                    "args": []})),
            )
            .await;
        let found = found.as_array().unwrap();
        assert!(found.is_empty(), "accessibility of {page}: {found:#?}");
    }

    /// Waits (up to 15 s) until the text of `css` satisfies `ok`.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "`{css}` still reads {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses a key on the page (WebDriver actions).
    pub async fn press(&self, key: &str) {
        self.raw(
            "POST",
            "/actions",
            Some(
                json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
            ),
        )
        .await;
    }

    /// The text of the open `confirm()` dialog, waiting for it (up to 5 s).
    pub async fn alert_text(&self) -> String {
        let start = Instant::now();
        loop {
            let v: Value = self
                .client
                .get(format!("{}/alert/text", self.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(text) = v["value"].as_str() {
                return text.to_owned();
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no dialog opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// axe-core's script (`.ci/browser` installs it and names it in `PAYBOND_AXE`).
pub fn axe_source() -> String {
    let Some(path) = std::env::var_os("PAYBOND_AXE") else {
        panic!(
            "the accessibility checks need axe-core: run the tests with `bash .ci/test` \
             (it installs it and sets PAYBOND_AXE), or skip the browser tests with \
             PAYBOND_SKIP_BROWSER=1"
        );
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("PAYBOND_AXE={}: {e}", PathBuf::from(path).display()))
}
