//! What the channels share: the error that decides retry or dead letter,
//! the idempotency key a gateway or relay can drop a repeat by, and the
//! scrubbing of personal data out of error text.

use sha2::{Digest, Sha256};

use crate::db::outbox::ClaimedNotice;
use crate::domain::{escape_controls, mask_numbers_in_text, Channel, Email, Phone};

/// Why a send failed; the variant decides what happens to the notice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Might work later (timeout, connection refused, HTTP 429/5xx, SMTP
    /// 4xx): retried with backoff until `max_attempts`. A timeout is an
    /// *unknown* outcome — the gateway may have sent it — which is why
    /// every send carries the idempotency key.
    #[error("{0}")]
    Transient(String),
    /// Will never work for this notice (HTTP 4xx, SMTP 5xx, an address the
    /// relay refuses): `dead` at once.
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::Transient(_))
    }

    pub fn message(&self) -> &str {
        match self {
            DeliveryError::Transient(m) | DeliveryError::Permanent(m) => m,
        }
    }

    /// The same error with each of `secrets` cut out of its text.
    pub fn redacted(self, secrets: &Secrets) -> Self {
        match self {
            DeliveryError::Transient(m) => DeliveryError::Transient(secrets.redact(&m)),
            DeliveryError::Permanent(m) => DeliveryError::Permanent(secrets.redact(&m)),
        }
    }
}

/// A channel's credentials (the gateway's token, the relay's password), as
/// they could come back in an answer: whole, and each word of a token such
/// as `Bearer abc…` that is long enough to be the secret part.
#[derive(Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn new(values: &[&str]) -> Self {
        let mut v: Vec<String> = Vec::new();
        for value in values.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            v.push(value.to_string());
            v.extend(
                value
                    .split_whitespace()
                    .filter(|w| w.chars().count() >= 6)
                    .map(str::to_string),
            );
        }
        // Longest first, so a word never leaves the rest of its token.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        v.dedup();
        Secrets(v)
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut s = text.to_string();
        for secret in &self.0 {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), "***");
            }
        }
        s
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.0.len())
    }
}

/// A send the gateway or relay accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The gateway's message id or the relay's answer, for `provider_ref`.
    pub provider_ref: String,
}

/// The notice's idempotency key: the same for every attempt at the same
/// notice, and derived from its unique key (permit, cycle, kind) rather
/// than the row id, so it survives a move to another database. Hex, no
/// personal data.
pub fn idempotency_key(n: &ClaimedNotice) -> String {
    let mut h = Sha256::new();
    h.update(b"autosign-notice/v1\0");
    h.update(n.permit_no.as_bytes());
    h.update(b"\0");
    h.update(n.cycle_valid_until.to_string().as_bytes());
    h.update(b"\0");
    h.update(n.kind.code().as_bytes());
    let digest = h.finalize();
    format!("autosign-{}", hex::encode(&digest[..16]))
}

/// The recipient as logs may show it: `138****8000`, `z***@example.com`.
pub fn masked_recipient(n: &ClaimedNotice) -> String {
    match n.channel {
        Channel::Sms => Phone::parse(&n.recipient)
            .map(|p| p.masked())
            .unwrap_or_else(|_| "***".into()),
        Channel::Email | Channel::None => Email::parse(&n.recipient)
            .map(|e| e.masked())
            .unwrap_or_else(|_| "***".into()),
    }
}

/// Error text from a gateway or relay, made fit for logs and `last_error`:
/// the recipient masked wherever it is echoed back (`550 <zhang@…>: no
/// such user`), so is any mobile or ID number in any form (`+86-155-…`,
/// `155 4937 8348`), one line, no control characters, at most 300
/// characters. The channel cuts its credentials out too
/// ([`DeliveryError::redacted`]).
pub fn scrub(n: &ClaimedNotice, text: &str) -> String {
    let mut s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // Numbers first: the recipient inside a longer form (`86…`) goes whole.
    s = mask_numbers_in_text(&s);
    if !n.recipient.is_empty() {
        s = s.replace(&n.recipient, &masked_recipient(n));
    }
    s = escape_controls(&s).into_owned();
    s = mask_echoed_text(&s, &n.message);
    if s.chars().count() > 300 {
        s = s.chars().take(297).collect::<String>() + "...";
    }
    s
}

