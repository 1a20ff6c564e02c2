//! The S3 gateway, end to end: a real network, the real binary as gateway processes, and the
//! real clients (boto3, aws-cli, rclone, restic) running the scripts in tests/s3/. Skipped
//! with a note when a client is missing, unless P2PSTORE_REQUIRE_S3_TOOLS=1 (CI installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pstore::client::Client;

use crate::harness::{Cluster, free_port};

const PASSWORD: &str = "gateway test password";

fn tool_missing() -> Option<String> {
    let probes: [(&str, &[&str]); 5] = [
        ("python3", &["-c", "import boto3"]),
        ("aws", &["--version"]),
        ("rclone", &["version"]),
        ("restic", &["version"]),
        ("curl", &["--version"]),
    ];
    for (bin, args) in probes {
        let ok = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !ok.is_ok_and(|s| s.success()) {
            return Some(format!("{bin} {}", args.join(" ")));
        }
    }
    None
}

/// Whether the test is skipped because a client is missing (with a note; CI requires them).
fn skipped_without_tools() -> bool {
    let Some(missing) = tool_missing() else { return false };
    assert!(std::env::var("P2PSTORE_REQUIRE_S3_TOOLS").is_err(), "an S3 client is missing: {missing}");
    eprintln!("skipped: `{missing}` failed (install boto3, awscli, rclone, restic to run this test)");
    true
}

