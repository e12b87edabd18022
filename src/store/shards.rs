//! Redis Cluster without a shared stall: the function calls (publish, reads, group and
//! presence operations — every one touches one slot) go to one connection per primary,
//! routed here by slot, so a primary that dies stalls only the topics of its slots.
//!
//! Why not fred's cluster client for them: fred 10 reconnects a cluster client as a
//! whole. When one node's connection drops, the client's single router task runs its
//! reconnection loop (`router/commands.rs` `process_reconnect` → `router/clustered.rs`
//! `sync`: `CLUSTER SLOTS`, then a connection to every primary listed, `try_join_all`)
//! and writes no command meanwhile. Until a replica is promoted the dead primary is still
//! listed, every attempt fails, and commands to the healthy shards wait behind it (and
//! time out) — measured from outside at 3–6.5 s of 503s on every shard for one primary's
//! crash. Here each primary has its own centralized client (its own router task and
//! reconnection loop); a slot map from `CLUSTER SLOTS` picks the client.
//!
//! The map is refreshed every `REFRESH_INTERVAL`, at once after a `MOVED` and after a
//! call failed for want of a connection. Resharding is followed call by call (`run`):
//! `MOVED`, `ASK` (with `ASKING` pipelined before the call on the importing node's
//! connection) and `TRYAGAIN` are retried, because each of them means the call did not
//! run. Clients of nodes that no longer serve slots are closed.
//!
//! Commands that block (a group worker's `XREADGROUP … BLOCK`) must not hold a primary's
//! shared connection: each such reader has a [`Dedicated`] connection of its own to the
//! primary of its key's slot, picked from the same slot map before every call and opened
//! again elsewhere when the map names another primary (a failover, a `MOVED`). The hint
//! listener (hints.rs) routes its `SSUBSCRIBE`s by the same map (`server_for`,
//! `primaries`, `generation`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;
use fred::types::Value;

use super::{connect, Result, StoreError};
use crate::config::RedisConfig;

/// How often the slot map is read again when nothing asked for it.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time between two reads of the slot map (a burst of errors asks once).
const REFRESH_MIN_GAP: Duration = Duration::from_millis(100);
/// Most redirections and `TRYAGAIN` retries one call follows (within the command timeout).
const MAX_REDIRECTIONS: u32 = 16;
/// First and longest pause before a call refused with `TRYAGAIN` is tried again.
const TRYAGAIN_FIRST_PAUSE: Duration = Duration::from_millis(10);
const TRYAGAIN_MAX_PAUSE: Duration = Duration::from_millis(100);

/// The per-primary connections of a Redis Cluster and the slot map that picks one.
pub(super) struct Shards {
    config: RedisConfig,
    /// fred's cluster client, asked for the slot map when no primary answers.
    seed: Client,
    routing: RwLock<Routing>,
    refresh: tokio::sync::Notify,
    /// Counts the slot maps read; a reader that routes by itself (the hint listener)
    /// looks again when it changed.
    generation: AtomicU64,
}

#[derive(Default)]
struct Routing {
    map: Option<ClusterRouting>,
    clients: HashMap<Server, Client>,
}

/// What a redirection error asks for.
enum Redirect {
    /// The slot moved for good: read the slot map again.
    Moved,
    /// The slot is being migrated to this node: ask it with `ASKING`.
    Ask(Server),
}

impl Shards {
    /// Starts the slot-map refresher (it ends when the last `Arc` is dropped).
    pub(super) fn start(config: &RedisConfig, seed: Client) -> Arc<Shards> {
        let shards = Arc::new(Shards {
            config: config.clone(),
            seed,
            routing: Default::default(),
            refresh: Default::default(),
            generation: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&shards);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(refresher(weak));
        }
        shards
    }

