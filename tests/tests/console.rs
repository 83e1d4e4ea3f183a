//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/chromium`), driven over WebDriver against a real `foldhost serve`
//! with the example plugins. The run also rewrites the README's screenshots in `docs/`.

use crate::serve;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use foldhost::journal::{ContentType, ExpectedVersion, Journal, JournalConfig, NewEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};
use serve::{Dirs, PATIENCE, Server};

const TOKEN: &str = "console-admin-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session through its own `chromedriver`, both stopped when dropped.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run scripts/chromium (Debian's chromium and chromium-driver)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,860",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("no WebDriver session from chromedriver: {error}"),
            }
        };
        Browser {
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn goto(&self, server: &Server, hash: &str) {
        self.client()
            .goto(&server.url(&format!("/{hash}")))
            .await
            .unwrap();
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.client().execute(script, vec![]).await.unwrap()
    }

    /// The text of the first element matching `css` once `holds` accepts it.
    async fn wait_text(&self, css: &str, holds: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut last = None;
        loop {
            if let Ok(element) = self.client().find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if holds(&text) {
                    return text;
                }
                last = Some(text);
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed what was expected; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.client().find(Locator::Css(css)).await.unwrap();
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        let element = self.client().find(Locator::Css(css)).await.unwrap();
        element.click().await.unwrap();
    }

    /// Keeps the admin token for this tab, as the page's prompt would.
    async fn keep_admin_token(&self) {
        self.eval(&format!(
            "sessionStorage.setItem('foldhost-admin-token', '{TOKEN}'); return true"
        ))
        .await;
    }

    /// Installs the component `artifact` as plugin `name` through the Plugins page's file
    /// input, and waits until the page says it is installed.
    async fn upload(&self, artifact: &str, name: &str) {
        let upload = tempfile::tempdir().unwrap();
        let file = upload.path().join(format!("{name}.wasm"));
        std::fs::copy(foldhost_plugins::path(artifact), &file).unwrap();
        let input = self
            .client()
            .find(Locator::Css("#upload-file"))
            .await
            .unwrap();
        input.send_keys(file.to_str().unwrap()).await.unwrap();
        self.wait_text("#plugins-message", |t| {
            t.starts_with(&format!("Installed {name}"))
        })
        .await;
    }

    /// Saves a PNG of the page as `docs/{name}` for the README.
    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.unwrap();
        std::fs::create_dir_all(docs()).unwrap();
        let path = docs().join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("wrote {}", path.display());
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

async fn post(client: &reqwest::Client, server: &Server, path: &str, body: Value) -> Value {
    let response = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// Appends to `stream` the events of `body`, a JSON text: for data that serde_json would not
/// keep as sent (400,000 levels deep, integers past 2^53 read as doubles, repeated keys).
async fn append_text(client: &reqwest::Client, server: &Server, stream: &str, body: String) {
    let response = client
        .post(server.url(&format!("/streams/{stream}/events")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
}

/// Whether the page ran injected code or made an element out of event data.
const INJECTED: &str = "return {ran: window.__xss === undefined ? null : window.__xss, \
    elements: document.querySelectorAll('main img, main script, main b').length}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_works_in_a_real_browser() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let http = reqwest::Client::new();
    let browser = Browser::start().await;
    browser.client().set_window_size(1280, 860).await.unwrap();

    // The XSS probe: event data, metadata and type that would run code as HTML.
    let probe =
        "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"><b>bold</b>";
    post(
        &http,
        &server,
        "/streams/probe-1/events",
        json!({"events": [{
            "type": "<img src=x onerror=\"window.__xss = 3\">",
            "data": {"name": probe},
            "metadata": {"note": probe},
        }]}),
    )
    .await;

    // Aggregate: commands from the form change the state shown; a refusal shows its reason.
    browser
        .goto(&server, "#/aggregate/bank-account/alice")
        .await;
    browser.wait_text("h1", |t| t.contains("alice")).await;
    // Measured, not asserted (shared machine): the time to the page's first paint.
    let paint = browser
        .eval("const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null")
        .await;
    eprintln!("first contentful paint after {paint} ms");
    for (command, data, balance) in [
        ("Open", r#"{"owner": "Alice"}"#, "0"),
        ("Deposit", r#"{"amount": 100}"#, "100"),
        ("Deposit", r#"{"amount": 50}"#, "150"),
    ] {
        browser.type_into("#command-type", command).await;
        browser.type_into("#command-data", data).await;
        browser.click("#command-form button").await;
        browser
            .wait_text("#aggregate-state", |t| {
                t.contains(&format!("\"balance\": {balance}"))
            })
            .await;
    }
    browser
        .wait_text("#aggregate-version", |t| t.contains("version 3"))
        .await;
    browser.type_into("#command-type", "Withdraw").await;
    browser
        .type_into("#command-data", r#"{"amount": 1000}"#)
        .await;
    browser.click("#command-form button").await;
    let refused = browser
        .wait_text("#command-refused", |t| t.contains("422"))
        .await;
    assert!(refused.starts_with("Refused (422): "), "{refused}");
    // The time-travel slider, moved with the keyboard, shows the balance as of version 2.
    let slider = browser
        .client()
        .find(Locator::Css("#version-slider"))
        .await
        .unwrap();
    slider.send_keys("\u{E012}").await.unwrap(); // ArrowLeft
    browser
        .wait_text("#aggregate-version", |t| t.contains("version 2 of 3"))
        .await;
    browser
        .wait_text("#aggregate-state", |t| t.contains("\"balance\": 100"))
        .await;

    // Projection: its state as a tree, and a named query with arguments.
    browser.goto(&server, "#/projection/bank-analytics").await;
    browser
        .wait_text("#projection-state", |t| t.contains("total_balance"))
        .await;
    browser
        .wait_text("#projection-state", |t| t.contains("150"))
        .await;
    browser.type_into("#query-name", "top").await;
    browser.type_into("#query-args", "n=1").await;
    browser.click("#query-form button").await;
    browser
        .wait_text("#query-answer", |t| t.contains("Alice"))
        .await;
    browser.screenshot("console-projection.png").await;

    // Streams: listed newest first; a stream's events shown as text, the probe inert.
    browser.goto(&server, "#/streams").await;
    let listed = browser
        .wait_text("#streams tbody", |t| t.contains("probe-1"))
        .await;
    let (alice, probe_at) = (
        listed.find("bank-account-alice").unwrap(),
        listed.find("probe-1").unwrap(),
    );
    assert!(alice < probe_at, "newest first: {listed}");
    browser.goto(&server, "#/stream/probe-1").await;
    let shown = browser
        .wait_text("#events", |t| t.contains("window.__xss = 1"))
        .await;
    assert!(shown.contains("<script>"), "{shown}");
    assert!(shown.contains("onerror=\"window.__xss = 3\""), "{shown}");
    assert_eq!(
        browser.eval(INJECTED).await,
        json!({"ran": null, "elements": 0})
    );

    // Live tail: an event appended through the API appears.
    browser.goto(&server, "#/tail").await;
    browser.wait_text("#tail-state", |t| t == "following").await;
    let appended = Instant::now();
    post(
        &http,
        &server,
        "/streams/tail-1/events",
        json!({"events": [{"type": "Pinged", "data": {"probe": probe}}]}),
    )
    .await;
    browser.wait_text("#tail", |t| t.contains("Pinged")).await;
    eprintln!(
        "live tail showed the event {:?} after the append",
        appended.elapsed()
    );
    assert_eq!(
        browser.eval(INJECTED).await,
        json!({"ran": null, "elements": 0})
    );

    // Plugins and the API page list what the server has.
    browser.goto(&server, "#/plugins").await;
    browser
        .wait_text("#plugins tbody", |t| {
            t.contains("bank-account")
                && t.contains("bank-analytics")
                && t.contains("shopping-cart")
        })
        .await;
    browser.goto(&server, "#/api").await;
    browser
        .wait_text("main", |t| {
            t.contains("OpenAPI 3.1") && t.contains("/streams/{stream}/events")
        })
        .await;

    // Overview, with some traffic for its chart.
    browser.goto(&server, "#/").await;
    for i in 0..40 {
        post(
            &http,
            &server,
            "/aggregates/bank-account/alice/commands",
            json!({"type": "Deposit", "data": {"amount": i + 1}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait_text("#backend", |t| t == "redb").await;
    browser
        .wait_text("#commands-rate", |t| t != "0" && t != "–")
        .await;
    browser.wait_text("#p99", |t| t.ends_with(" ms")).await;
    // The probe, 3 commands, the ping and 40 deposits.
    browser.wait_text("#head", |t| t == "45").await;
    browser.screenshot("console-overview.png").await;
    browser.close().await;
}

/// Records in the page each state the plugins page shows for bank-analytics's pending
/// version: its status, and `bar` while a progress bar is drawn (`none` without one).
const RECORD_PENDING: &str = "window.__pending = []; \
    new MutationObserver(() => { \
      const cell = document.querySelector('tr[data-plugin=\"bank-analytics\"] .pending'); \
      if (!cell) return; \
      const status = cell.querySelector('.status'); \
      const seen = (status ? status.textContent : 'none') + (cell.querySelector('progress') ? ' bar' : ''); \
      if (window.__pending.at(-1) !== seen) window.__pending.push(seen); \
    }).observe(document.getElementById('page'), {subtree: true, childList: true, characterData: true}); \
    return true";

/// A new build of a projection, uploaded through the page (the JavaScript twin of
/// bank-analytics, slow enough to watch), shows as a pending version with a catch-up bar and
/// then takes over, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_plugin_shows_its_catch_up_and_goes_live() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let http = reqwest::Client::new();
    // A history for the new build to catch up on, long enough to watch.
    for account in 0..200 {
        let mut events =
            vec![json!({"type": "Opened", "data": {"owner": format!("owner {account}")}})];
        events.extend((0..999).map(|_| json!({"type": "Deposited", "data": {"amount": 1}})));
        post(
            &http,
            &server,
            &format!("/streams/bank-account-{account}/events"),
            json!({"events": events}),
        )
        .await;
    }
    let hash_of = |plugins: Value| {
        plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "bank-analytics")
            .map(|p| p["hash"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let plugins = http.get(server.url("/plugins")).send().await.unwrap();
    let old_hash = hash_of(plugins.json().await.unwrap());

    let browser = Browser::start().await;
    browser.goto(&server, "#/plugins").await;
    browser
        .wait_text("#plugins tbody", |t| t.contains("bank-analytics"))
        .await;
    browser.keep_admin_token().await;
    browser.eval(RECORD_PENDING).await;
    browser
        .upload(foldhost_plugins::BANK_ANALYTICS_JS, "bank-analytics")
        .await;

    // It takes over: the row shows the new build's hash, live, with nothing pending.
    let plugins = loop {
        let plugins: Value = http
            .get(server.url("/plugins"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if hash_of(plugins.clone()) != old_hash {
            break plugins;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new_hash = hash_of(plugins);
    let row = "tr[data-plugin=\"bank-analytics\"]";
    browser
        .wait_text(row, |t| t.contains(&new_hash[..12]))
        .await;
    browser
        .wait_text(&format!("{row} .plugin-status"), |t| t.starts_with("live"))
        .await;
    let seen: Vec<String> =
        serde_json::from_value(browser.eval("return window.__pending").await).unwrap();
    eprintln!("pending version as shown: {seen:?}");
    assert!(
        seen.iter().any(|s| s == "catching-up bar"),
        "the catch-up bar never showed: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("none"), "{seen:?}");
    browser.close().await;
}

/// Records in the page each status the plugins page shows for a file still loading (a row
/// without a plugin name yet), and each error it reports.
const RECORD_LOADING: &str = "window.__loading = []; window.__errors = []; \
    new MutationObserver(() => { \
      for (const status of document.querySelectorAll('#plugins tr[data-origin] .status')) { \
        if (window.__loading.at(-1) !== status.textContent) window.__loading.push(status.textContent); \
      } \
      const message = document.getElementById('plugins-message'); \
      if (message && message.className === 'error' && window.__errors.at(-1) !== message.textContent) \
        window.__errors.push(message.textContent); \
    }).observe(document.getElementById('page'), \
      {subtree: true, childList: true, characterData: true, attributes: true}); \
    return true";

/// While an uploaded plugin compiles, `GET /plugins` lists it by origin and status only (no
/// name, kind or hash): the page shows that row, then the plugin once loaded, and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_still_compiling_shows_as_loading_then_as_loaded() {
    use sha2::Digest;
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Some(TOKEN));
    let browser = Browser::start().await;
    browser.goto(&server, "#/plugins").await;
    browser
        .wait_text("#plugins tbody", |t| t.contains("bank-account"))
        .await;
    browser.keep_admin_token().await;
    browser.eval(RECORD_LOADING).await;
    // The JavaScript twin takes seconds to compile (a fresh data directory: nothing cached).
    let artifact = foldhost_plugins::BANK_ACCOUNT_JS;
    browser.upload(artifact, "bank-account").await;
    let hash = hex::encode(sha2::Sha256::digest(
        std::fs::read(foldhost_plugins::path(artifact)).unwrap(),
    ));
    browser
        .wait_text("tr[data-plugin=\"bank-account\"]", |t| {
            t.contains(&hash[..12])
        })
        .await;
    let loading: Vec<String> =
        serde_json::from_value(browser.eval("return window.__loading").await).unwrap();
    let errors = browser.eval("return window.__errors").await;
    eprintln!("loading rows as shown: {loading:?}");
    assert!(
        loading.iter().any(|s| s == "compiling"),
        "the compiling row never showed: {loading:?}; errors: {errors}"
    );
    assert_eq!(errors, json!([]));
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#plugins tr[data-origin]').length")
            .await,
        json!(0)
    );
    browser.close().await;
}

/// The text of every `<pre>` of the stream page's events.
const EVENT_BLOCKS: &str =
    "return [...document.querySelectorAll('#events pre')].map((pre) => pre.textContent)";

/// One hostile event cannot freeze or blank a stream's page: an array 400,000 levels deep,
/// and an event whose indented text would take megabytes, each show their first 64 KiB with a
/// "Show all" that shows the text as stored; the events around them still show. A tree
/// (states, query answers) shows at most 32 levels and 2,000 values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_or_huge_event_shows_bounded_beside_the_others() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let http = reqwest::Client::new();
    let deep = format!("{}{}", "[".repeat(400_000), "]".repeat(400_000));
    let numbers: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let wide = format!(
        "{}[{}]{}",
        "{\"k\":".repeat(120),
        numbers.join(","),
        "}".repeat(120)
    );
    for (kind, data) in [
        ("Before", r#"{"n":1}"#),
        ("Deep", &deep),
        ("Wide", &wide),
        ("After", r#"{"n":2}"#),
    ] {
        let body = format!(r#"{{"events": [{{"type": "{kind}", "data": {data}}}]}}"#);
        append_text(&http, &server, "hostile-1", body).await;
    }
    let browser = Browser::start().await;
    browser.goto(&server, "#/stream/hostile-1").await;
    let shown = browser.wait_text("#events", |t| t.contains("After")).await;
    for kind in ["Before", "Deep", "Wide"] {
        assert!(shown.contains(kind), "{kind} is missing");
    }
    let blocks: Vec<String> = serde_json::from_value(browser.eval(EVENT_BLOCKS).await).unwrap();
    let lengths: Vec<usize> = blocks.iter().map(|b| b.chars().count()).collect();
    assert_eq!(blocks.len(), 4, "{lengths:?}");
    assert!(lengths.iter().all(|&n| n <= 64 << 10), "{lengths:?}");
    assert!(
        blocks[1].starts_with("[\n  [\n    [\n"),
        "{}",
        &blocks[1][..40]
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#events .show-all').length")
            .await,
        json!(2)
    );
    browser.click("#events .event:nth-child(2) .show-all").await;
    assert_eq!(
        browser
            .eval(
                "return document.querySelector('#events .event:nth-child(2) pre').textContent \
                 === '['.repeat(400000) + ']'.repeat(400000)"
            )
            .await,
        json!(true)
    );

    // A tree stops at 32 levels and 2,000 values, and says what it left out.
    let tree = browser
        .eval(
            "return import('/ui/dom.js').then(({ jsonTree }) => { \
               const deep = jsonTree('['.repeat(400000) + ']'.repeat(400000)); \
               const wide = jsonTree(JSON.stringify(Array.from({ length: 100000 }, (_, i) => i))); \
               return [1 + deep.querySelectorAll('details').length, deep.querySelector('.json-more').textContent, \
                       wide.querySelectorAll('.json-number').length, wide.lastElementChild.textContent]; })",
        )
        .await;
    assert_eq!(
        tree,
        json!([
            32,
            "[… 799,936 characters not shown",
            1999,
            "… 98,001 more not shown"
        ])
    );
    browser.close().await;
}

/// Event data and states show as stored, not as JSON.parse reads them: integers past 2^53
/// exact, keys in their order, repeated keys kept; events whose content is bytes say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_data_and_states_show_as_stored() {
    let dirs = Dirs::new();
    // Bytes, as only an import or a plugin stores them.
    let journal = dirs.data.join("journal.redb");
    std::fs::create_dir_all(&dirs.data).unwrap();
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open(journal, JournalConfig::default()).unwrap();
        let blob = NewEvent {
            id: uuid::Uuid::now_v7(),
            event_type: "Blob".to_owned(),
            content_type: ContentType::Binary,
            data: vec![0, 159, 146, 150],
            metadata: None,
        };
        journal
            .append_blocking("blob-1", ExpectedVersion::Any, vec![blob])
            .unwrap();
    })
    .await
    .unwrap();
    let server = Server::start(&dirs, None);
    let http = reqwest::Client::new();
    let body = r#"{"events": [
        {"type": "Exact", "data": {"n":9007199254740993,"b":1,"2":2},
         "metadata": {"trace":12345678901234567890}},
        {"type": "Repeated", "data": {"a":1,"a":2}}]}"#;
    append_text(&http, &server, "exact-1", body.to_owned()).await;

    let browser = Browser::start().await;
    browser.goto(&server, "#/stream/exact-1").await;
    browser
        .wait_text("#events", |t| t.contains("Repeated"))
        .await;
    assert_eq!(
        browser.eval(EVENT_BLOCKS).await,
        json!([
            "{\n  \"n\": 9007199254740993,\n  \"b\": 1,\n  \"2\": 2\n}",
            "{\n  \"trace\": 12345678901234567890\n}",
            "{\n  \"a\": 1,\n  \"a\": 2\n}",
        ])
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#events .badge').length")
            .await,
        json!(0)
    );
    browser.goto(&server, "#/stream/blob-1").await;
    browser.wait_text("#events .badge", |t| t == "binary").await;
    assert_eq!(browser.eval(EVENT_BLOCKS).await, json!(["\"AJ+Slg==\""]));

    // A state, and the command form's data, keep a large integer exact.
    browser.goto(&server, "#/aggregate/bank-account/big").await;
    browser.wait_text("h1", |t| t.contains("big")).await;
    for (command, data, version) in [
        ("Open", r#"{"owner": "Big"}"#, 1),
        ("Deposit", r#"{"amount": 9007199254740993}"#, 2),
    ] {
        browser.type_into("#command-type", command).await;
        browser.type_into("#command-data", data).await;
        browser.click("#command-form button").await;
        browser
            .wait_text("#command-outcome", |t| {
                t.starts_with(&format!("Accepted: version {version},"))
            })
            .await;
    }
    browser
        .wait_text("#aggregate-state", |t| {
            t.contains("\"balance\": 9007199254740993")
        })
        .await;

    // The live tail shows data as sent.
    browser.goto(&server, "#/tail").await;
    browser.wait_text("#tail-state", |t| t == "following").await;
    let body = r#"{"events": [{"type": "Exact", "data": {"n":9007199254740993,"2":2}}]}"#;
    append_text(&http, &server, "exact-1", body.to_owned()).await;
    browser
        .wait_text("#tail", |t| t.contains(r#"{"n":9007199254740993,"2":2}"#))
        .await;
    browser.close().await;
}

/// The versions of the events the stream page shows, and whether it says there are no more.
const PAGE_SHOWN: &str = "return { \
    versions: [...document.querySelectorAll('#events .event strong')].map((s) => Number(s.textContent.slice(1))), \
    end: [...document.querySelectorAll('main .toolbar')].some((t) => t.textContent.includes('No more events.')) }";

/// A page of a stream ends early once its events take 16 MiB: every page with events links
/// to the next, so paging on from the first reaches every event, and the page past the last
/// says there are no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_on_through_large_events_reaches_every_event() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let http = reqwest::Client::new();
    let pad = "x".repeat(1_000_000);
    for i in 1..=20 {
        let data = if i <= 17 {
            json!({"pad": pad})
        } else {
            json!({"i": i})
        };
        post(
            &http,
            &server,
            "/streams/large-1/events",
            json!({"events": [{"type": "Large", "data": data}]}),
        )
        .await;
    }
    let browser = Browser::start().await;
    browser.goto(&server, "#/stream/large-1").await;
    let (mut next, mut pages) = (1, Vec::new());
    loop {
        let deadline = Instant::now() + PATIENCE;
        let page = loop {
            let page = browser.eval(PAGE_SHOWN).await;
            if page["versions"][0] == next || page["end"] == true {
                break page;
            }
            assert!(
                Instant::now() < deadline,
                "the page from version {next} never showed: {page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let versions: Vec<u64> = serde_json::from_value(page["versions"].clone()).unwrap();
        if versions.is_empty() {
            break;
        }
        let expected: Vec<u64> = (next..next + versions.len() as u64).collect();
        assert_eq!(versions, expected);
        pages.push(versions.len());
        next += versions.len() as u64;
        let later = browser.client().find(Locator::LinkText("Later →")).await;
        later.expect("no \"Later →\" link").click().await.unwrap();
    }
    assert_eq!(pages, [16, 4], "events per page");
    browser.close().await;
}

/// The value of gauge `name` in the server's `/metrics`.
async fn gauge(client: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|line| line.split_once(' ').is_some_and(|(n, _)| n == name))
        .unwrap_or_else(|| panic!("no {name} in /metrics"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// Navigating faster than pages render leaves nothing of them running: after five quick
/// rounds through the live tail, the overview and the streams, every live feed the tail
/// opened is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_navigation_leaves_no_live_feed_open() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let http = reqwest::Client::new();
    let browser = Browser::start().await;
    browser.goto(&server, "#/streams").await;
    browser.wait_text("h1", |t| t == "Streams").await;
    // Counts the live feeds the page opens (the same EventSource, counted).
    browser
        .eval(
            "window.__opened = 0; \
             window.EventSource = class extends EventSource { \
               constructor(...args) { super(...args); window.__opened++; } }; \
             const go = (hash) => new Promise((changed) => { \
               window.addEventListener('hashchange', changed, { once: true }); location.hash = hash; }); \
             return (async () => { \
               for (let i = 0; i < 5; i++) { await go('#/tail'); await go('#/'); await go('#/streams'); } \
               return true; })()",
        )
        .await;
    // Every visit to the tail has rendered (and opened its feed).
    let deadline = Instant::now() + PATIENCE;
    while browser.eval("return window.__opened").await != json!(5) {
        assert!(Instant::now() < deadline, "the tail did not open 5 feeds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait_text("h1", |t| t == "Streams").await;
    loop {
        let feeds = gauge(&http, &server, "foldhost_live_feeds").await;
        if feeds == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{feeds} live feeds still open after leaving the tail"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.close().await;
}

/// Wraps the page's `fetch`: records the version of each `at_version` request in
/// `window.__asked`, and holds the answer to `at_version=1` until `window.__release()`
/// (`window.__held` settles with it).
const HOLD_VERSION_1: &str = "const real = window.fetch.bind(window); \
    let release; const gate = new Promise((open) => { release = open; }); \
    window.__asked = []; window.__release = release; \
    window.fetch = (url, init) => { \
      const at = /at_version=(\\d+)/.exec(String(url)); \
      if (!at) return real(url, init); \
      window.__asked.push(Number(at[1])); \
      if (at[1] !== '1') return real(url, init); \
      const answer = gate.then(() => real(url, init)); \
      window.__held = answer.catch(() => null); \
      return answer; \
    }; return true";

/// Moves the version slider to each of `versions` at once, as a drag does.
fn drag_to(versions: &[u64]) -> String {
    format!(
        "const slider = document.getElementById('version-slider'); \
         for (const v of {versions:?}) {{ slider.value = v; slider.dispatchEvent(new Event('input')); }} \
         return true"
    )
}

/// Dragging the version slider rebuilds one past state once it rests, not one per step, and
/// an answer overtaken by a later one is dropped: the state shown is the slider's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_slider_shows_its_version_with_one_rebuild_per_rest() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let http = reqwest::Client::new();
    let commands = "/aggregates/bank-account/bob/commands";
    post(
        &http,
        &server,
        commands,
        json!({"type": "Open", "data": {"owner": "Bob"}}),
    )
    .await;
    for _ in 0..4 {
        let deposit = json!({"type": "Deposit", "data": {"amount": 10}});
        post(&http, &server, commands, deposit).await;
    }
    let browser = Browser::start().await;
    browser.goto(&server, "#/aggregate/bank-account/bob").await;
    browser
        .wait_text("#aggregate-version", |t| t == "version 5 (current)")
        .await;
    browser.eval(HOLD_VERSION_1).await;
    // To version 1, whose answer is held; then a drag that ends at version 2.
    browser.eval(&drag_to(&[1])).await;
    let deadline = Instant::now() + PATIENCE;
    while browser.eval("return window.__asked.length").await != json!(1) {
        assert!(Instant::now() < deadline, "version 1 was never asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.eval(&drag_to(&[2, 3, 4, 3, 2])).await;
    browser
        .wait_text("#aggregate-version", |t| t == "version 2 of 5")
        .await;
    // The answer for version 1 comes last, and changes nothing.
    browser
        .eval(
            "window.__release(); \
             return window.__held.then(() => new Promise((later) => setTimeout(later, 500)))",
        )
        .await;
    assert_eq!(browser.eval("return window.__asked").await, json!([1, 2]));
    assert_eq!(
        browser.wait_text("#aggregate-version", |_| true).await,
        "version 2 of 5"
    );
    browser
        .wait_text("#aggregate-state", |t| t.contains("\"balance\": 10"))
        .await;
    browser.close().await;
}

/// Replaces the page's EventSource with one that opens and is then ended by the server's
/// `error` event, as `GET /events/live` ends a feed whose journal read failed; records when
/// each is made in `window.__feeds`.
const FEED_ENDED_BY_SERVER: &str = "window.__feeds = []; \
    window.EventSource = class extends EventTarget { \
      constructor(url) { \
        super(); window.__feeds.push({ url, at: performance.now() }); \
        setTimeout(() => { \
          this.fire(new Event('open')); \
          this.fire(new MessageEvent('error', { data: 'reading the journal at position 7 failed: disk on fire' })); \
        }, 0); \
      } \
      fire(event) { this.dispatchEvent(event); const on = this['on' + event.type]; if (on) on.call(this, event); } \
      close() {} \
    }; return true";

/// A feed the server ends with an `error` event shows the server's reason, and the tail
/// reconnects waiting twice as long after each failure in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_shows_why_the_server_ended_its_feed_and_backs_off() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let browser = Browser::start().await;
    browser.goto(&server, "#/streams").await;
    browser.wait_text("h1", |t| t == "Streams").await;
    browser.eval(FEED_ENDED_BY_SERVER).await;
    browser.eval("location.hash = '#/tail'; return true").await;
    browser
        .wait_text("#tail-error", |t| {
            t == "The server ended the feed: reading the journal at position 7 failed: disk on fire"
        })
        .await;
    browser
        .wait_text("#tail-state", |t| t.contains("retrying in 4 s"))
        .await;
    // Three feeds at least, the third made 2 s after the second (a timer's least wait).
    let feeds = browser.eval("return window.__feeds").await;
    let at = |i: usize| feeds[i]["at"].as_f64().unwrap();
    assert!(feeds.as_array().unwrap().len() >= 3, "{feeds}");
    assert!(at(1) - at(0) >= 990.0 && at(2) - at(1) >= 1990.0, "{feeds}");
    browser.close().await;
}
