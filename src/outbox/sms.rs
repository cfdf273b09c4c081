//! SMS through an HTTP gateway: one JSON POST per notice carrying the
//! phone, the text and the notice's idempotency key (also as an
//! `Idempotency-Key` header), so a gateway can drop a repeat.
//!
//! Classification: 2xx sent; 429, 5xx, 408, timeouts and connection errors
//! transient; 401, 403 and 3xx transient too (our credentials or URL, not
//! the notice, are wrong — fixing them must not require resurrecting dead
//! notices); any other status (400, 404, 422, …) permanent.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Serialize;

use super::channel::{idempotency_key, scrub, Accepted, DeliveryError, Secrets};
use crate::db::outbox::ClaimedNotice;
use crate::error::{Error, Result};
use crate::settings::SmsSettings;

/// A configured SMS gateway.
#[derive(Debug)]
pub struct SmsGateway {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<(HeaderName, HeaderValue)>,
    /// The token, cut out of whatever the gateway answers.
    secrets: Secrets,
    timeout: Duration,
}

/// The request body (the gateway contract, docs/delivery.md).
#[derive(Serialize)]
struct SmsRequest<'a> {
    phone: &'a str,
    text: &'a str,
    idempotency_key: &'a str,
    kind: &'a str,
    notification_id: i64,
}

