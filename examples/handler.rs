//! A program that embeds streamhub and consumes a group with a Rust handler.
//!
//! Run with a Redis on 127.0.0.1:6379 (or let streamhub start its own):
//!     cargo run --example handler
//! It declares the group `orders/printer`, publishes five orders, prints each one as the
//! handler receives it (the first attempt of order 3 fails, to show a retry), and exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streamhub::config::{GroupSpec, TargetKind};
use streamhub::groups::handler::{handler_fn, Handlers};
use streamhub::groups::webhook::Outcome;
use streamhub::message::NewMessage;
use streamhub::{Config, Server, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(None, &Default::default())?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.server.metrics_listen = "127.0.0.1:0".parse()?;
    config.redis.prefix = "example".into();
    let mut spec: GroupSpec =
        toml::from_str("topic = \"orders\"\nname = \"printer\"\ntarget = \"handler\"\nstart = \"new\"")?;
    spec.backoff_base_ms = 200;
    spec.target = TargetKind::Handler;
    config.group.push(spec);

    let handled = Arc::new(AtomicUsize::new(0));
    let done = handled.clone();
    let mut handlers = Handlers::new();
    handlers.insert(
        "orders",
        "printer",
        handler_fn(move |d| {
            let done = done.clone();
            async move {
                let text =
                    d.envelope.as_ref().map(|e| String::from_utf8_lossy(&e.payload).to_string()).unwrap_or_default();
                if text.contains("order 3") && d.attempt == 1 {
                    println!("seq {} attempt {}: {text} — failing once", d.seq, d.attempt);
                    return Outcome::Retry { error: "first attempt fails".into(), after: None };
                }
                println!("seq {} attempt {}: {text}", d.seq, d.attempt);
                done.fetch_add(1, Ordering::SeqCst);
                Outcome::Ack
            }
        }),
    );
    let server = Server::start_with_handlers(config.clone(), handlers).await?;
    // Give the group a moment to be created before publishing (start = "new").
    tokio::time::sleep(Duration::from_millis(500)).await;
    let topic = Topic::parse("orders", config.limits.max_topic_bytes)?;
    for n in 1..=5 {
        let message = NewMessage {
            payload: format!("order {n}").into_bytes(),
            content_type: "text/plain".into(),
            ..Default::default()
        };
        server.store().publish(&topic, vec![message.check(&config.limits)?]).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    Ok(())
}
