//! E-mail through an SMTP relay (lettre): implicit TLS, required STARTTLS,
//! or plain text for a relay on localhost; AUTH when a username is set; a
//! pool of connections whose idle ones are closed before the relay drops
//! them (lettre #743).
//!
//! Each send runs under `tokio::time::timeout`: lettre's own timeout covers
//! the connect only (lettre #1027, #917, #978). A send cut off mid-way
//! leaves its connection in an unknown state, so after a timeout the whole
//! transport (its pool) is replaced rather than reused.
//!
//! The message is `text/plain; charset=utf-8`, base64 (so no relay needs
//! 8BITMIME); the subject is per kind from `[email]`, RFC 2047-encoded; the
//! body is the stored notice text, the same as the SMS. The Message-ID is
//! built from the idempotency key, so a repeat after the one duplicate
//! window carries the same Message-ID.
//!
//! Classification: SMTP 4xx, timeouts, connection and TLS failures
//! transient; 5xx permanent, except authentication failures (530, 534,
//! 535, 538: our credentials, not the notice, are wrong), which are
//! transient, as are refusals on our side that are about the relay (no
//! AUTH mechanism in common, no STARTTLS offered).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::channel::{idempotency_key, scrub, Accepted, DeliveryError, Secrets};
use crate::db::outbox::ClaimedNotice;
use crate::domain::EventKind;
use crate::error::{Error, Result};
use crate::settings::{EmailSettings, EmailTls};

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// A configured SMTP relay.
pub struct Mailer {
    builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
    transport: Mutex<Arc<Transport>>,
    from: Mailbox,
    subjects: Subjects,
    timeout: Duration,
    describe: String,
    /// The password, cut out of whatever the relay answers.
    secrets: Secrets,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("relay", &self.describe)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Subjects {
    auto_signed: String,
    visit_center: String,
    suspended: String,
    cancelled: String,
}

impl Mailer {
    /// `None` when `email.host` is empty (channel not configured). Errors
    /// are configuration errors (exit 2).
    pub fn from_settings(s: &EmailSettings) -> Result<Option<Self>> {
        let host = s.host.trim();
        if host.is_empty() {
            return Ok(None);
        }
        let bad = |key: &str, why: String| Error::Config(format!("configuration key {key}: {why}"));
        let from: Mailbox = s
            .from
            .clone()
            .ok_or_else(|| bad("email.from", "is required when email.host is set".into()))?;
        super::install_crypto_provider();
        let tls = if s.tls == EmailTls::None {
            Tls::None
        } else {
            // STARTTLS or TLS from the first byte: the same parameters.
            let mut params = TlsParameters::builder(host.to_string());
            if !s.ca_file.trim().is_empty() {
                // A CA bundle is kilobytes: a device or a huge file is a
                // mistake, refused rather than read without end.
                let pem = crate::fsutil::read_regular(Path::new(s.ca_file.trim()), 4 << 20)
                    .map_err(|why| bad("email.ca_file", format!("{}: {why}", s.ca_file.trim())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| bad("email.ca_file", format!("not a PEM certificate: {e}")))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build()
                .map_err(|e| bad("email.host", format!("TLS setup failed: {e}")))?;
            if s.tls == EmailTls::Starttls {
                Tls::Required(params)
            } else {
                Tls::Wrapper(params)
            }
        };
        let timeout = Duration::from_secs(s.timeout_secs);
        let pool = PoolConfig::new()
            .max_size(s.concurrency)
            .idle_timeout(Duration::from_secs(s.pool_idle_secs));
        let mut builder = Transport::builder_dangerous(host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(timeout))
            .pool_config(pool);
        if !s.username.is_empty() {
            builder = builder.credentials(Credentials::new(s.username.clone(), s.password.clone()));
        }
        let transport = Mutex::new(Arc::new(builder.clone().build()));
        Ok(Some(Mailer {
            builder,
            transport,
            from,
            subjects: Subjects {
                auto_signed: s.subject_auto_signed.clone(),
                visit_center: s.subject_visit_center.clone(),
                suspended: s.subject_suspended.clone(),
                cancelled: s.subject_cancelled.clone(),
            },
            timeout,
            describe: format!("{host}:{} ({})", s.port, s.tls),
            secrets: Secrets::new(&[&s.password]),
        }))
    }

    /// `host:port (tls)`, for summaries.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The message for a notice (no I/O).
    pub fn message(&self, n: &ClaimedNotice) -> Result<Message, DeliveryError> {
        let to: Mailbox = n.recipient.trim().parse().map_err(|_| {
            DeliveryError::Permanent("the recipient is not a valid e-mail address".into())
        })?;
        let subject = match n.kind {
            EventKind::AutoSigned => &self.subjects.auto_signed,
            EventKind::VisitCenter => &self.subjects.visit_center,
            EventKind::Suspended => &self.subjects.suspended,
            EventKind::Cancelled => &self.subjects.cancelled,
        };
        let key = idempotency_key(n);
        let domain = self.from.email.domain().to_string();
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.clone())
            .message_id(Some(format!("<{key}@{domain}>")))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".into(),
            ))
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .header(ContentTransferEncoding::Base64)
                    .body(n.message.clone()),
            )
            .map_err(|e| DeliveryError::Permanent(format!("cannot build the message: {e}")))
    }

    pub async fn send(&self, n: &ClaimedNotice) -> Result<Accepted, DeliveryError> {
        let message = self.message(n)?;
        let transport = self.current();
        match tokio::time::timeout(self.timeout, transport.send(message)).await {
            Ok(Ok(resp)) => {
                let text = resp.message().collect::<Vec<_>>().join(" ");
                Ok(Accepted {
                    provider_ref: scrub(n, &format!("{} {text}", resp.code())),
                })
            }
            Ok(Err(e)) => Err(classify(n, &e).redacted(&self.secrets)),
            Err(_) => {
                self.replace(&transport);
                Err(DeliveryError::Transient(format!(
                    "SMTP relay did not finish within {} s (outcome unknown)",
                    self.timeout.as_secs()
                )))
            }
        }
    }

    /// Closes pooled connections (end of a step).
    pub async fn shutdown(&self) {
        let t = self.current();
        t.shutdown().await;
    }

    fn current(&self) -> Arc<Transport> {
        match self.transport.lock() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// After a timeout: a fresh transport, unless another send replaced it
    /// already.
    fn replace(&self, used: &Arc<Transport>) {
        let mut g = match self.transport.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if Arc::ptr_eq(&g, used) {
            *g = Arc::new(self.builder.clone().build());
        }
    }
}

