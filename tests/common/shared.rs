//! The Redis a test runs against, chosen by `STREAMHUB_TEST_TOPOLOGY`:
//!
//! * `standalone` (the default): a private redis-server per test, as `RedisServer`;
//! * `cluster`: one Redis Cluster (3 primaries, 1 replica each) shared by the tests of
//!   the test binary;
//! * `sentinel`: one Sentinel set (1 primary, 2 replicas, 3 sentinels) shared likewise.
//!
//! Tests on a shared topology stay apart by their unique key prefixes. Two things are
//! shared all the same, and handled here:
//! * the function library, whose text carries some settings (retention, limits, the
//!   idempotency window): tests whose library differs never overlap — a test waits
//!   until the tests with another library have stopped (`LibraryGuard`);
//! * the servers: a test that kills, restarts or inspects a whole server cannot run on
//!   a shared topology and skips itself with `skip_unless_standalone`, saying why.
//!
//! The shared topology's processes are killed when the test binary exits (atexit).

use std::process::{Command, Output};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::topology::{RedisCluster, SentinelSet};
use super::RedisServer;

/// Which Redis topology the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    Cluster,
    Sentinel,
}

/// The topology named by `STREAMHUB_TEST_TOPOLOGY` (standalone when unset).
pub fn topology() -> Topology {
    match std::env::var("STREAMHUB_TEST_TOPOLOGY").as_deref() {
        Err(_) | Ok("") | Ok("standalone") => Topology::Standalone,
        Ok("cluster") => Topology::Cluster,
        Ok("sentinel") => Topology::Sentinel,
        Ok(other) => panic!("STREAMHUB_TEST_TOPOLOGY={other}: expected standalone, cluster or sentinel"),
    }
}

/// True (after printing why) when the suite runs on a shared topology and this test
/// needs a standalone server of its own; the test then returns at once.
pub fn skip_unless_standalone(reason: &str) -> bool {
    let topology = topology();
    if topology == Topology::Standalone {
        return false;
    }
    println!("skipped on {topology:?}: {reason}");
    true
}

/// The Redis of one test.
pub enum TestRedis {
    Standalone(RedisServer),
    Cluster(&'static RedisCluster),
    Sentinel(&'static SentinelSet),
}

impl TestRedis {
    /// A private server (standalone), or the binary's shared Cluster or Sentinel set.
    pub fn start() -> TestRedis {
        match topology() {
            Topology::Standalone => TestRedis::Standalone(RedisServer::start()),
            Topology::Cluster => TestRedis::Cluster(shared_cluster()),
            Topology::Sentinel => TestRedis::Sentinel(shared_sentinel()),
        }
    }

    /// streamhub's `redis.url` for it.
    pub fn url(&self) -> String {
        match self {
            TestRedis::Standalone(server) => server.url(),
            TestRedis::Cluster(cluster) => cluster.url(),
            TestRedis::Sentinel(set) => set.url(),
        }
    }

    /// True on a Cluster or Sentinel set shared with other tests.
    pub fn is_shared(&self) -> bool {
        !matches!(self, TestRedis::Standalone(_))
    }

    /// `redis-cli <args>` against the server holding the keys: on a Cluster, any live
    /// node with `-c` (redirections followed, so a command with keys reaches their
    /// slot's primary); on Sentinel, the current primary.
    pub fn cli(&self, args: &[&str]) -> Output {
        match self {
            TestRedis::Standalone(server) => server.cli(args),
            TestRedis::Cluster(cluster) => {
                let node = &cluster.nodes[cluster.live()[0]];
                Command::new("redis-cli")
                    .args(["-c", "-p", &node.port.to_string()])
                    .args(args)
                    .output()
                    .expect("redis-cli must be installed")
            }
            TestRedis::Sentinel(set) => set.servers[set.primary()].cli(args),
        }
    }

    /// The port of the server `cli` talks to first.
    pub fn port(&self) -> u16 {
        match self {
            TestRedis::Standalone(server) => server.port,
            TestRedis::Cluster(cluster) => cluster.nodes[cluster.live()[0]].port,
            TestRedis::Sentinel(set) => set.servers[set.primary()].port,
        }
    }

    /// `-c` when `cli`'s redis-cli must follow cluster redirections (for tests that run
    /// redis-cli themselves).
    pub fn cli_flags(&self) -> Vec<String> {
        let mut flags = vec!["-p".to_string(), self.port().to_string()];
        if matches!(self, TestRedis::Cluster(_)) {
            flags.insert(0, "-c".to_string());
        }
        flags
    }

    /// The private server; panics on a shared topology (the test should have called
    /// `skip_unless_standalone`).
    pub fn server(&mut self) -> &mut RedisServer {
        match self {
            TestRedis::Standalone(server) => server,
            _ => panic!("this test needs a standalone server: call skip_unless_standalone first"),
        }
    }
}

/// Something streamhub can be pointed at.
pub trait RedisTarget {
    fn redis_url(&self) -> String;
    /// Whether other tests use the same Redis at the same time.
    fn shared(&self) -> bool {
        false
    }
}

impl RedisTarget for RedisServer {
    fn redis_url(&self) -> String {
        self.url()
    }
}

impl RedisTarget for TestRedis {
    fn redis_url(&self) -> String {
        self.url()
    }
    fn shared(&self) -> bool {
        self.is_shared()
    }
}

impl RedisTarget for RedisCluster {
    fn redis_url(&self) -> String {
        self.url()
    }
}

impl RedisTarget for SentinelSet {
    fn redis_url(&self) -> String {
        self.url()
    }
}

fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = RedisCluster::start();
        for node in &cluster.nodes {
            kill_at_exit(node.pid());
        }
        cluster
    })
}