/// A gateway process of the real binary; killed when dropped.
struct GatewayProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_command(dir: &Path, coordinator: &str, account: &Path, password: &str, port: u16, name: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2pstore"));
    c.current_dir(dir)
        .args(["--coordinator", coordinator, "--account"])
        .arg(account)
        .args(["gateway", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.join(format!("{name}-data")))
        .env_remove("P2PSTORE_CONFIG")
        .env_remove("RUST_LOG")
        .env("P2PSTORE_PASSWORD", password)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

fn start_gateway(
    dir: &Path,
    coordinator: &str,
    account: &Path,
    creds: Option<(&str, &str)>,
    name: &str,
) -> GatewayProcess {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut c = gateway_command(dir, coordinator, account, PASSWORD, port, name);
    if let Some((ak, sk)) = creds {
        c.env("P2PSTORE_GATEWAY_ACCESS_KEY", ak).env("P2PSTORE_GATEWAY_SECRET_KEY", sk);
    }
    let child = c.arg("-v").stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let g = GatewayProcess { child, url: format!("http://127.0.0.1:{port}"), log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start: {}", std::fs::read_to_string(&g.log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    g
}

/// Runs a client script; fails the test with its output, and the warnings and errors of the
/// gateways' logs, unless every check passed.
fn run_script(what: &str, mut c: Command, creds: (&str, &str), gateways: &[&GatewayProcess]) {
    let t0 = Instant::now();
    let out =
        c.env("S3_ACCESS_KEY", creds.0).env("S3_SECRET_KEY", creds.1).env("S3_TREE_FILES", "300").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{what}: {} in {:.0?}", stdout.lines().last().unwrap_or(""), t0.elapsed());
    if out.status.success() && !stdout.contains("FAIL") {
        return;
    }
    let mut logs = String::new();
    for g in gateways {
        let text = std::fs::read_to_string(&g.log).unwrap_or_default();
        let bad: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        logs += &format!(
            "{} (last warnings and errors):\n{}\n",
            g.log.display(),
            bad[bad.len().saturating_sub(40)..].join("\n")
        );
    }
    panic!("{what} failed:\n{stdout}\n{}\n{logs}", String::from_utf8_lossy(&out.stderr));
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3").join(name)
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_tools_store_their_data_in_p2pstore() {
    if skipped_without_tools() {
        return;
    }
    let c = Cluster::start(20).await;
    let url = c.net.url();
    let dir = c.dir.path().to_owned();
    let account = dir.join("account.p8");
    let id = p2pstore::store::identity::create_file(&account).unwrap();
    let client = Client::new(&url, Arc::new(id));

    // The first gateway generates credentials, prints them once and keeps them.
    let one = start_gateway(&dir, &url, &account, None, "gw1");
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gw1-data/credentials.json")).unwrap()).unwrap();
    let (ak, sk) = (creds["access_key"].as_str().unwrap().to_owned(), creds["secret_key"].as_str().unwrap().to_owned());
    let log = std::fs::read_to_string(&one.log).unwrap();
    assert!(log.contains(&sk), "the generated secret is printed at first start: {log}");
    let creds = (ak.as_str(), sk.as_str());
    let hp = one.url.trim_start_matches("http://").to_owned();

    let mut py = Command::new("python3");
    py.arg(script("boto3_test.py")).arg(&one.url).arg(&url);
    run_script("boto3", py, creds, &[&one]);
    // The suite deleted everything it stored: so did the network.
    let left = client.account().await.unwrap();
    assert_eq!((left.files, left.stored), (0, 0), "every object's files were deleted: {left:?}");

    let mut py = Command::new("python3");
    py.arg(script("chunked_test.py")).arg(&hp);
    run_script("raw SigV4 (aws-chunked, trailers)", py, creds, &[&one]);
    let mut sh = Command::new("bash");
    sh.arg(script("clients.sh")).arg(&hp);
    run_script("aws-cli, rclone, restic", sh, creds, &[&one]);

    // A second gateway, same account and password, other credentials and data directory.
    let two = start_gateway(&dir, &url, &account, Some(creds), "gw2");
    let mut py = Command::new("python3");
    py.arg(script("namespace_test.py")).arg(&one.url).arg(&two.url);
    run_script("two gateways, one namespace", py, creds, &[&one, &two]);

    // Another password does not open the namespace: the gateway refuses to start.
    let mut wrong = gateway_command(&dir, &url, &account, "not the password", free_port(), "gw3");
    let out = wrong.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("password does not open"), "{err}");

    // The coordinator's database holds no name in clear: bucket names, object keys,
    // metadata and content types written above.
    tokio::time::sleep(Duration::from_secs(2)).await; // sled flushes every 500 ms
    let mut files = Vec::new();
    files_under(&dir.join("net/coordinator"), &mut files);
    let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(&client.account_id()), "the scan reads the database (it names the account)");
    for name in [
        "clear-name-canary-bucket",
        "holiday-photos",
        "canary-secret-document",
        "canary-metadata-value",
        "application/x-canary-type",
        "written-by-second-gateway",
        "a b+c.txt",
        "big20.bin",
        "nine.bin",
        "file-123.bin",
        "image/x-test",
        "mp/100mib",
        "many/top0",
        "sub dir",
    ] {
        assert!(!has(name), "the coordinator's database holds `{name}` in clear");
    }
    drop((one, two));
    c.net.shutdown().await;
}

/// A network too small for the gateway's coding (8-of-20 on four nodes): a PUT is refused
/// with the network's reason, 503 ServiceUnavailable, however much of its body was read; not
/// with BadDigest, which told the client its bytes were damaged and not to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_short_of_peers_refuses_puts_as_unavailable() {
    if skipped_without_tools() {
        return;
    }
    let c = Cluster::start(4).await;
    let dir = c.dir.path().to_owned();
    let account = dir.join("account.p8");
    p2pstore::store::identity::create_file(&account).unwrap();
    let creds = ("shortaccesskey", "shortsecretkey0123456789");
    let gw = start_gateway(&dir, &c.net.url(), &account, Some(creds), "gw");
    let mut py = Command::new("python3");
    py.arg("-c").arg(
        r#"
import base64, hashlib, os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["S3_SECRET_KEY"], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
s3.create_bucket(Bucket="short")
data = os.urandom(3 << 20)
md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
def code(fn, **kw):
    try:
        fn(**kw)
        return "no error"
    except ClientError as e:
        return e.response["Error"]["Code"]
up = s3.create_multipart_upload(Bucket="short", Key="mp")["UploadId"]
for what, c in [("put", code(s3.put_object, Bucket="short", Key="k", Body=data, ContentMD5=md5)),
                ("part", code(s3.upload_part, Bucket="short", Key="mp", UploadId=up, PartNumber=1, Body=data))]:
    print(("ok  " if c == "ServiceUnavailable" else "FAIL") + f" {what}: {c}")
"#,
    );
    py.arg(&gw.url);
    run_script("puts on a network short of peers", py, creds, &[&gw]);
    drop(gw);
    c.net.shutdown().await;
}