/// A gateway or relay that echoes the notice back ("message rejected:
/// 【上海市居住证】张三您好…") would put the holder's name into
/// `last_error` and the logs. Every run of two or more non-ASCII
/// characters of `text` that also occurs in the notice's `message` is
/// replaced by `…`: the holder's name never comes from anywhere else.
fn mask_echoed_text(text: &str, message: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= 2 && message.contains(run.as_str()) {
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii() {
            flush(&mut run, &mut out);
            out.push(c);
        } else {
            run.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
pub(crate) fn sample_notice(channel: Channel, recipient: &str) -> ClaimedNotice {
    ClaimedNotice {
        notification_id: 7,
        permit_no: "SH0000000001".into(),
        cycle_valid_until: chrono::NaiveDate::from_ymd_opt(2026, 12, 1).expect("date"),
        kind: crate::domain::EventKind::AutoSigned,
        channel,
        recipient: recipient.into(),
        message: "【上海市居住证】张三您好：您的居住证已自动签注。".into(),
        attempt: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_is_stable_per_notice_and_differs_between_notices() {
        let a = sample_notice(Channel::Sms, "13800138000");
        let mut again = a.clone();
        again.attempt = 3;
        again.notification_id = 99;
        assert_eq!(idempotency_key(&a), idempotency_key(&again));
        let mut other = a.clone();
        other.kind = crate::domain::EventKind::VisitCenter;
        assert_ne!(idempotency_key(&a), idempotency_key(&other));
        assert!(idempotency_key(&a).starts_with("autosign-"));
        assert_eq!(idempotency_key(&a).len(), "autosign-".len() + 32);
        assert!(!idempotency_key(&a).contains("SH000"));
    }

    #[test]
    fn scrub_masks_the_recipient_and_folds_lines() {
        let n = sample_notice(Channel::Email, "zhang.san@example.com");
        let s = scrub(
            &n,
            "550 5.1.1 <zhang.san@example.com>:\r\n Recipient address rejected",
        );
        assert_eq!(
            s,
            "550 5.1.1 <z***@example.com>: Recipient address rejected"
        );
        let n = sample_notice(Channel::Sms, "13800138000");
        assert_eq!(scrub(&n, "bad phone 13800138000"), "bad phone 138****8000");
        assert!(scrub(&n, &"x".repeat(1000)).chars().count() <= 300);
        // An echoed message loses the holder's name (personal data);
        // the gateway's own words stay.
        let s = scrub(
            &n,
            "rejected 内容违规: 【上海市居住证】张三您好：您的居住证已自动签注。",
        );
        assert!(!s.contains("张三"), "{s}");
        assert!(s.contains("内容违规"), "{s}");
        assert_eq!(s, "rejected 内容违规: …");
    }

    #[test]
    fn scrub_masks_the_recipient_in_other_forms_and_secrets_are_cut_out() {
        let n = sample_notice(Channel::Sms, "15549378348");
        let s = scrub(&n, "blocked +86-155-4937-8348 and 155 4937 8348\x1b[2J");
        assert_eq!(s, "blocked 155****8348 and 155****8348\\u{1b}[2J");
        let secrets = Secrets::new(&["Bearer s3cr3t-token-42"]);
        let e =
            DeliveryError::Transient("bad token s3cr3t-token-42 (Bearer s3cr3t-token-42)".into())
                .redacted(&secrets);
        assert_eq!(e.message(), "bad token *** (***)");
        assert_eq!(Secrets::new(&[""]).redact("x"), "x");
    }
}