impl SmsGateway {
    /// `None` when `sms.url` is empty (channel not configured). Errors are
    /// configuration errors (exit 2).
    pub fn from_settings(s: &SmsSettings) -> Result<Option<Self>> {
        let Some(url) = s.url.clone() else {
            return Ok(None);
        };
        let bad = |key: &str, why: String| Error::Config(format!("configuration key {key}: {why}"));
        let auth = if s.auth_token.is_empty() {
            None
        } else {
            let name = HeaderName::from_bytes(s.auth_header.trim().as_bytes())
                .map_err(|_| bad("sms.auth_header", "not a valid HTTP header name".into()))?;
            let mut value = HeaderValue::from_str(&s.auth_token)
                .map_err(|_| bad("sms.auth_token", "not a valid HTTP header value".into()))?;
            value.set_sensitive(true);
            Some((name, value))
        };
        super::install_crypto_provider();
        let timeout = Duration::from_secs(s.timeout_secs);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A redirect would turn the POST into a GET elsewhere: a
            // misconfigured URL should show, not be followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("autosign/", env!("CARGO_PKG_VERSION")));
        if !s.ca_file.trim().is_empty() {
            // A CA bundle is kilobytes: a device or a huge file is a
            // mistake, refused rather than read without end.
            let pem = crate::fsutil::read_regular(Path::new(s.ca_file.trim()), 4 << 20)
                .map_err(|why| bad("sms.ca_file", format!("{}: {why}", s.ca_file.trim())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad("sms.ca_file", format!("not PEM certificates: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("SMS gateway client: {e}")))?;
        Ok(Some(SmsGateway {
            client,
            url,
            auth,
            secrets: Secrets::new(&[&s.auth_token]),
            timeout,
        }))
    }

    /// The gateway's address without credentials or query, for summaries.
    pub fn describe(&self) -> String {
        format!(
            "{}://{}{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or(""),
            self.url.port().map(|p| format!(":{p}")).unwrap_or_default()
        )
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one notice. Whatever the gateway answers reaches
    /// `last_error`, the logs, the notification export and `status`: it is
    /// scrubbed of personal data ([`scrub`]) and of the token.
    pub async fn send(&self, n: &ClaimedNotice) -> Result<Accepted, DeliveryError> {
        self.send_unredacted(n)
            .await
            .map_err(|e| e.redacted(&self.secrets))
    }

    async fn send_unredacted(&self, n: &ClaimedNotice) -> Result<Accepted, DeliveryError> {
        let key = idempotency_key(n);
        let body = SmsRequest {
            phone: &n.recipient,
            text: &n.message,
            idempotency_key: &key,
            kind: n.kind.code(),
            notification_id: n.notification_id,
        };
        let mut req = self
            .client
            .post(self.url.clone())
            .header("Idempotency-Key", &key)
            .json(&body);
        if let Some((name, value)) = &self.auth {
            req = req.header(name.clone(), value.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| request_error(n, e, self.timeout))?;
        let status = resp.status().as_u16();
        // The body is read under the same overall timeout.
        let text = resp.text().await.unwrap_or_default();
        match classify_status(status) {
            StatusClass::Sent => Ok(Accepted {
                provider_ref: provider_ref(&text).unwrap_or(key),
            }),
            class => {
                let mut msg = format!("SMS gateway answered HTTP {status}");
                let detail = scrub(n, &text);
                if !detail.is_empty() {
                    msg.push_str(": ");
                    msg.push_str(&detail);
                }
                let msg = scrub(n, &msg);
                Err(match class {
                    StatusClass::Transient => DeliveryError::Transient(msg),
                    _ => DeliveryError::Permanent(msg),
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    Sent,
    Transient,
    Permanent,
}

fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Sent,
        // A redirect is not followed (it would turn the POST into a GET):
        // the URL is wrong, which is ours to fix, not the notice's.
        300..=399 | 401 | 403 | 408 | 429 | 500..=599 => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

fn request_error(n: &ClaimedNotice, e: reqwest::Error, timeout: Duration) -> DeliveryError {
    // The URL may carry a credential in its query (some gateways take the
    // key there): it stays out of `last_error` and the logs. The summary
    // names the gateway by scheme, host and port only.
    let e = e.without_url();
    let what = if e.is_timeout() {
        format!(
            "SMS gateway did not answer within {} s (outcome unknown)",
            timeout.as_secs()
        )
    } else if e.is_connect() {
        format!("cannot connect to the SMS gateway: {}", error_chain(&e))
    } else {
        format!("SMS gateway request failed: {}", error_chain(&e))
    };
    // Whatever went wrong on the wire may work next time.
    DeliveryError::Transient(scrub(n, &what))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

/// `message_id` (or `id`, `request_id`) from a JSON answer, if any.
fn provider_ref(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    for key in ["message_id", "id", "request_id", "biz_id"] {
        match v.get(key) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {
                return Some(s.chars().take(200).collect())
            }
            Some(serde_json::Value::Number(n)) => return Some(n.to_string()),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_docs_delivery_md_tabulates() {
        for (status, class) in [
            (200, StatusClass::Sent),
            (202, StatusClass::Sent),
            (429, StatusClass::Transient),
            (500, StatusClass::Transient),
            (502, StatusClass::Transient),
            (503, StatusClass::Transient),
            (408, StatusClass::Transient),
            (401, StatusClass::Transient),
            (403, StatusClass::Transient),
            (400, StatusClass::Permanent),
            (404, StatusClass::Permanent),
            (422, StatusClass::Permanent),
            (301, StatusClass::Transient),
        ] {
            assert_eq!(classify_status(status), class, "{status}");
        }
    }

    #[test]
    fn provider_ref_comes_from_the_json_answer() {
        assert_eq!(
            provider_ref(r#"{"message_id":"gw-1"}"#).as_deref(),
            Some("gw-1")
        );
        assert_eq!(provider_ref(r#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(provider_ref("OK"), None);
        assert_eq!(provider_ref(r#"{"status":"ok"}"#), None);
    }

    #[test]
    fn an_empty_url_means_not_configured_and_a_bad_header_is_a_configuration_error() {
        // (A URL that is not one is refused when the settings load: see
        // settings' tests.)
        let mut s = crate::settings::Settings::load_with_env(None, &[])
            .expect("defaults")
            .sms;
        assert!(SmsGateway::from_settings(&s).expect("ok").is_none());
        s.url = Some("https://gw.example".parse().expect("url"));
        s.auth_token = "t".into();
        s.auth_header = "bad header".into();
        let e = SmsGateway::from_settings(&s).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("sms.auth_header"), "{e}");
    }
}