    /// The connection of the primary serving `key`'s slot; None while no slot map is
    /// known (the caller uses fred's cluster client).
    pub(super) fn client_for(&self, key: &str) -> Option<Client> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let routing = self.routing.read().ok()?;
        let server = routing.map.as_ref()?.get_server(slot)?;
        routing.clients.get(server).cloned()
    }

    /// The configuration the per-primary connections are made with.
    pub(super) fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Changes with every slot map read (see `generation`).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The primaries of the current map (none while no map is known).
    pub(super) fn primaries(&self) -> Vec<Server> {
        match self.routing.read() {
            Ok(routing) => routing.map.as_ref().map(|map| map.unique_primary_nodes()).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The primary serving `key`'s slot in the current map; None while no map is known.
    pub(super) fn server_for(&self, key: &str) -> Option<Server> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let routing = self.routing.read().ok()?;
        routing.map.as_ref()?.get_server(slot).cloned()
    }

    /// Asks for a fresh slot map soon (a call failed for want of a connection).
    pub(super) fn suspect(&self) {
        self.refresh.notify_one();
    }

    /// Runs `call` on the primary of `key`'s slot. None when no slot map is known yet.
    ///
    /// Replies that say the command did **not** run are handled here, so they are safe
    /// to retry even for a publish without an idempotency key: `MOVED` (the slot map is
    /// read again and the call goes to the new owner), `ASK` (the call goes to the
    /// importing node with `ASKING` first) and `TRYAGAIN` (the slot is being migrated and
    /// the keys are split between the two nodes: tried again after 10 ms, doubling up to
    /// 100 ms). Within `redis.command_timeout_ms` and `MAX_REDIRECTIONS`; then the last
    /// error is returned (a 503 for the client). A call whose connection failed is never
    /// retried: it may have run.
    pub(super) async fn run<F, Fut>(&self, key: &str, call: F) -> Option<std::result::Result<Value, RedisError>>
    where
        F: Fn(Client, bool) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Value, RedisError>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.command_timeout_ms);
        let mut ask: Option<Server> = None;
        let mut pause = TRYAGAIN_FIRST_PAUSE;
        let mut redirections = 0;
        loop {
            let (client, asking) = match ask.take() {
                Some(server) => (self.client_of(&server)?, true),
                None => (self.client_for(key)?, false),
            };
            let err = match call(client, asking).await {
                Err(err) => err,
                ok => return Some(ok),
            };
            let retry = redirections < MAX_REDIRECTIONS && tokio::time::Instant::now() + pause < deadline;
            match redirect(&err) {
                Some(Redirect::Moved) if retry => {
                    let _ = self.refresh_now().await;
                }
                Some(Redirect::Ask(server)) if retry => ask = Some(server),
                None if retry && err.details().starts_with("TRYAGAIN") => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(TRYAGAIN_MAX_PAUSE);
                }
                _ => {
                    if matches!(StoreError::from(err.clone()), StoreError::Unavailable(_)) {
                        self.suspect();
                    }
                    return Some(Err(err));
                }
            }
            redirections += 1;
        }
    }

    /// The connection of `server` (a primary in the map), opened if needed.
    fn client_of(&self, server: &Server) -> Option<Client> {
        if let Some(client) = self.routing.read().ok()?.clients.get(server) {
            return Some(client.clone());
        }
        let client = connect::node_client(&self.config, server, "shard").ok()?;
        self.routing.write().ok()?.clients.insert(server.clone(), client.clone());
        Some(client)
    }

    /// Reads the slot map (from the first primary that answers, else fred's cluster
    /// client), opens connections to new primaries and closes those of former ones.
    fn refresh_now(&self) -> futures::future::BoxFuture<'_, Result<()>> {
        // Boxed: a rare path whose future (several KiB) would otherwise be part of every
        // routed call's.
        Box::pin(async move {
            let timeout = Duration::from_millis(self.config.command_timeout_ms);
            let candidates: Vec<Client> = {
                let routing = self.routing.read().map_err(|_| StoreError::Redis("slot map lock poisoned".into()))?;
                routing.clients.values().filter(|c| c.is_connected()).cloned().collect()
            };
            let mut slots = None;
            for client in candidates.iter().chain(std::iter::once(&self.seed)) {
                if let Ok(Ok(value)) = tokio::time::timeout(timeout, client.cluster_slots::<Value>()).await {
                    let host = client.active_connections().first().map(|s| s.host.to_string()).unwrap_or_default();
                    if let Ok(map) = ClusterRouting::from_cluster_slots(value, host) {
                        if map.len() > 0 {
                            slots = Some(map);
                            break;
                        }
                    }
                }
            }
            let Some(map) = slots else {
                return Err(StoreError::Unavailable("no cluster node answered CLUSTER SLOTS".into()));
            };
            let primaries = map.unique_primary_nodes();
            let mut opened = HashMap::new();
            {
                let routing = self.routing.read().map_err(|_| StoreError::Redis("slot map lock poisoned".into()))?;
                for server in &primaries {
                    if !routing.clients.contains_key(server) {
                        opened.insert(server.clone(), connect::node_client(&self.config, server, "shard")?);
                    }
                }
            }
            let mut closed = Vec::new();
            {
                let mut routing =
                    self.routing.write().map_err(|_| StoreError::Redis("slot map lock poisoned".into()))?;
                routing.clients.extend(opened);
                let former: Vec<Server> = routing.clients.keys().filter(|s| !primaries.contains(s)).cloned().collect();
                for server in former {
                    if let Some(client) = routing.clients.remove(&server) {
                        closed.push(client);
                    }
                }
                routing.map = Some(map);
            }
            self.generation.fetch_add(1, Ordering::Relaxed);
            for client in closed {
                quit_soon(client);
            }
            Ok(())
        })
    }

    /// Closes every connection.
    pub(super) async fn close(&self) {
        let clients: Vec<Client> = match self.routing.write() {
            Ok(mut routing) => routing.clients.drain().map(|(_, c)| c).collect(),
            Err(_) => Vec::new(),
        };
        for client in clients {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
    }
}

/// Closes `client` in the background (QUIT to a dead node is never answered: bounded).
fn quit_soon(client: Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        });
    }
}

