//! The webhook target: POST each delivery to the group's URL.
//!
//! Headers: `X-Streamhub-Topic`, `-Group`, `-Epoch`, `-Seq`, `-Message-Id`, `-Attempt`,
//! `-Timestamp` (ms) and, with a secret, `X-Streamhub-Signature: v1=<hex>` where `<hex>` is
//! HMAC-SHA256(secret, "<timestamp>." + body). The receiver recomputes it over the raw
//! body, compares in constant time, and rejects stale timestamps.
//!
//! Outcomes: 2xx acks; 408, 429, 5xx, timeouts and connection errors retry (honouring
//! `Retry-After` in seconds); other 4xx are permanent (dead-lettered) unless
//! `on_4xx = "retry"`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use sha2::Sha256;

use crate::clock::now_ms;
use crate::config::{GroupSpec, On4xx, WebhookBody};
use crate::store::groups::GroupDelivery;
use crate::wire::MessageOut;

pub const SIGNATURE_HEADER: &str = "x-streamhub-signature";
pub const TIMESTAMP_HEADER: &str = "x-streamhub-timestamp";

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ack,
    Retry { error: String, after: Option<Duration> },
    Permanent { error: String },
}

pub struct Webhook {
    client: reqwest::Client,
    /// Parsed once, not per request. (A definition stored before URLs were checked may
    /// hold one that does not parse: its attempts fail, and are retried like any other.)
    url: Result<reqwest::Url, String>,
    /// The group's name as a header value, made once.
    group: HeaderValue,
    secret: Option<Vec<u8>>,
    raw: bool,
    retry_4xx: bool,
}

/// The JSON body of a delivery (`body = "json"`), serialized as it stands: no tree of
/// values is built first. (Its keys in the order PROTOCOL §10.8 shows; `message` is in
/// the history shape, keys as history writes them.)
#[derive(serde::Serialize)]
struct JsonBody<'a> {
    attempt: u32,
    epoch: &'a str,
    group: &'a str,
    message: MessageOut,
    topic: &'a str,
}

const TOPIC: HeaderName = HeaderName::from_static("x-streamhub-topic");
const GROUP: HeaderName = HeaderName::from_static("x-streamhub-group");
const EPOCH: HeaderName = HeaderName::from_static("x-streamhub-epoch");
const SEQ: HeaderName = HeaderName::from_static("x-streamhub-seq");
const MESSAGE_ID: HeaderName = HeaderName::from_static("x-streamhub-message-id");
const ATTEMPT: HeaderName = HeaderName::from_static("x-streamhub-attempt");
const TIMESTAMP: HeaderName = HeaderName::from_static(TIMESTAMP_HEADER);
const SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);

/// `v1=<hex of HMAC-SHA256(secret, "<timestamp>." + body)>`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return String::new() };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

