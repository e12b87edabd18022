//! `streamhub tail`: prints messages, survives a server restart by reconnecting with
//! backoff, and resumes without a gap.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{publish_many, streamhub_bin, RedisServer, TestApp};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reconnects_after_a_restart_and_resumes_without_a_gap() {
    let redis = RedisServer::start();
    let a = TestApp::start(&redis).await;
    let addr = a.server.http_addr();
    publish_many(&a, "follow", 3, 3).await;

    let mut child = Command::new(streamhub_bin())
        .args(["tail", "follow", "--since", "earliest", "--max-messages", "6"])
        .args(["--url", &format!("ws://{addr}/v1/ws")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next = || lines.recv_timeout(common::FRAME_TIMEOUT).expect("a printed message");
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let m: Value = serde_json::from_str(&next()).expect("json line");
        seqs.push(m["seq"].as_u64().expect("seq"));
    }

    // The node goes away; messages are published elsewhere meanwhile.
    let prefix = a.prefix().to_string();
    a.stop().await;
    let other = TestApp::start_with(&redis, |c| c.redis.prefix = prefix.clone()).await;
    publish_many(&other, "follow", 3, 1).await;
    // A node comes back on the same address: tail reconnects and resumes.
    let b = TestApp::start_with(&redis, |c| {
        c.redis.prefix = prefix.clone();
        c.server.listen = addr;
    })
    .await;
    for _ in 0..3 {
        let m: Value = serde_json::from_str(&next()).expect("json line");
        seqs.push(m["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let output = child.wait_with_output().expect("tail exits after --max-messages");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
    b.stop().await;
    other.stop().await;
}
