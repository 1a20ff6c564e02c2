//! A real browser against a real network: headless Chromium driven through WebDriver
//! (chromedriver, fantoccini). Debian's `chromium` and `chromium-driver` packages are needed;
//! `.ci/run` installs them. Without them the test says so and passes, except under CI=true,
//! where a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use p2pstore::proto::{AccountAdmission, AdminAction, FileSummary};
use serde_json::{Value, json};

use crate::harness::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium saving downloads into `downloads`, with its profile in `profile` and
/// `extra` flags besides the usual ones.
async fn browser(downloads: &Path, profile: &Path, extra: &[String]) -> Option<(Driver, Browser)> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must have chromium and chromium-driver: .ci/run installs them");
        eprintln!("skipping the browser test: install chromium and chromium-driver (apt-get) to run it");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ]
    .map(String::from)
    .into();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend_from_slice(extra);
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": args,
            "prefs": { "download.default_directory": downloads.display().to_string(), "download.prompt_for_download": false }
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let url = format!("http://127.0.0.1:{port}");
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    for _ in 0..100 {
        if let Ok(b) = ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&url).await {
            return Some((driver, b));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start");
}

async fn text(b: &Browser, css: &str) -> String {
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// Types into a field; the page redraws what changed every 2 s, so a field found just before
/// a redraw may be gone: find it again then.
async fn fill(b: &Browser, css: &str, value: &str) {
    for attempt in 0.. {
        let e = b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await.unwrap();
        match async {
            e.clear().await?;
            e.send_keys(value).await
        }
        .await
        {
            Ok(()) => return,
            Err(err) if attempt < 5 => eprintln!("retrying {css}: {err}"),
            Err(err) => panic!("cannot fill {css}: {err}"),
        }
    }
}

/// The value of a script run in the page.
async fn js(b: &Browser, script: &str) -> Value {
    b.execute(script, vec![]).await.unwrap()
}

/// Waits until the element `css` shows `wanted` (the page redraws every 2 s).
async fn shows(b: &Browser, css: &str, wanted: &str) {
    until(&format!("{css} shows {wanted:?}"), 30, || async {
        match b.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.is_ok_and(|t| t.contains(wanted)),
            Err(_) => false,
        }
    })
    .await;
}

/// The page's account id, from the header once the page has made or loaded its key.
async fn page_account(b: &Browser) -> String {
    let script = "return (document.getElementById('account').title.match(/[0-9a-f]{32}/) || [''])[0]";
    until("the page has an account", 30, || async { !js(b, script).await.as_str().unwrap().is_empty() }).await;
    js(b, script).await.as_str().unwrap().to_owned()
}

/// Records the Content-Security-Policy violations of this document in `window.__csp` (the
/// page moves between views by its hash, in the same document).
async fn watch_csp(b: &Browser) {
    js(
        b,
        "window.__csp = []; document.addEventListener('securitypolicyviolation', \
         (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI)); return true;",
    )
    .await;
}

/// What the page must never hold: script from data, an inline handler, a `javascript:`
/// link, a CSP violation.
async fn assert_clean(b: &Browser, what: &str) {
    let found = js(
        b,
        "const bad = [...document.querySelectorAll('*')].flatMap((e) => [...e.attributes] \
           .filter((a) => /^on/i.test(a.name) || /^\\s*javascript:/i.test(a.value)).map((a) => e.tagName + ' ' + a.name)); \
         return { xss: typeof window.__xss, bad, injected: document.querySelectorAll('img, svg, iframe, object, embed, script:not([src])').length, \
           csp: window.__csp || null };",
    )
    .await;
    assert_eq!(found["xss"], "undefined", "{what}: script ran: {found}");
    assert_eq!(found["bad"], json!([]), "{what}: inline handlers or javascript: links: {found}");
    assert_eq!(found["injected"], 0, "{what}: elements from data: {found}");
    assert_eq!(found["csp"], json!([]), "{what}: the page broke its Content-Security-Policy: {found}");
}

/// The files an account lists (`GET /v2/files`, signed by it).
async fn listed(client: &p2pstore::client::Client) -> Vec<String> {
    let r = client.send_signed("GET", "/v2/files", bytes::Bytes::new()).await.unwrap();
    r.json::<Vec<FileSummary>>().unwrap().into_iter().map(|f| f.file_id).collect()
}

/// Files completely downloaded into `dir` (no partial `.crdownload`).
fn downloaded(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "crdownload"))
        .collect()
}