/// A connection of its own to the primary of one key's slot, for a command that blocks
/// (it must not hold the primary's shared connection, nor wait behind fred's cluster
/// client while another primary is down). Before every call the slot map names the
/// primary; when that is another node than the one connected to (a failover, a `MOVED`),
/// the connection is closed and one to the new primary opened.
pub(super) struct Dedicated {
    shards: Arc<Shards>,
    /// Labels the connection's reconnects (`streamhub_redis_reconnects_total`).
    label: &'static str,
    held: Option<(Server, Client)>,
}

impl Dedicated {
    pub(super) fn new(shards: Arc<Shards>, label: &'static str) -> Dedicated {
        Dedicated { shards, label, held: None }
    }

    /// The connection to the primary of `key`'s slot, opened (or moved) if needed; None
    /// while no slot map is known.
    fn client_for(&mut self, key: &str) -> Option<Client> {
        let server = self.shards.server_for(key)?;
        match &self.held {
            Some((held, client)) if *held == server => return Some(client.clone()),
            _ => {}
        }
        let client = connect::node_client(&self.shards.config, &server, self.label).ok()?;
        if let Some((_, former)) = self.held.replace((server, client.clone())) {
            quit_soon(former);
        }
        Some(client)
    }

    /// Runs `call` on the connection to the primary of `key`'s slot. None while no slot
    /// map is known. A `MOVED` (the slot changed owner: the map is read again) is retried
    /// on the new owner; every other error is returned — `ASK` and `TRYAGAIN` too (the
    /// slot is migrating, see [`migrating`]), since a blocking command cannot follow
    /// them on this connection. A failed connection makes the map be read again soon.
    pub(super) async fn run<F, Fut>(&mut self, key: &str, call: F) -> Option<std::result::Result<Value, RedisError>>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Value, RedisError>>,
    {
        let mut redirections = 0;
        loop {
            let client = self.client_for(key)?;
            let err = match call(client).await {
                Err(err) => err,
                ok => return Some(ok),
            };
            if matches!(redirect(&err), Some(Redirect::Moved)) && redirections < 2 {
                let _ = self.shards.refresh_now().await;
                redirections += 1;
                continue;
            }
            if matches!(StoreError::from(err.clone()), StoreError::Unavailable(_)) && !migrating(&err) {
                self.shards.suspect();
            }
            return Some(Err(err));
        }
    }

    /// Closes the connection (bounded).
    pub(super) async fn close(mut self) {
        if let Some((_, client)) = self.held.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
    }
}

/// True for the replies of a slot being migrated (`ASK`, `TRYAGAIN`): the command did not
/// run, and [`Shards::run`] can follow them where a [`Dedicated`] connection cannot.
pub(super) fn migrating(err: &RedisError) -> bool {
    matches!(redirect(err), Some(Redirect::Ask(_))) || err.details().starts_with("TRYAGAIN")
}

/// Reads the slot map at once, then every `REFRESH_INTERVAL` or when asked.
async fn refresher(shards: Weak<Shards>) {
    loop {
        let Some(strong) = shards.upgrade() else { return };
        if let Err(e) = strong.refresh_now().await {
            tracing::debug!(error = %e, "cluster slot map not refreshed");
        }
        let wait = async {
            tokio::time::sleep(REFRESH_MIN_GAP).await;
            let _ = tokio::time::timeout(REFRESH_INTERVAL, strong.refresh.notified()).await;
        };
        wait.await;
        drop(strong);
    }
}

/// `MOVED <slot> <host>:<port>` or `ASK <slot> <host>:<port>`.
fn redirect(err: &RedisError) -> Option<Redirect> {
    let mut parts = err.details().split_whitespace();
    let kind = parts.next()?;
    let _slot = parts.next()?;
    let (host, port) = parts.next()?.rsplit_once(':')?;
    let server = Server::new(host, port.parse::<u16>().ok()?);
    match kind {
        "MOVED" => Some(Redirect::Moved),
        "ASK" => Some(Redirect::Ask(server)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::ErrorKind;

    #[test]
    fn reads_redirections() {
        let moved = RedisError::new(ErrorKind::Cluster, "MOVED 3999 127.0.0.1:7002");
        assert!(matches!(redirect(&moved), Some(Redirect::Moved)));
        let ask = RedisError::new(ErrorKind::Cluster, "ASK 12 10.0.0.5:6380");
        assert!(matches!(redirect(&ask), Some(Redirect::Ask(s)) if s.port == 6380 && s.host == "10.0.0.5"));
        assert!(redirect(&RedisError::new(ErrorKind::Unknown, "ERR nope")).is_none());
        assert!(migrating(&ask));
        assert!(migrating(&RedisError::new(ErrorKind::Unknown, "TRYAGAIN Multiple keys request during rehashing")));
        assert!(!migrating(&moved));
        assert!(!migrating(&RedisError::new(ErrorKind::IO, "Connection Closed")));
    }
}
