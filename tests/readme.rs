//! The README cannot go stale: its Quick start starts a real node exactly as a new user
//! would (`scripts/dev.sh`, here running the binary under test), and every command of its
//! `sh` blocks is run, in order, in one shell, against that node, with the output it
//! shows compared to what the command printed.
//!
//! In a block, a line starting with `$ ` is a command (continued by lines ending in `\`),
//! and the lines after it, up to the next command, are its output. A block without `$ `
//! lines is a list of commands without shown output. An output line that is JSON must
//! have the same shape as what the command printed: the same keys, the same values, except
//! for the values that differ on every run (epochs, ids, times, tokens), which must only
//! have the same type. Other lines must match exactly. The commands run in a fresh
//! directory with the node's addresses in place of 127.0.0.1:8080 and 127.0.0.1:9090.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, READY_TIMEOUT};
use serde_json::Value;

/// The README is a first screen and a tour, not the reference (docs/ holds that).
const README_MAX_LINES: usize = 250;
/// The commands of the Quick start, in order: the first starts the node, the second is
/// the test command (the one running this test, so it is not run again here).
const QUICK_START: [&str; 2] = ["scripts/dev.sh", "scripts/test.sh"];
/// Longest run of all the tour's commands together.
const TOUR_TIMEOUT: Duration = Duration::from_secs(120);
/// Keys whose values change from run to run: only their type is compared.
const VOLATILE: &[&str] = &["epoch", "id", "message_id", "ts", "created_ms", "dead_ms", "due_ms", "token"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One command and the output the README shows for it (None: no output shown).
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    output: Option<Vec<String>>,
}

/// The `sh` blocks of the README, each as its examples.
fn blocks(readme: &str) -> Vec<Vec<Example>> {
    let mut out = Vec::new();
    let mut lines = readme.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let mut body = Vec::new();
        for (n, line) in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            body.push((n + 1, line.to_string()));
        }
        out.push(examples(&body));
    }
    out
}

fn examples(body: &[(usize, String)]) -> Vec<Example> {
    let prompted = body.iter().any(|(_, l)| l.starts_with("$ "));
    let mut out: Vec<Example> = Vec::new();
    let mut continuing = false;
    for (n, line) in body {
        if continuing {
            let last = out.last_mut().expect("a command");
            last.command.push('\n');
            last.command.push_str(line);
            continuing = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ").or((!prompted).then_some(line.as_str())) {
            let command = command.split(" #").next().unwrap_or(command).trim_end().to_string();
            if command.is_empty() || command.starts_with('#') {
                continue;
            }
            continuing = command.ends_with('\\');
            out.push(Example { line: *n, command, output: prompted.then(Vec::new) });
        } else if !line.trim().is_empty() {
            let last = out.last_mut().expect("output follows a command");
            last.output.get_or_insert_with(Vec::new).push(line.to_string());
        }
    }
    for e in &mut out {
        if e.output.as_ref().is_some_and(Vec::is_empty) {
            e.output = None;
        }
    }
    out
}

/// Same keys and values, volatile values compared by type only.
fn same_shape(expected: &Value, actual: &Value, key: Option<&str>) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let (ek, ak): (Vec<_>, Vec<_>) = (e.keys().collect(), a.keys().collect());
            if ek != ak {
                return Err(format!("keys {ek:?} != {ak:?}"));
            }
            e.iter().try_for_each(|(k, v)| same_shape(v, &a[k], Some(k)).map_err(|m| format!("{k}: {m}")))
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).try_for_each(|(e, a)| same_shape(e, a, key))
        }
        (e, a) if key.is_some_and(|k| VOLATILE.contains(&k)) => {
            let kind = |v: &Value| std::mem::discriminant(v);
            (kind(e) == kind(a)).then_some(()).ok_or_else(|| format!("{e} and {a} differ in type"))
        }
        (e, a) => (e == a).then_some(()).ok_or_else(|| format!("{e} != {a}")),
    }
}

fn compare(example: &Example, printed: &str) -> Result<(), String> {
    let Some(expected) = &example.output else { return Ok(()) };
    let actual: Vec<&str> = printed.lines().filter(|l| !l.trim().is_empty()).collect();
    if actual.len() != expected.len() {
        return Err(format!("{} lines shown, {} printed", expected.len(), actual.len()));
    }
    for (e, a) in expected.iter().zip(&actual) {
        match (serde_json::from_str::<Value>(e), serde_json::from_str::<Value>(a)) {
            (Ok(e), Ok(a)) if e.is_object() || e.is_array() => same_shape(&e, &a, None)?,
            _ if e.trim_end() == a.trim_end() => {}
            _ => return Err(format!("shown {e:?}, printed {a:?}")),
        }
    }
    Ok(())
}

