//! `streamhub dev`: one command, a working local broker — loopback only, its own
//! redis-server on a private port with its data in the dev directory (or a temporary one),
//! a banner with the URLs and an admin key that works, and a quiet stop that takes its
//! redis-server with it. Where redis-server is missing, the message says how to install it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, redis_answers, streamhub_bin, READY_TIMEOUT};

struct Dev {
    child: Child,
    banner: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev(args: &[&str], cwd: &std::path::Path, log: &std::path::Path) -> Dev {
    let mut child = Command::new(streamhub_bin())
        .arg("dev")
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("streamhub dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Stop with Ctrl-C") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    let banner = rx.recv_timeout(READY_TIMEOUT).expect("the banner");
    Dev { child, banner }
}

/// The value after `label` on the banner line that starts with it.
fn field<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no {label} in {banner}"))
}

fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "dev did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn dev_gives_a_working_broker_with_its_own_redis_and_an_admin_key() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let (api, metrics) = (free_port(), free_port());
    let log = cwd.path().join("dev.log");
    let listen = format!("127.0.0.1:{api}");
    let mut node = dev(&["--listen", &listen, "--metrics-listen", &format!("127.0.0.1:{metrics}")], cwd.path(), &log);
    let banner = node.banner.clone();
    assert_eq!(field(&banner, "API"), format!("http://{listen}"));
    assert_eq!(field(&banner, "WebSocket"), format!("ws://{listen}/v1/ws"));
    assert_eq!(field(&banner, "Metrics"), format!("http://127.0.0.1:{metrics}/metrics"));
    let key = field(&banner, "Admin key").to_string();
    assert_eq!(field(&banner, "Console"), format!("http://{listen}/console/#key={key}"));
    assert_eq!(key.len(), 64, "256 random bits");
    let kept = std::fs::read_to_string(cwd.path().join("data/dev/admin-key")).expect("the key file");
    assert_eq!(kept.trim(), key);

    // Its own redis-server: on a private port (not 6379), data in data/dev/redis (AOF).
    let redis_url = field(&banner, "Redis").to_string();
    let redis_addr: std::net::SocketAddr = redis_url.trim_start_matches("redis://").parse().expect("addr");
    assert_ne!(redis_addr.port(), 6379);
    assert!(redis_addr.ip().is_loopback());
    assert!(redis_answers(redis_addr));
    assert_eq!(std::fs::read_to_string(cwd.path().join("data/dev/redis-url")).expect("url file").trim(), redis_url);
    assert!(cwd.path().join("data/dev/redis/appendonlydir").is_dir());

    // Open access on loopback: publish without credentials; the admin key lists topics.
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    let published =
        http.post(format!("{base}/v1/topics/t/messages")).json(&serde_json::json!({ "data": 1 })).send().await;
    assert_eq!(published.expect("publish").status(), 201);
    let anonymous = http.get(format!("{base}/v1/topics")).send().await.expect("list");
    assert_eq!(anonymous.status(), 401, "admin endpoints need the key");
    let listed = http.get(format!("{base}/v1/topics")).bearer_auth(&key).send().await.expect("list");
    assert_eq!(listed.status(), 200);
    let console = http.get(format!("{base}/console/")).send().await.expect("console");
    assert_eq!(console.status(), 200);

    let status = sigterm_and_wait(&mut node.child);
    assert!(status.success(), "{status:?}");
    assert!(!redis_answers(redis_addr), "its redis-server stopped with it");
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "a quiet run and stop: {log}");

    // A second dev on the same directory while the first runs is refused: two
    // redis-servers on one AOF directory would corrupt it.
    let first =
        dev(&["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], cwd.path(), &cwd.path().join("1.log"));
    let out = Command::new(streamhub_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by a running redis-server"), "{stderr}");
    let mut first = first;
    assert!(sigterm_and_wait(&mut first.child).success());

    // A second run keeps the data and the key.
    let again = dev(&["--listen", &listen, "--metrics-listen", "127.0.0.1:0"], cwd.path(), &cwd.path().join("2.log"));
    assert_eq!(field(&again.banner, "Admin key"), key);
    // A new client: the pooled connections went with the first node.
    let info = reqwest::get(format!("{base}/v1/topics/t")).await.expect("info");
    let info: serde_json::Value = info.json().await.expect("json");
    assert_eq!(info["seq"], 1, "the topic survived the restart: {info}");
}

#[tokio::test]
async fn dev_temp_keeps_nothing() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut node = dev(
        &["--temp", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        cwd.path(),
        &cwd.path().join("log"),
    );
    let data = node.banner.lines().find_map(|l| l.split("data in ").nth(1)).expect("data dir").trim_end_matches(')');
    let data = std::path::PathBuf::from(data);
    assert!(data.is_dir(), "{}", data.display());
    assert!(!cwd.path().join("data").exists(), "nothing in the working directory");
    assert!(sigterm_and_wait(&mut node.child).success());
    assert!(!data.parent().expect("dev dir").exists(), "the temporary directory is removed");
}

#[test]
fn dev_refuses_a_listen_address_that_is_not_loopback() {
    for flag in ["--listen", "--metrics-listen"] {
        let out = Command::new(streamhub_bin()).args(["dev", "--temp", flag, "0.0.0.0:0"]).output().expect("run");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("0.0.0.0:0 is not a loopback address"), "{stderr}");
    }
}

#[test]
fn without_redis_server_dev_says_how_to_install_it() {
    let empty = tempfile::tempdir().expect("temp dir");
    let out = Command::new(streamhub_bin())
        .args(["dev", "--temp", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("PATH", empty.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redis-server is not on PATH"), "{stderr}");
    assert!(stderr.contains("sudo apt-get install redis-server"), "{stderr}");
    assert!(stderr.contains("scripts/dev.sh"), "{stderr}");

    // scripts/dev.sh on a PATH with neither redis-server nor apt-get says what to run.
    let bin = tempfile::tempdir().expect("temp dir");
    for tool in ["bash", "dirname", "id", "cat"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} is installed"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).expect("symlink");
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev.sh");
    let out = Command::new(bin.path().join("bash")).arg(script).env("PATH", bin.path()).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redis-server (Redis >= 7.0) is not installed"), "{stderr}");
    assert!(stderr.contains("sudo apt-get install redis-server"), "{stderr}");
}

#[test]
fn a_taken_api_port_is_explained_and_a_taken_metrics_port_is_replaced() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(streamhub_bin())
        .args(["dev", "--temp", "--listen", &addr, "--metrics-listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("--listen 127.0.0.1:<port>"),
        "{stderr}"
    );

    // The default metrics address, taken (by this test, or by a Prometheus already there).
    let _metrics = std::net::TcpListener::bind("127.0.0.1:9090");
    let mut node = dev(&["--temp", "--listen", "127.0.0.1:0"], cwd.path(), &cwd.path().join("log"));
    let line = node.banner.lines().find(|l| l.trim_start().starts_with("Metrics")).expect("metrics line").to_string();
    assert!(line.contains("(9090 is taken; --metrics-listen to choose)"), "{line}");
    assert!(!line.contains("127.0.0.1:9090/"), "{line}");
    assert!(sigterm_and_wait(&mut node.child).success());
}

#[test]
fn a_killed_dev_does_not_leave_its_redis_server_running() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut node = dev(
        &["--temp", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        cwd.path(),
        &cwd.path().join("log"),
    );
    let url = field(&node.banner, "Redis").to_string();
    let addr: std::net::SocketAddr = url.trim_start_matches("redis://").parse().expect("addr");
    assert!(redis_answers(addr));
    node.child.kill().expect("SIGKILL");
    let _ = node.child.wait();
    common::wait_until("the orphaned redis-server to stop", READY_TIMEOUT, || !redis_answers(addr));
}