/// Uploads `file` through the Upload page, encrypted with `password` and coded `k` of `n`;
/// the id the page shows for it.
async fn upload_in_page(
    b: &Browser,
    base: &str,
    file: &Path,
    password: &str,
    (k, n): (u8, u8),
) -> p2pstore::core::manifest::FileId {
    b.goto(&format!("{base}/#/upload")).await.unwrap();
    let input = b.wait().for_element(Locator::Css("#file")).await.unwrap();
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    fill(b, "#pw", password).await;
    fill(b, "#pw2", password).await;
    fill(b, "#k", &k.to_string()).await;
    fill(b, "#n", &n.to_string()).await;
    b.find(Locator::Css("#up")).await.unwrap().click().await.unwrap();
    p2pstore::core::manifest::FileId::parse(&text(b, "#newfile").await).unwrap()
}

/// On a file's page (`#/file/<id>`): downloads it with `password`, waits until the browser
/// has saved it as `name` in `downloads`, and returns what it saved.
async fn save_in_page(b: &Browser, downloads: &Path, password: &str, name: &str) -> Vec<u8> {
    fill(b, "#pw", password).await;
    b.find(Locator::Css("#dl")).await.unwrap().click().await.unwrap();
    until(&format!("the browser saved {name}"), 60, || async {
        downloaded(downloads).iter().any(|p| p.ends_with(name))
    })
    .await;
    std::fs::read(downloads.join(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_in_a_real_browser() {
    let c = Cluster::start_with(5, fast_config()).await;
    let downloads = c.path("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let Some((_driver, b)) = browser(&downloads, &c.path("profile"), &[]).await else { return };
    let base = c.net.url();

    // The dashboard shows the network as it is; the page has made its account.
    b.goto(&format!("{base}/#/")).await.unwrap();
    watch_csp(&b).await;
    let online = async { text(&b, ".tile .v").await };
    assert_eq!(online.await, "5", "peers online on the dashboard");
    let account = page_account(&b).await;
    assert_clean(&b, "dashboard").await;

    // Upload through the page; the CLI's client downloads it byte-identical.
    let page_file = c.write("from-page.bin", &data(2 * 1024 * 1024 + 123, 77));
    let id = upload_in_page(&b, &base, &page_file, "page password", (3, 5)).await;
    let out = c.path("from-page.out");
    c.client.download(&id, b"page password", Some(&out), false, None).await.unwrap();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&page_file).unwrap(),
        "CLI download of a page upload differs"
    );
    let view = c.client.info(&id).await.unwrap();
    assert_eq!((view.summary.k, view.summary.n), (3, 5));
    assert_clean(&b, "upload").await;

    // The file is the page's account's: its Files view lists it, another account's list does
    // not (nor the CLI's), and its password shows the name.
    let page_link = format!("a[href='#/file/{id}']");
    b.goto(&format!("{base}/#/files")).await.unwrap();
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(&page_link)).await.unwrap();
    assert_eq!(text(&b, "#account-id").await, account, "the Files page shows the page's account");
    shows(&b, "main h1", "(1 of this page's account").await;
    for client in [&c.other_client(), &c.client] {
        assert!(!listed(client).await.contains(&id.to_string()), "another account lists the page's file");
    }
    assert_clean(&b, "files").await;

    // A CLI upload, opened by its id: a wrong password in the page saves nothing, the right
    // one the file.
    let cli_data = data(3 * PER_SEGMENT + 5, 78);
    let cli = c.client.upload(&c.write("cli-file.txt", &cli_data), b"cli password", params(3, 5), None).await.unwrap();
    b.goto(&format!("{base}/#/file/{cli}")).await.unwrap();
    fill(&b, "#pw", "not the password").await;
    b.find(Locator::Css("#dl")).await.unwrap().click().await.unwrap();
    until("the page reports the wrong password", 30, || async { text(&b, "#task").await.contains("wrong password") })
        .await;
    assert!(downloaded(&downloads).is_empty(), "a wrong password saved something");
    let saved = save_in_page(&b, &downloads, "cli password", "cli-file.txt").await;
    assert!(saved == cli_data, "page download differs");
    assert_clean(&b, "file").await;

    // The CLI's file is not the page's: its Files view still lists its own file only.
    b.goto(&format!("{base}/#/files")).await.unwrap();
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(&page_link)).await.unwrap();
    assert!(b.find_all(Locator::Css(&format!("a[href='#/file/{cli}']"))).await.unwrap().is_empty());

    // The other views draw, with nothing inline.
    b.goto(&format!("{base}/#/peers")).await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("td.id a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    shows(&b, "main h1", "Peer").await;
    shows(&b, "main h2", "Audit history").await;
    b.goto(&format!("{base}/#/audits")).await.unwrap();
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("main td.id a")).await.unwrap();
    assert_clean(&b, "peers and audits").await;

    // The account survives a reload (its key is in IndexedDB) and still owns the file, whose
    // name the page forgot and its password shows again.
    b.refresh().await.unwrap();
    assert_eq!(page_account(&b).await, account, "a reload made a new account");
    b.goto(&format!("{base}/#/files")).await.unwrap();
    b.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(&page_link)).await.unwrap();
    shows(&b, "main table", "encrypted").await;
    fill(&b, "#pw", "not the password").await;
    b.find(Locator::Css("form.pw button")).await.unwrap().click().await.unwrap();
    shows(&b, "#pwmsg", "the password opens none of these files").await;
    fill(&b, "#pw", "page password").await;
    b.find(Locator::Css("form.pw button")).await.unwrap().click().await.unwrap();
    shows(&b, "#pwmsg", "1 of 1 names shown").await;
    shows(&b, "main table", "from-page.bin").await;
    b.close().await.unwrap();
    c.net.shutdown().await;
}

