//! A real browser against a real network: headless Chromium driven through WebDriver
//! (chromedriver, fantoccini). Debian's `chromium` and `chromium-driver` packages are needed;
//! `.ci/run` installs them. Without them the test says so and passes, except under CI=true,
//! where a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;

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

async fn browser(downloads: &Path, profile: &Path) -> Option<(Driver, Browser)> {
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
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,900", format!("--user-data-dir={}", profile.display())],
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

/// Files completely downloaded into `dir` (no partial `.crdownload`).
fn downloaded(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "crdownload"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_in_a_real_browser() {
    let c = Cluster::start_with(5, fast_config()).await;
    let downloads = c.path("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let Some((_driver, b)) = browser(&downloads, &c.path("profile")).await else { return };
    let base = c.net.url();

    // The dashboard shows the network as it is.
    b.goto(&format!("{base}/#/")).await.unwrap();
    let online = async { text(&b, ".tile .v").await };
    assert_eq!(online.await, "5", "peers online on the dashboard");

    // Upload through the page; the CLI's client downloads it byte-identical.
    let page_file = c.write("from-page.bin", &data(2 * 1024 * 1024 + 123, 77));
    b.goto(&format!("{base}/#/upload")).await.unwrap();
    let input = b.wait().for_element(Locator::Css("#file")).await.unwrap();
    input.send_keys(page_file.to_str().unwrap()).await.unwrap();
    fill(&b, "#pw", "page password").await;
    fill(&b, "#pw2", "page password").await;
    fill(&b, "#k", "3").await;
    fill(&b, "#n", "5").await;
    b.find(Locator::Css("#up")).await.unwrap().click().await.unwrap();
    let id = text(&b, "#newfile").await;
    let id = p2pstore::core::manifest::FileId::parse(&id).unwrap();
    let out = c.path("from-page.out");
    c.client.download(&id, b"page password", Some(&out), false, None).await.unwrap();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&page_file).unwrap(),
        "CLI download of a page upload differs"
    );
    let view = c.client.info(&id).await.unwrap();
    assert_eq!((view.summary.k, view.summary.n), (3, 5));

    // A CLI upload: a wrong password in the page saves nothing, the right one the file.
    let cli_data = data(3 * PER_SEGMENT + 5, 78);
    let cli = c.client.upload(&c.write("cli-file.txt", &cli_data), b"cli password", params(3, 5), None).await.unwrap();
    b.goto(&format!("{base}/#/file/{cli}")).await.unwrap();
    fill(&b, "#pw", "not the password").await;
    b.find(Locator::Css("#dl")).await.unwrap().click().await.unwrap();
    until("the page reports the wrong password", 30, || async { text(&b, "#task").await.contains("wrong password") })
        .await;
    assert!(downloaded(&downloads).is_empty(), "a wrong password saved something");
    fill(&b, "#pw", "cli password").await;
    b.find(Locator::Css("#dl")).await.unwrap().click().await.unwrap();
    until("the browser saved the file", 60, || async {
        downloaded(&downloads).iter().any(|p| p.ends_with("cli-file.txt"))
    })
    .await;
    assert!(std::fs::read(downloads.join("cli-file.txt")).unwrap() == cli_data, "page download differs");
    b.close().await.unwrap();
    c.net.shutdown().await;
}
