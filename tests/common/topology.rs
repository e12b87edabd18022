//! Redis Cluster and Sentinel sets started by the tests on loopback from `redis-server`
//! and `redis-cli` (no containers), with the faults the failover tests inject: kill -9 a
//! primary, SIGSTOP/SIGCONT a node, find which primary owns a topic's slot, and wait
//! (polling readiness, never sleeping) until the topology agreed on a new primary.
//!
//! Every node is started at once and waited for together; node timeouts are short so a
//! failover takes about a second or two.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, redis_answers, wait_until, RedisServer, READY_TIMEOUT};

/// How long a topology may take to agree on a new primary after a fault.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The hash slot (0..16384) of a topic: every key of a topic carries the hash tag
/// `{topic}` (src/keys.rs), so the slot is the CRC16 of the topic name.
pub fn topic_slot(topic: &str) -> u16 {
    fred::util::redis_keyslot(format!("{{{topic}}}").as_bytes())
}

/// Options of a test Cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    /// `cluster-node-timeout`: how long a node may not answer before it is suspected
    /// failing; a replica is promoted shortly after (about 2× this).
    pub node_timeout_ms: u64,
}

impl Default for ClusterOptions {
    /// For a cluster shared by a test binary: long enough that a node busy with a long
    /// script on a loaded machine is not failed over (failover tests pass their own).
    fn default() -> Self {
        ClusterOptions { node_timeout_ms: 5000 }
    }
}

impl ClusterOptions {
    /// For failover tests: a dead primary is replaced within about two seconds.
    pub fn fast_failover() -> Self {
        ClusterOptions { node_timeout_ms: 1000 }
    }
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// `fail` or `fail?` in its flags.
    pub failing: bool,
    /// The primary's id, for a replica.
    pub primary_id: Option<String>,
    /// Slot ranges served (inclusive), for a primary.
    pub slots: Vec<(u16, u16)>,
}