fn classify(n: &ClaimedNotice, e: &lettre::transport::smtp::Error) -> DeliveryError {
    let text = scrub(n, &error_chain(e));
    match e.status() {
        Some(code) => {
            let c = code.to_string();
            let msg = format!("SMTP relay answered {text}");
            if e.is_transient() || ["530", "534", "535", "538"].contains(&c.as_str()) {
                DeliveryError::Transient(msg)
            } else {
                DeliveryError::Permanent(msg)
            }
        }
        // No SMTP reply: connection refused or dropped, TLS, timeout — all
        // may work next time. So may a client-side refusal about the relay
        // (no AUTH mechanism in common, no STARTTLS): configuration, not
        // the notice. Only an internationalised address the relay cannot
        // take (no SMTPUTF8) is the notice's own, permanent problem.
        None if e.is_client() && !n.recipient.is_ascii() => {
            DeliveryError::Permanent(format!("SMTP: {text}"))
        }
        None if e.is_client() => DeliveryError::Transient(format!("SMTP: {text}")),
        None => DeliveryError::Transient(format!("SMTP relay unreachable or failed: {text}")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Channel;
    use crate::outbox::channel::sample_notice;

    fn settings() -> EmailSettings {
        let mut s = crate::settings::Settings::load_with_env(None, &[])
            .expect("defaults")
            .email;
        s.host = "127.0.0.1".into();
        s.port = 2525;
        s.tls = crate::settings::EmailTls::None;
        s.from = Some(
            "上海市居住证 <noreply@example.gov.cn>"
                .parse()
                .expect("a mailbox"),
        );
        s
    }

    #[tokio::test]
    async fn message_is_utf8_plain_text_with_subject_and_idempotent_message_id() {
        let m = Mailer::from_settings(&settings())
            .expect("ok")
            .expect("configured");
        let n = sample_notice(Channel::Email, "zhang.san@example.com");
        let raw = String::from_utf8(m.message(&n).expect("message").formatted()).expect("ascii");
        assert!(raw.is_ascii(), "7-bit on the wire:\n{raw}");
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(raw.contains("Content-Transfer-Encoding: base64"), "{raw}");
        assert!(raw.contains("To: zhang.san@example.com"), "{raw}");
        assert!(raw.contains("Subject: =?utf-8?"), "encoded subject:\n{raw}");
        assert!(raw.contains("Auto-Submitted: auto-generated"), "{raw}");
        let key = idempotency_key(&n);
        assert!(
            raw.contains(&format!("Message-ID: <{key}@example.gov.cn>")),
            "{raw}"
        );
    }

    #[tokio::test]
    async fn a_bad_recipient_is_permanent_and_a_missing_sender_is_a_config_error() {
        let m = Mailer::from_settings(&settings())
            .expect("ok")
            .expect("configured");
        let n = sample_notice(Channel::Email, "not an address");
        assert!(matches!(m.message(&n), Err(DeliveryError::Permanent(_))));
        let mut s = settings();
        // (A sender that is not an address is refused when the settings
        // load: see settings' tests.)
        s.from = None;
        let e = Mailer::from_settings(&s).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("email.from"), "{e}");
        s.host = String::new();
        assert!(Mailer::from_settings(&s).expect("ok").is_none());
    }
}
