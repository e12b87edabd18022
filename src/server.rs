//! Running streamhub: start every part, hand out the bound addresses, stop in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Router, ServiceExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::delivery::Hub;
use crate::gateway::{self, AppState};
use crate::metrics;
use crate::store::embedded::{EmbeddedError, EmbeddedRedis};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid auth configuration: {0}")]
    Auth(String),
    #[error("no handler registered for the handler groups {0:?}")]
    MissingHandlers(Vec<String>),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A started streamhub node.
pub struct Server {
    http_addr: SocketAddr,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    store: Store,
    hub: Hub,
    connections: Arc<Semaphore>,
    max_connections: usize,
    embedded: Option<EmbeddedRedis>,
    grace: Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl Server {
    /// Starts the embedded Redis if needed, the store, the API and the metrics listener.
    /// Returns once both listeners are bound; Redis may still be unreachable (then
    /// /readyz says so and publishes answer 503 until it is back).
    pub async fn start(config: Config) -> Result<Server, StartError> {
        Self::start_with_handlers(config, crate::groups::handler::Handlers::new()).await
    }

    /// Like `start`, serving the `target = "handler"` groups with `handlers`.
    pub async fn start_with_handlers(
        config: Config,
        handlers: crate::groups::handler::Handlers,
    ) -> Result<Server, StartError> {
        let groups = Arc::new(crate::groups::Groups::new(&config));
        let missing = groups.missing_handlers(&handlers);
        if !missing.is_empty() {
            return Err(StartError::MissingHandlers(missing));
        }
        let auth = crate::auth::Auth::new(&config.auth).map_err(StartError::Auth)?;
        let access = Arc::new(crate::ops::access::Access::new(auth, &config.http, config.limits.max_topic_bytes));
        let config = Arc::new(config);
        let embedded = EmbeddedRedis::start_if_needed(&config.redis).await?;
        let store = Store::connect(&config)?;
        match store.wait_ready(Duration::from_millis(config.redis.connect_timeout_ms)).await {
            Ok(()) => {
                tracing::info!(url = %crate::config::mask_url_password(&config.redis.url), "connected to redis")
            }
            Err(e) => tracing::error!(
                "{e}; serving anyway: /readyz answers 503 and every call that needs Redis fails until it answers \
                 (streamhub keeps reconnecting)"
            ),
        }

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let http = bind(config.server.listen).await?;
        let metrics_listener = bind(config.server.metrics_listen).await?;
        let http_addr = http.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
        let metrics_addr = metrics_listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr: config.server.metrics_listen, source })?;

        let prometheus = metrics::handle();
        tasks.spawn(metrics::run_upkeep(prometheus.clone(), shutdown.clone()));
        let metrics_app =
            Router::new().route("/metrics", get(move || std::future::ready(metrics::render(&prometheus))));
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) =
                axum::serve(metrics_listener, metrics_app).with_graceful_shutdown(token.cancelled_owned()).await
            {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });

        let (hints, hints_task) = store.start_hints(&config.redis, shutdown.clone())?;
        tasks.spawn(async move {
            let _ = hints_task.await;
        });
        let presence =
            crate::delivery::presence::Presence::start(store.clone(), config.presence.clone(), shutdown.clone());
        let hub = Hub::new(store.clone(), hints, presence, config.fanout.clone(), shutdown.clone(), tasks.clone());
        groups.start(&store, &config, &handlers, &shutdown, &tasks);
        tasks.spawn(crate::groups::gauges::poll(
            store.clone(),
            groups.clone(),
            Duration::from_millis(config.server.metrics_poll_interval_ms),
            shutdown.clone(),
        ));
        let connections = Arc::new(Semaphore::new(config.ws.max_connections));
        let (maintained, token) = (access.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => maintained.maintain(),
                }
            }
        });
        let ops = crate::ops::Ops::new(store.clone(), config.clone(), access, groups, shutdown.clone());
        let state = AppState {
            ops,
            hub: hub.clone(),
            connections: connections.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        };
        let app = gateway::app(Arc::new(state));
        let token = shutdown.clone();
        // TCP_NODELAY on every accepted connection: WebSocket frames and small responses
        // must not wait for the peer's delayed ACK (Nagle's algorithm), which stalls a
        // session's small writes by up to 40 ms each.
        let http = axum::serve::ListenerExt::tap_io(http, |tcp: &mut tokio::net::TcpStream| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
        });
        tasks.spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(http, app).with_graceful_shutdown(token.cancelled_owned()).await {
                tracing::error!(error = %e, "http listener failed");
            }
        });
        tracing::info!(%http_addr, %metrics_addr, "streamhub serving");
        Ok(Server {
            http_addr,
            metrics_addr,
            shutdown,
            tasks,
            store,
            hub,
            connections,
            max_connections: config.ws.max_connections,
            embedded,
            grace: Duration::from_millis(config.server.shutdown_grace_ms),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Tail tasks running on this node (one per topic with local subscribers).
    pub fn tail_count(&self) -> usize {
        self.hub.tail_count()
    }

    /// Open WebSocket and SSE sessions on this node.
    pub fn session_count(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// The address of the redis-server this node started, if it started one.
    pub fn embedded_redis(&self) -> Option<SocketAddr> {
        self.embedded.as_ref().map(EmbeddedRedis::addr)
    }

    /// Stops accepting, lets in-flight requests finish (at most `shutdown_grace_ms`),
    /// closes Redis connections, then stops the embedded Redis.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "in-flight requests did not finish within the grace period");
        }
        self.store.close().await;
        if let Some(embedded) = self.embedded.as_mut() {
            embedded.stop().await;
        }
        tracing::info!("streamhub stopped");
    }
}