/// A Redis Cluster of 3 primaries with 1 replica each, on loopback.
pub struct RedisCluster {
    /// The six nodes; which are primaries changes with failovers (see `primaries`).
    pub nodes: Vec<RedisServer>,
    /// Nodes stopped with SIGSTOP (never asked anything: they would not answer).
    paused: Mutex<BTreeSet<usize>>,
    pub options: ClusterOptions,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with(ClusterOptions::default())
    }

    /// Starts six nodes at once, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and returns once every node reports `cluster_state:ok`,
    /// all agree on who serves which slots, and every replica's link is up.
    ///
    /// `cluster-require-full-coverage no`: the healthy shards keep serving while one
    /// shard has no primary (see docs/SCALING.md); `cluster-replica-validity-factor 0`:
    /// a replica may always be promoted, however long its link has been down (the
    /// lagging-replica tests need that promotion).
    pub fn start_with(options: ClusterOptions) -> RedisCluster {
        let timeout = options.node_timeout_ms.to_string();
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
            "--cluster-require-full-coverage",
            "no",
            "--cluster-replica-validity-factor",
            "0",
        ];
        // The cluster bus listens on its own free port (by default it is the port +
        // 10000, which may be taken or above 65535 for an ephemeral port).
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let bus = free_port().to_string();
                let mut node_args = args.to_vec();
                node_args.extend(["--cluster-port", &bus]);
                RedisServer::launch_with_args(&node_args)
            })
            .collect();
        RedisServer::wait_answering(&nodes.iter().collect::<Vec<_>>());
        let cluster = RedisCluster { nodes, paused: Mutex::new(BTreeSet::new()), options };
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy();
        cluster
    }

    /// The streamhub URL of this cluster (every node listed as a seed).
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port));
        let first = nodes.next().expect("nodes");
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    fn is_paused(&self, index: usize) -> bool {
        self.paused.lock().expect("paused").contains(&index)
    }

    /// Indexes of the nodes that run and are not paused (those that can be asked).
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running() && !self.is_paused(i)).collect()
    }

    /// `CLUSTER NODES` as seen by node `via`, parsed.
    pub fn view(&self, via: usize) -> Vec<ClusterNode> {
        let output = self.nodes[via].cli(&["CLUSTER", "NODES"]);
        parse_cluster_nodes(&String::from_utf8_lossy(&output.stdout))
    }

    /// The index of the node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port == port).unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Indexes of the nodes serving slots, as the first live node sees them.
    pub fn primaries(&self) -> Vec<usize> {
        let via = self.live()[0];
        let mut out: Vec<usize> = self
            .view(via)
            .into_iter()
            .filter(|n| n.primary && !n.slots.is_empty() && !n.failing)
            .map(|n| self.index_of_port(n.port))
            .collect();
        out.sort();
        out
    }

    /// The index of the node that serves `slot` (as the first live node sees it).
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let via = self.live()[0];
        self.view(via)
            .into_iter()
            .find(|n| n.primary && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|n| self.index_of_port(n.port))
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// The index of the primary that serves `topic`'s keys.
    pub fn primary_for_topic(&self, topic: &str) -> usize {
        self.owner_of_slot(topic_slot(topic))
    }

    /// The index of the replica of the primary `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let via = self.live()[0];
        let view = self.view(via);
        let id = &view.iter().find(|n| n.port == self.nodes[primary].port).expect("primary in view").id;
        let replica = view.iter().find(|n| n.primary_id.as_deref() == Some(id)).expect("a replica of the primary");
        self.index_of_port(replica.port)
    }

    /// `per_shard` topic names for each primary (names `<stem>-<n>`), so a test's topics
    /// spread over every shard; returned shard by shard, in the order of `primaries`.
    pub fn topics_on_every_shard(&self, stem: &str, per_shard: usize) -> Vec<Vec<String>> {
        let primaries = self.primaries();
        let mut by_shard: BTreeMap<usize, Vec<String>> = primaries.iter().map(|&p| (p, Vec::new())).collect();
        let mut n = 0;
        while by_shard.values().any(|v| v.len() < per_shard) {
            let topic = format!("{stem}-{n}");
            n += 1;
            let owner = self.primary_for_topic(&topic);
            let topics = by_shard.get_mut(&owner).expect("owner is a primary");
            if topics.len() < per_shard {
                topics.push(topic);
            }
            assert!(n < 100_000, "could not spread topics over the shards");
        }
        primaries.iter().map(|p| by_shard.remove(p).expect("shard")).collect()
    }

    /// kill -9 of node `index` (no persistence: its data is gone).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
        self.paused.lock().expect("paused").remove(&index);
    }

    /// SIGSTOP: the node keeps its sockets but answers nothing.
    pub fn pause(&self, index: usize) {
        self.nodes[index].pause();
        self.paused.lock().expect("paused").insert(index);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self, index: usize) {
        self.nodes[index].resume();
        self.paused.lock().expect("paused").remove(&index);
    }

    /// Starts a killed node again on its port with its `nodes.conf`: it rejoins (as a
    /// replica when its slots were taken over meanwhile), empty.
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].restart();
    }

    /// Waits until node `old` no longer serves `slot` and every live node agrees on the
    /// slot map with `cluster_state:ok`; returns the new owner of `slot`.
    pub fn wait_failover(&self, slot: u16, old: usize) -> usize {
        let old_port = self.nodes[old].port;
        wait_until("the cluster to promote a new primary", FAILOVER_TIMEOUT, || {
            self.agreed_slot_map()
                .is_some_and(|map| map.iter().any(|&(a, b, port)| (a..=b).contains(&slot) && port != old_port))
        });
        self.owner_of_slot(slot)
    }

    /// Waits until every live node reports `cluster_state:ok`, they all agree on the
    /// slot map (covering every slot), and every replica's link to its primary is up.
    pub fn wait_healthy(&self) {
        wait_until("the cluster to be healthy and agreed", READY_TIMEOUT, || {
            self.agreed_slot_map()
                .is_some_and(|map| map.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum::<u32>() == 16384)
                && self.live().iter().all(|&i| {
                    let info = self.nodes[i].info("replication");
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
        });
    }

    /// The slot map (ranges with their primary's port) when every live node reports
    /// `cluster_state:ok` and the same map, with no live node flagged failing.
    fn agreed_slot_map(&self) -> Option<Vec<(u16, u16, u16)>> {
        let live = self.live();
        let live_ports: BTreeSet<u16> = live.iter().map(|&i| self.nodes[i].port).collect();
        let mut agreed: Option<Vec<(u16, u16, u16)>> = None;
        for &i in &live {
            let info = String::from_utf8_lossy(&self.nodes[i].cli(&["CLUSTER", "INFO"]).stdout).to_string();
            if !info.contains("cluster_state:ok") {
                return None;
            }
            let view = self.view(i);
            if view.len() != self.nodes.len() || view.iter().any(|n| n.failing && live_ports.contains(&n.port)) {
                return None;
            }
            let mut map: Vec<(u16, u16, u16)> = view
                .iter()
                .filter(|n| n.primary && !n.failing)
                .flat_map(|n| n.slots.iter().map(move |&(a, b)| (a, b, n.port)))
                .collect();
            map.sort();
            match &agreed {
                None => agreed = Some(map),
                Some(first) if *first == map => {}
                Some(_) => return None,
            }
        }
        agreed
    }
}

/// Parses `CLUSTER NODES` output (one node per line: id, address, flags, primary id,
/// ping, pong, epoch, link state, slots…; `[slot->-id]` migration markers are skipped).
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(ClusterNode {
                id: fields[0].to_string(),
                port,
                primary: flags.contains("master"),
                failing: flags.split(',').any(|f| f == "fail" || f == "fail?"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// The name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// Options of a test Sentinel set.
#[derive(Debug, Clone, Copy)]
pub struct SentinelOptions {
    /// `down-after-milliseconds`: how long the primary may not answer before a sentinel
    /// considers it down.
    pub down_after_ms: u64,
    /// `failover-timeout`.
    pub failover_timeout_ms: u64,
}

impl Default for SentinelOptions {
    /// For a set shared by a test binary: a primary busy with a long script on a loaded
    /// machine is not failed over (failover tests use `fast_failover`).
    fn default() -> Self {
        SentinelOptions { down_after_ms: 5000, failover_timeout_ms: 10000 }
    }
}

impl SentinelOptions {
    /// For failover tests: a dead primary is replaced within a few seconds.
    pub fn fast_failover() -> Self {
        SentinelOptions { down_after_ms: 1000, failover_timeout_ms: 3000 }
    }
}

/// One `redis-server --sentinel` process.
pub struct Sentinel {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn launch(primary_port: u16, options: SentinelOptions) -> Sentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} {down}\n\
             sentinel failover-timeout {SENTINEL_SERVICE} {failover}\nsentinel parallel-syncs {SENTINEL_SERVICE} 2\n",
            dir = dir.path().display(),
            down = options.down_after_ms,
            failover = options.failover_timeout_ms,
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        Sentinel { child: Some(child), port, _dir: dir }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `redis-cli -p <port> <args>` and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output =
            Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// The port of the primary this sentinel names, if it answers.
    pub fn primary_port(&self) -> Option<u16> {
        let text = self.cli(&["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE]);
        text.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Sentinel set: one primary with two replicas, watched by three sentinels (quorum 2).
pub struct SentinelSet {
    /// Data servers; index 0 is the first primary.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
    paused: Mutex<BTreeSet<usize>>,
    pub options: SentinelOptions,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        Self::start_with(SentinelOptions::default())
    }

    /// Starts the primary, its two replicas and three sentinels; returns once the
    /// replicas' links are up and every sentinel knows the primary, both replicas and the
    /// two other sentinels.
    pub fn start_with(options: SentinelOptions) -> SentinelSet {
        let primary = RedisServer::launch_with_args(&[]);
        let primary_port = primary.port.to_string();
        let replicas: Vec<RedisServer> =
            (0..2).map(|_| RedisServer::launch_with_args(&["--replicaof", "127.0.0.1", &primary_port])).collect();
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::launch(primary.port, options)).collect();
        let mut servers = vec![primary];
        servers.extend(replicas);
        let set = SentinelSet { servers, sentinels, paused: Mutex::new(BTreeSet::new()), options };
        RedisServer::wait_answering(&set.servers.iter().collect::<Vec<_>>());
        wait_until("the replicas' links", READY_TIMEOUT, || {
            set.servers[1..].iter().all(|r| r.info("replication").contains("master_link_status:up"))
        });
        set.wait_sentinels_agree(primary_port.parse().expect("port"));
        set
    }

    /// The streamhub URL: every sentinel listed, with the service name.
    pub fn url(&self) -> String {
        let mut nodes = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port));
        let first = nodes.next().expect("sentinels");
        let rest: String = nodes.map(|n| format!("&node={n}")).collect();
        format!("redis-sentinel://{first}?sentinelServiceName={SENTINEL_SERVICE}{rest}")
    }

    /// Waits until every sentinel names `primary_port`, sees two replicas and two other
    /// sentinels, and reports the primary `status=ok`.
    fn wait_sentinels_agree(&self, primary_port: u16) {
        let expected = format!("status=ok,address=127.0.0.1:{primary_port},slaves=2,sentinels=3");
        wait_until("the sentinels to agree", READY_TIMEOUT, || {
            self.sentinels.iter().all(|s| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.port));
                redis_answers(addr) && s.cli(&["INFO", "sentinel"]).contains(&expected)
            })
        });
    }

    /// The index of the server the sentinels currently name as primary.
    pub fn primary(&self) -> usize {
        let port = self.sentinels.iter().find_map(Sentinel::primary_port).expect("a sentinel answers");
        self.servers.iter().position(|s| s.port == port).expect("the primary is one of the servers")
    }

    fn is_paused(&self, index: usize) -> bool {
        self.paused.lock().expect("paused").contains(&index)
    }

    /// kill -9 of server `index`.
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
        self.paused.lock().expect("paused").remove(&index);
    }

    /// SIGSTOP of server `index`.
    pub fn pause(&self, index: usize) {
        self.servers[index].pause();
        self.paused.lock().expect("paused").insert(index);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self, index: usize) {
        self.servers[index].resume();
        self.paused.lock().expect("paused").remove(&index);
    }

    /// Starts a killed server again, empty, on its port; the sentinels turn it into a
    /// replica of the current primary.
    pub fn restart(&mut self, index: usize) {
        self.servers[index].restart();
    }

    /// Waits until every sentinel names a primary other than `old`, that server reports
    /// `role:master`, and returns its index.
    pub fn wait_failover(&self, old: usize) -> usize {
        let old_port = self.servers[old].port;
        let mut new = None;
        wait_until("the sentinels to promote a new primary", FAILOVER_TIMEOUT, || {
            let ports: BTreeSet<Option<u16>> = self.sentinels.iter().map(Sentinel::primary_port).collect();
            let Some(&Some(port)) = ports.iter().next() else { return false };
            if ports.len() != 1 || port == old_port {
                return false;
            }
            let Some(index) = self.servers.iter().position(|s| s.port == port) else { return false };
            if self.is_paused(index) || !self.servers[index].info("replication").contains("role:master") {
                return false;
            }
            new = Some(index);
            true
        });
        new.expect("new primary")
    }
}

/// Time from `since` until `ready` holds, polling every 10 ms (for measured figures
/// printed by the tests; never asserted).
pub fn measure_until(since: Instant, timeout: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let deadline = since + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    since.elapsed()
}