/// The Chromium flag that accepts a certificate chain it cannot verify when a certificate in
/// it has the public key of `key` (PEM), named by the SHA-256 of its SubjectPublicKeyInfo;
/// any other unverifiable certificate is still refused. Chromium honours the flag only with
/// `--user-data-dir`, which `browser` sets. (Trusting the CA itself would take an NSS
/// database made with `certutil`, from a package the test machines lack.)
fn accept_server_key(key: &Path) -> String {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
    let hash = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
    format!("--ignore-certificate-errors-spki-list={}", base64(hash.as_ref()))
}

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// The page over HTTPS, as it is served beyond one machine: the coordinator and the nodes
/// serve a certificate from a private CA, whose key Chromium is told to accept. The page is a
/// secure context (WebCrypto, which makes its account key, signs and encrypts, exists only
/// there), loaded over TLS, and every request it makes goes over TLS; files move both ways
/// between the page and the CLI's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_over_https_in_a_real_browser() {
    let certs = tempfile::tempdir().unwrap();
    let tls = p2pstore::net::tls::local_ca(&certs.path().join("ca")).unwrap();
    p2pstore::net::tls::trust_ca_file(&tls.ca).unwrap();
    let mut config = fast_config();
    config.tls.cert = Some(tls.cert.clone());
    config.tls.key = Some(tls.key.clone());
    let c = Cluster::start_with(5, config).await;
    let base = c.net.url();
    assert!(base.starts_with("https://"), "{base}");
    let downloads = c.path("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let accept = [accept_server_key(&tls.key)];
    let Some((_driver, b)) = browser(&downloads, &c.path("profile"), &accept).await else { return };

    // The page came over TLS, is a secure context and has WebCrypto; it made its account.
    b.goto(&format!("{base}/#/")).await.unwrap();
    watch_csp(&b).await;
    let page = js(
        &b,
        "performance.setResourceTimingBufferSize(100000); \
         const nav = performance.getEntriesByType('navigation')[0]; \
         return { protocol: location.protocol, secure: window.isSecureContext, \
           subtle: typeof (globalThis.crypto && crypto.subtle), handshake: nav.secureConnectionStart > 0 };",
    )
    .await;
    let wanted = json!({ "protocol": "https:", "secure": true, "subtle": "object", "handshake": true });
    assert_eq!(page, wanted, "the page over HTTPS");
    assert_eq!(text(&b, ".tile .v").await, "5", "peers online on the dashboard");
    page_account(&b).await;

    // Upload through the page; the CLI's client downloads it byte-identical.
    let page_file = c.write("from-page.bin", &data(1024 * 1024 + 321, 91));
    let id = upload_in_page(&b, &base, &page_file, "page password", (3, 5)).await;
    let out = c.path("from-page.out");
    c.client.download(&id, b"page password", Some(&out), false, None).await.unwrap();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&page_file).unwrap(),
        "CLI download of a page upload over HTTPS differs"
    );

    // A CLI upload, opened in the page by its id, saves byte-identical.
    let cli_data = data(3 * PER_SEGMENT + 5, 92);
    let cli = c.client.upload(&c.write("cli-file.txt", &cli_data), b"cli password", params(3, 5), None).await.unwrap();
    b.goto(&format!("{base}/#/file/{cli}")).await.unwrap();
    let saved = save_in_page(&b, &downloads, "cli password", "cli-file.txt").await;
    assert!(saved == cli_data, "page download over HTTPS differs");

    // Everything the page fetched, it fetched over TLS.
    let script = "return performance.getEntriesByType('resource').map((e) => e.name)";
    let fetched: Vec<String> = serde_json::from_value(js(&b, script).await).unwrap();
    assert!(fetched.iter().any(|u| u.contains("/v2/")), "the page's requests are not recorded: {fetched:?}");
    let plain: Vec<_> = fetched.iter().filter(|u| !u.starts_with("https://")).collect();
    assert!(plain.is_empty(), "the page fetched without TLS: {plain:?}");
    assert_clean(&b, "over HTTPS").await;
    b.close().await.unwrap();
    c.net.shutdown().await;
}