struct Node {
    child: Child,
    banner: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM first: dev stops its redis-server itself.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `scripts/dev.sh` with the binary under test, on free ports, data under `dir`; returns
/// once its banner is printed (the readiness signal).
fn start_dev(dir: &Path, api: u16, metrics: u16) -> Node {
    let mut child = Command::new(repo().join(QUICK_START[0]))
        .args(["--listen", &format!("127.0.0.1:{api}"), "--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .arg("--data-dir")
        .arg(dir.join("data/dev"))
        .env("STREAMHUB_BIN", env!("CARGO_BIN_EXE_streamhub"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("scripts/dev.sh starts");
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
    let banner = rx.recv_timeout(READY_TIMEOUT).expect("streamhub dev printed its banner");
    Node { child, banner }
}

#[test]
fn the_readme_is_short_and_its_quick_start_comes_first() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; keep it under {README_MAX_LINES} (facts go to docs/)"
    );
    let first = blocks(&readme).into_iter().next().expect("a first sh block");
    let commands: Vec<_> = first.iter().map(|e| e.command.as_str()).collect();
    assert_eq!(commands, QUICK_START, "the Quick start is the run command and the test command");
    let before: String = readme.lines().take_while(|l| l.trim() != "```sh").collect::<Vec<_>>().join("\n");
    assert!(before.lines().count() <= 20, "the Quick start is on the first screen");
}

#[test]
fn every_command_of_the_readme_runs_and_prints_what_it_shows() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut blocks = blocks(&readme).into_iter();
    blocks.next(); // the Quick start: dev.sh is started below, test.sh is running this
    let tour: Vec<Example> = blocks.flatten().collect();
    assert!(tour.len() >= 10, "the tour has its examples: {tour:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let (api, metrics) = (free_port(), free_port());
    let node = start_dev(dir.path(), api, metrics);
    assert!(node.banner.contains(&format!("http://127.0.0.1:{api}/console/#key=")), "{}", node.banner);
    assert!(node.banner.contains("Admin key"), "{}", node.banner);

    let err = dir.path().join("stderr");
    std::fs::create_dir_all(&err).expect("dir");
    let mut script = String::from("cd \"$1\" || exit 99\n");
    for (i, e) in tour.iter().enumerate() {
        let command = e
            .command
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{api}"))
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{metrics}"));
        script.push_str(&format!("{{\n{command}\n}} 2>\"$2/{i}\"\nprintf '\\n@@end {i} %d@@\\n' $?\n"));
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_streamhub")).parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut shell = Command::new("bash")
        .args(["-c", &script, "readme", dir.path().to_str().expect("utf8"), err.to_str().expect("utf8")])
        .env("PATH", path)
        // The CLI's own defaults (tail's and stats' URLs) point at this node.
        .env("STREAMHUB__SERVER__LISTEN", format!("127.0.0.1:{api}"))
        .env("STREAMHUB__SERVER__METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        .env_remove("STREAMHUB_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash");
    let stdout = shell.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).expect("read the tour's output"));
    let deadline = Instant::now() + TOUR_TIMEOUT;
    while shell.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = shell.kill();
            panic!("the README's commands did not finish within {TOUR_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = reader.join().expect("reader");

    let mut rest = output.as_str();
    let mut failures = Vec::new();
    for (i, e) in tour.iter().enumerate() {
        let marker = format!("@@end {i} ");
        let Some(at) = rest.find(&marker) else {
            failures.push(format!("README.md:{}: `{}` did not finish", e.line, e.command));
            break;
        };
        let printed = rest[..at].strip_suffix('\n').unwrap_or(&rest[..at]).to_string();
        let after = &rest[at + marker.len()..];
        let status: i32 = after.split("@@").next().and_then(|s| s.parse().ok()).unwrap_or(-1);
        rest = after.split_once("@@\n").map_or("", |(_, r)| r);
        let stderr = std::fs::read_to_string(err.join(i.to_string())).unwrap_or_default();
        println!("README.md:{} $ {}\n{printed}", e.line, e.command);
        if status != 0 {
            failures.push(format!("README.md:{}: `{}` exited {status}: {stderr}{printed}", e.line, e.command));
        } else if let Err(why) = compare(e, &printed) {
            failures.push(format!("README.md:{}: `{}`: {why}\nprinted:\n{printed}", e.line, e.command));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    drop(node);
}

#[test]
fn output_lines_compare_by_shape_with_volatile_values_by_type() {
    let e =
        Example { line: 1, command: "x".into(), output: Some(vec![r#"{"epoch":"aa","seq":1}"#.into(), "2".into()]) };
    assert!(compare(&e, "{\"epoch\":\"bb\",\"seq\":1}\n2\n").is_ok());
    assert!(compare(&e, "{\"epoch\":\"bb\",\"seq\":2}\n2\n").is_err(), "a seq is not volatile");
    assert!(compare(&e, "{\"epoch\":7,\"seq\":1}\n2\n").is_err(), "a volatile value keeps its type");
    assert!(compare(&e, "{\"epoch\":\"bb\",\"seq\":1,\"x\":0}\n2\n").is_err(), "no extra keys");
    assert!(compare(&e, "{\"epoch\":\"bb\",\"seq\":1}\n3\n").is_err());
    assert!(compare(&e, "{\"epoch\":\"bb\",\"seq\":1}\n").is_err(), "no missing lines");
    let parsed = examples(&[
        (1, "$ a \\".into()),
        (2, "  b".into()),
        (3, "out".into()),
        (4, "".into()),
        (5, "$ c  # note".into()),
    ]);
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].command, "a \\\n  b");
    assert_eq!(parsed[0].output.as_deref(), Some(&["out".to_string()][..]));
    assert_eq!(parsed[1].command, "c");
    assert!(parsed[1].output.is_none());
}
