//! `streamhub tail`: follow a topic over the WebSocket API, printing each message as a
//! JSON line; reconnect with exponential backoff and resume from the last seq seen,
//! reporting every not-recovered notice on stderr.

use std::time::Duration;

use backon::BackoffBuilder;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Where `tail` starts.
#[derive(Debug, Clone)]
pub enum Start {
    Now,
    Earliest,
    After { epoch: String, seq: u64 },
}

/// Why one connection ended.
enum Ended {
    /// Printed as many messages as asked.
    Done,
    /// Connection lost or refused; reconnect.
    Lost(String),
    /// Refused for a reason a reconnection cannot fix (credentials, permissions, topic).
    Fatal(String),
}

/// The URL with the value of a `token` query parameter hidden, for messages.
fn redacted(url: &str) -> String {
    match url.split_once("token=") {
        Some((head, tail)) => {
            let rest = tail.split_once('&').map(|(_, r)| format!("&{r}")).unwrap_or_default();
            format!("{head}token=***{rest}")
        }
        None => url.to_string(),
    }
}

struct Follower {
    url: String,
    topic: String,
    /// Resume point: the last message printed.
    at: Start,
    printed: u64,
    max: Option<u64>,
}

/// Follows `topic` at `url` until `max` messages were printed (forever when None).
pub async fn follow(url: &str, topic: &str, start: Start, max: Option<u64>) -> Result<(), String> {
    let mut follower = Follower { url: url.to_string(), topic: topic.to_string(), at: start, printed: 0, max };
    let fresh = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = fresh();
    loop {
        match follower.connect_once(&mut || delays = fresh()).await {
            Ended::Done => return Ok(()),
            Ended::Fatal(why) => return Err(why),
            Ended::Lost(why) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                eprintln!("streamhub tail: {why}; reconnecting in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Follower {
    fn subscribe_frame(&self) -> Value {
        let mut frame = json!({ "op": "subscribe", "id": 1, "topic": self.topic });
        match &self.at {
            Start::Now => {}
            Start::Earliest => frame["since"] = json!("earliest"),
            Start::After { epoch, seq } => frame["since"] = json!({ "epoch": epoch, "seq": seq }),
        }
        frame
    }

    async fn connect_once(&mut self, on_subscribed: &mut dyn FnMut()) -> Ended {
        let (mut ws, _) = match tokio_tungstenite::connect_async_with_config(self.url.as_str(), None, true).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if matches!(r.status().as_u16(), 401 | 403) => {
                return Ended::Fatal(format!("{} refused the session: HTTP {}", redacted(&self.url), r.status()))
            }
            Err(e) => return Ended::Lost(format!("cannot connect to {}: {e}", redacted(&self.url))),
        };
        if let Err(e) = ws.send(Message::Text(self.subscribe_frame().to_string().into())).await {
            return Ended::Lost(format!("cannot subscribe: {e}"));
        }
        while let Some(frame) = ws.next().await {
            let text = match frame {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(close)) => {
                    return Ended::Lost(format!(
                        "server closed the connection ({:?})",
                        close.map(|c| u16::from(c.code))
                    ))
                }
                Ok(_) => continue,
                Err(e) => return Ended::Lost(format!("connection lost: {e}")),
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            match frame["type"].as_str() {
                Some("subscribed") => {
                    if frame["recovered"] == json!(false) {
                        eprintln!(
                            "streamhub tail: not recovered ({}): continuing after seq {} of epoch {}",
                            frame["reason"].as_str().unwrap_or("unknown"),
                            frame["seq"],
                            frame["epoch"].as_str().unwrap_or("")
                        );
                    }
                    if let (Some(epoch), Some(seq)) = (frame["epoch"].as_str(), frame["seq"].as_u64()) {
                        if frame["recovered"] == json!(false) || matches!(self.at, Start::Now) {
                            self.at = Start::After { epoch: epoch.to_string(), seq };
                        }
                    }
                    on_subscribed();
                }
                Some("expired") => {
                    // Expired messages are not printed; the position moves past them.
                    if let (Some(epoch), Some(to)) = (frame["epoch"].as_str(), frame["to"].as_u64()) {
                        self.at = Start::After { epoch: epoch.to_string(), seq: to };
                    }
                }
                Some("message") => {
                    println!("{text}");
                    if let (Some(epoch), Some(seq)) = (frame["epoch"].as_str(), frame["seq"].as_u64()) {
                        self.at = Start::After { epoch: epoch.to_string(), seq };
                    }
                    self.printed += 1;
                    if self.max.is_some_and(|max| self.printed >= max) {
                        let _ = ws.close(None).await;
                        return Ended::Done;
                    }
                }
                Some("error")
                    if matches!(
                        frame["code"].as_str(),
                        Some("unauthorized" | "forbidden" | "token_expired" | "invalid_topic")
                    ) =>
                {
                    return Ended::Fatal(format!(
                        "server refused: {} {}",
                        frame["code"].as_str().unwrap_or(""),
                        frame["message"].as_str().unwrap_or("")
                    ))
                }
                Some("error") => {
                    return Ended::Lost(format!(
                        "server refused: {} {}",
                        frame["code"].as_str().unwrap_or(""),
                        frame["message"].as_str().unwrap_or("")
                    ))
                }
                _ => {}
            }
        }
        Ended::Lost("connection closed".into())
    }
}