fn shared_sentinel() -> &'static SentinelSet {
    static SET: OnceLock<SentinelSet> = OnceLock::new();
    SET.get_or_init(|| {
        let set = SentinelSet::start();
        for pid in set.servers.iter().map(RedisServer::pid).chain(set.sentinels.iter().map(|s| s.pid())) {
            kill_at_exit(pid);
        }
        set
    })
}

/// Processes killed when the test binary exits (statics are never dropped).
static AT_EXIT: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn kill_at_exit(pid: Option<u32>) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        extern "C" fn kill_shared() {
            if let Ok(pids) = AT_EXIT.lock() {
                for &pid in pids.iter() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        // SAFETY: registers a plain function without captures, run once at exit.
        unsafe { libc::atexit(kill_shared) };
    });
    if let Some(pid) = pid {
        AT_EXIT.lock().expect("pids").push(pid as i32);
    }
}

/// Held by a test app on a shared topology: apps whose function library differs (it
/// carries settings) never run at the same time.
pub struct LibraryGuard {
    library: String,
}

struct Libraries {
    current: Option<String>,
    holders: usize,
}

static LIBRARIES: Mutex<Libraries> = Mutex::new(Libraries { current: None, holders: 0 });
static LIBRARY_CHANGED: Condvar = Condvar::new();

thread_local! {
    /// Libraries held by this thread's apps (one test = one thread).
    static HELD: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl LibraryGuard {
    /// Waits until no app with another library runs, then holds `library`.
    pub fn acquire(library: String) -> LibraryGuard {
        HELD.with(|held| {
            assert!(
                held.borrow().iter().all(|l| *l == library),
                "one test starts apps whose function libraries differ (retention, limits or the idempotency window): \
                 on a shared topology this test must skip itself (skip_unless_standalone)"
            );
        });
        let mut state = LIBRARIES.lock().expect("libraries");
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while state.holders > 0 && state.current.as_deref() != Some(library.as_str()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "waited 300 s for tests with another function library to stop");
            state = LIBRARY_CHANGED.wait_timeout(state, left).expect("libraries").0;
        }
        state.current = Some(library.clone());
        state.holders += 1;
        HELD.with(|held| held.borrow_mut().push(library.clone()));
        LibraryGuard { library }
    }
}

impl Drop for LibraryGuard {
    fn drop(&mut self) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(i) = held.iter().position(|l| *l == self.library) {
                held.remove(i);
            }
        });
        let mut state = LIBRARIES.lock().expect("libraries");
        state.holders -= 1;
        if state.holders == 0 {
            state.current = None;
        }
        LIBRARY_CHANGED.notify_all();
    }
}