impl Webhook {
    pub fn new(spec: &GroupSpec) -> Result<Webhook, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(spec.timeout_ms))
            // A redirect could turn the POST into a body-less GET elsewhere: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(spec.concurrency)
            .build()
            .map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse(spec.url.as_deref().unwrap_or_default()).map_err(|e| e.to_string());
        let group = HeaderValue::from_str(&spec.name).map_err(|e| format!("name: {e}"))?;
        Ok(Webhook {
            client,
            url,
            group,
            secret: spec.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            raw: spec.body == WebhookBody::Raw,
            retry_4xx: spec.on_4xx == On4xx::Retry,
        })
    }

    pub async fn deliver(&self, topic: &str, group: &str, epoch: &str, d: &GroupDelivery) -> Outcome {
        let Ok(envelope) = &d.envelope else {
            return Outcome::Permanent { error: "the stored entry is not a valid envelope".into() };
        };
        let url = match &self.url {
            Ok(url) => url.clone(),
            Err(e) => return Outcome::Retry { error: format!("webhook url does not parse: {e}"), after: None },
        };
        // Topic names and epochs are printable ASCII (PROTOCOL §5), message ids UUIDs and
        // content types checked at publish: a value that is still not a header value is
        // not sent with a header missing or blank (receivers deduplicate by the id).
        let text = |name: &str, value: &str| {
            HeaderValue::from_str(value)
                .map_err(|_| Outcome::Permanent { error: format!("{name} is not a valid header value") })
        };
        let (body, content_type) = if self.raw {
            match text("the content type", &envelope.content_type) {
                Ok(content_type) => (envelope.payload.clone(), content_type),
                Err(refused) => return refused,
            }
        } else {
            let message = MessageOut::new(d.seq, Ok(envelope.clone()));
            let body = JsonBody { attempt: d.attempt, epoch, group, message, topic };
            (serde_json::to_vec(&body).unwrap_or_default(), HeaderValue::from_static("application/json"))
        };
        let (topic, epoch, id) =
            match (text("the topic", topic), text("the epoch", epoch), text("the message id", &envelope.id)) {
                (Ok(topic), Ok(epoch), Ok(id)) => (topic, epoch, id),
                (Err(refused), _, _) | (_, Err(refused), _) | (_, _, Err(refused)) => return refused,
            };
        let timestamp = now_ms();
        // Each name made once, each number without a string (`.headers(map)` would merge a
        // second map into the request's).
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(TOPIC, topic)
            .header(GROUP, self.group.clone())
            .header(EPOCH, epoch)
            .header(SEQ, HeaderValue::from(d.seq))
            .header(MESSAGE_ID, id)
            .header(ATTEMPT, HeaderValue::from(d.attempt))
            .header(TIMESTAMP, HeaderValue::from(timestamp));
        if let Some(secret) = &self.secret {
            // Lowercase hex after "v1=": always a valid header value.
            let signature = signature(secret, &timestamp.to_string(), &body);
            request =
                request.header(SIGNATURE, HeaderValue::from_str(&signature).unwrap_or(HeaderValue::from_static("")));
        }
        match request.body(body).send().await {
            Err(e) if e.is_timeout() => Outcome::Retry { error: "webhook timed out".into(), after: None },
            Err(e) => Outcome::Retry { error: format!("webhook unreachable: {e}"), after: None },
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Outcome::Ack;
                }
                let after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let error = format!("webhook answered {status}");
                let code = status.as_u16();
                if code == 408 || code == 429 || status.is_server_error() || self.retry_4xx {
                    Outcome::Retry { error, after }
                } else {
                    Outcome::Permanent { error }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topic: &str, url: &str) -> (Webhook, GroupDelivery) {
        let spec: GroupSpec = toml::from_str(&format!(
            "topic = \"{topic}\"\nname = \"g\"\ntarget = \"webhook\"\nurl = \"{url}\"\nbody = \"raw\"\n"
        ))
        .expect("a group spec");
        let envelope = crate::envelope::Envelope {
            version: 1,
            id: "01a22379-ca05-7876-9aa9-952b451c63f6".into(),
            published_ms: 1,
            ttl_ms: None,
            content_type: "text/plain".into(),
            headers: Default::default(),
            payload: b"hi".to_vec(),
            from: None,
        };
        let lease =
            crate::store::groups::Lease { source: crate::store::groups::Source::Main, id: "1-1".into(), count: 1 };
        let d = GroupDelivery { lease, seq: 1, attempt: 1, last_error: None, envelope: Ok(envelope) };
        (Webhook::new(&spec).expect("a webhook"), d)
    }

    /// Nothing is sent for a URL that does not parse (a definition stored before URLs were
    /// checked): the attempt is retried, with the reason.
    #[tokio::test]
    async fn an_unparsable_url_retries_with_its_reason() {
        let (webhook, d) = delivery("orders", "http://exa mple.com/hook");
        match webhook.deliver("orders", "g", "e", &d).await {
            Outcome::Retry { error, after: None } => {
                assert!(error.starts_with("webhook url does not parse: "), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A value that cannot be a header is not sent blank (receivers deduplicate by the
    /// message id): the delivery is permanent, and says which value.
    #[tokio::test]
    async fn a_value_that_is_no_header_value_is_permanent() {
        let (webhook, mut d) = delivery("orders", "http://127.0.0.1:9/hook");
        if let Ok(e) = &mut d.envelope {
            e.id = "bad\nid".into();
        }
        assert_eq!(
            webhook.deliver("orders", "g", "e", &d).await,
            Outcome::Permanent { error: "the message id is not a valid header value".into() }
        );
        if let Ok(e) = &mut d.envelope {
            e.id = "01a22379-ca05-7876-9aa9-952b451c63f6".into();
            e.content_type = "text/plain\r\nx: y".into();
        }
        assert_eq!(
            webhook.deliver("orders", "g", "e", &d).await,
            Outcome::Permanent { error: "the content type is not a valid header value".into() }
        );
    }

    /// The JSON body's exact bytes (PROTOCOL §10.8's example): a change of its shape or
    /// key order shows here.
    #[test]
    fn the_json_body_is_the_documented_one() {
        let envelope = crate::envelope::Envelope {
            version: 1,
            id: "01a22379-ca05-7876-9aa9-952b451c63f6".into(),
            published_ms: 1795891513861,
            ttl_ms: None,
            content_type: "application/json".into(),
            headers: [("source".to_string(), "shop".to_string())].into(),
            payload: br#"{"total":"9.90","order":17}"#.to_vec(),
            from: None,
        };
        let body = JsonBody {
            attempt: 1,
            epoch: "f750a640062c60ca",
            group: "billing",
            message: MessageOut::new(1, Ok(envelope)),
            topic: "orders",
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"attempt":1,"epoch":"f750a640062c60ca","group":"billing","message":{"seq":1,"id":"01a22379-ca05-7876-9aa9-952b451c63f6","ts":1795891513861,"content_type":"application/json","headers":{"source":"shop"},"data":{"order":17,"total":"9.90"}},"topic":"orders"}"#
        );
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231-style check: recompute with the mac directly.
        let s = signature(b"key", "1700000000000", b"{\"a\":1}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").expect("key");
        mac.update(b"1700000000000.{\"a\":1}");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, format!("v1={hex}"));
        assert_ne!(signature(b"other", "1700000000000", b"{\"a\":1}"), s);
        assert_eq!(s.len(), 3 + 64);
    }
}