/// Crafted links cannot run script in the page: a file id (or peer id, or page name) from
/// the URL is checked before it is used, and nothing from it is ever parsed as HTML. And on
/// a coordinator that admits invited accounts only, the page shows the id the operator needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_links_and_invited_accounts() {
    let mut config = fast_config();
    config.security.accounts = AccountAdmission::Invite;
    let c = Cluster::start_with(3, config).await;
    let downloads = c.path("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let Some((_driver, b)) = browser(&downloads, &c.path("profile"), &[]).await else { return };
    let base = c.net.url();
    b.goto(&format!("{base}/#/")).await.unwrap();
    watch_csp(&b).await;
    let account = page_account(&b).await;

    // A valid-looking id with a payload after it reached the old page's inline handler.
    let id = "ab".repeat(32);
    let payloads = [
        "x');window.__xss=1;//".to_owned(),
        format!("{id}?');window.__xss=1;//"),
        format!("{id}');window.__xss=1;('"),
        format!("{id}?x=\"><img src=x onerror=window.__xss=1>"),
        "\"><img src=x onerror=\"window.__xss=1\">".to_owned(),
        "<svg onload=window.__xss=1>".to_owned(),
        format!("{id}/manifest"),
        "AB".repeat(31),
    ];
    for p in &payloads {
        b.goto(&format!("{base}/#/")).await.unwrap();
        until("the dashboard", 30, || async { b.find_all(Locator::Css("#badid")).await.unwrap().is_empty() }).await;
        b.goto(&format!("{base}/#/file/{p}")).await.unwrap();
        shows(&b, "#badid", "Not a file id").await;
        assert!(b.find_all(Locator::Css("#dl, #pw")).await.unwrap().is_empty(), "{p}: a download offered for a non-id");
        // Whatever is typed and submitted on the page starts no download.
        let submitted = "document.querySelectorAll('form').forEach((f) => f.requestSubmit()); return true;";
        js(&b, submitted).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_clean(&b, p).await;
        assert!(!text(&b, "#task").await.contains("download"), "{p}: a download started");
    }
    for (link, error) in [
        ("#/peer/\"><img src=x onerror=window.__xss=1>", "Not a peer id"),
        ("#/<img src=x onerror=window.__xss=1>", "No page"),
        ("#/file/%E0%A4%A", "Not a file id"),
    ] {
        b.goto(&format!("{base}/{link}")).await.unwrap();
        shows(&b, "main .error", error).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_clean(&b, link).await;
    }

    // Not admitted: the page says so, with its account id; the operator adds it; the page
    // then shows the account's (empty) files and quota.
    b.goto(&format!("{base}/#/files")).await.unwrap();
    shows(&b, "main .error", "not admitted").await;
    shows(&b, "main .error", &account).await;
    assert_eq!(text(&b, "#account-id").await, account);
    let dir = c.net.dir.join("coordinator");
    let add = AdminAction::AddAccount { account: account.clone(), quota: Some(5_000_000) };
    let signed = p2pstore::coordinator::admin_request(&dir, add, &c.net.clock).unwrap();
    let r = p2pstore::net::client::Client::default().post_json(&format!("{base}/v2/admin"), &signed).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    shows(&b, "main h1", "Files").await;
    shows(&b, ".tiles", "5.0 MB quota").await;
    assert_eq!(text(&b, ".tile #account-id").await, account);
    shows(&b, "main table", "No files yet.").await;
    assert_clean(&b, "files, admitted").await;
    b.close().await.unwrap();
    c.net.shutdown().await;
}

/// Every answer of the coordinator, the page's and the API's, error or not, carries the
/// headers that keep the page to its own origin; the page itself has nothing inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    use http_body_util::{BodyExt, Empty};
    let c = Cluster::start(1).await;
    let base = c.net.url();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let csp = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";
    for (path, status) in
        [("/", 200), ("/app.js", 200), ("/account.js", 200), ("/v2/stats", 200), ("/nope.js", 404), ("/v2/files", 401)]
    {
        let r = http.get(format!("{base}{path}").parse().unwrap()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let h = r.headers();
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert_eq!(header("content-security-policy"), csp, "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        if path == "/" {
            let page = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            let lower = page.to_ascii_lowercase();
            assert!(!lower.contains("<style") && !lower.contains(" style="), "inline style in the page");
            assert!(lower.matches("<script").count() == lower.matches("<script src=").count(), "inline script");
            assert!(!lower.split_whitespace().any(|w| w.starts_with("on") && w.contains('=')), "an inline handler");
        }
    }
    c.net.shutdown().await;
}
