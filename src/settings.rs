//! Typed settings: the bundled `config/autosign.toml` as the base layer, the
//! operator's file over it, then `AUTOSIGN_*` environment variables.
//!
//! Every key exists in the bundled file, so an environment value is parsed
//! with the type the bundled file gives that key, and an unknown key — in a
//! file or in the environment — fails at start-up naming the key (exit 2).
//!
//! Each value is converted once, when the settings load, into the type the
//! code uses (a time zone, a cron expression, a time of day, a URL, a
//! mailbox, a log filter); a value that does not convert is an error naming
//! its key. Nothing downstream parses a setting again or falls back to a
//! default on its own.

use std::path::{Path, PathBuf};

use chrono::NaiveTime;
use serde::Deserialize;

use crate::error::Error;
use crate::schedule::{CronExpr, Schedule};

/// The documented default configuration, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/autosign.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database_url: String,
    pub data_dir: PathBuf,
    #[serde(deserialize_with = "de::tz")]
    pub timezone: chrono_tz::Tz,
    pub rules: Rules,
    pub import: ImportSettings,
    pub run: RunSettings,
    pub feeds: FeedsSettings,
    pub inbox: InboxSettings,
    pub notices: NoticeSettings,
    pub delivery: DeliverySettings,
    pub sms: SmsSettings,
    pub email: EmailSettings,
    pub daemon: DaemonSettings,
    pub retention: RetentionSettings,
    pub brake: BrakeSettings,
    pub report: ReportSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LapsePolicy {
    Cancel,
    Suspend,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub window_days: u32,
    pub decision_deadline_days: u32,
    pub si_max_lag_months: u32,
    pub grace_days: u32,
    pub lapse_policy: LapsePolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSettings {
    pub max_reject_ratio: f64,
    pub batch_rows: usize,
}

/// The nightly run: its write pass and the C17 date guard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// Permits per page of the write pass: each page commits on its own.
    pub page_permits: u32,
    /// C17: days after today (in `timezone`) that `run --as-of` may name
    /// without `--allow-future`.
    pub future_allowance_days: u32,
}

/// Per feed: extra header names for its columns (docs/rules.md, "Header
/// aliases"), on top of the
/// built-in Chinese ones ([`crate::domain::Feed::builtin_aliases`]), and
/// whether its files are snapshots or deltas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedsSettings {
    pub permits: FeedHeaderSettings,
    pub residence: FeedHeaderSettings,
    pub social_insurance: FeedHeaderSettings,
    pub civil_status: FeedHeaderSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedHeaderSettings {
    /// Recorded with each import: the brake's row-drop check compares
    /// snapshot imports only ([`crate::domain::Delivery`]).
    pub delivery: crate::domain::Delivery,
    /// Column name → further header names accepted for it.
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSettings {
    pub dir: String,
    pub permits: String,
    pub residence: String,
    pub social_insurance: String,
    pub civil_status: String,
    pub encoding: crate::domain::Encoding,
    pub rejects_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeSettings {
    pub service_centers: PathBuf,
    pub signature: String,
    pub auto_signed: String,
    pub visit_center: String,
    pub suspended: String,
    pub cancelled: String,
    pub materials: String,
    pub materials_address: String,
}

/// The delivery step (`autosign deliver` and the daemon's worker): retry
/// policy, quiet hours, batching and pacing, common to both channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub max_attempts: u32,
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
    pub backoff_jitter: f64,
    #[serde(deserialize_with = "de::time_of_day")]
    pub quiet_hours_start: NaiveTime,
    #[serde(deserialize_with = "de::time_of_day")]
    pub quiet_hours_end: NaiveTime,
    pub batch_size: u32,
    pub lease_secs: u64,
    pub sms_per_second: f64,
    pub email_per_second: f64,
    pub breaker_failures: u32,
    pub poll_secs: u64,
}

/// The SMS channel: an HTTP gateway (JSON POST). An empty `url` means the
/// channel is not configured.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// The gateway; `None` (an empty `url`): the channel is not configured.
    #[serde(deserialize_with = "de::opt_url")]
    pub url: Option<reqwest::Url>,
    pub auth_header: String,
    pub auth_token: String,
    pub timeout_secs: u64,
    pub concurrency: u32,
    pub ca_file: String,
    /// Whether an `http://` URL to a host that is not loopback is allowed.
    pub allow_insecure: bool,
}

impl std::fmt::Debug for SmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in logs or error output.
        f.debug_struct("SmsSettings")
            .field("url", &self.url)
            .field("auth_header", &self.auth_header)
            .field(
                "auth_token",
                &if self.auth_token.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("timeout_secs", &self.timeout_secs)
            .field("concurrency", &self.concurrency)
            .field("ca_file", &self.ca_file)
            .field("allow_insecure", &self.allow_insecure)
            .finish()
    }
}

/// The e-mail channel: SMTP submission. An empty `host` means the channel
/// is not configured.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub tls: EmailTls,
    /// Whether `tls = "none"` to a host that is not loopback is allowed.
    pub allow_insecure: bool,
    pub username: String,
    pub password: String,
    /// The sender; `None` (empty) is refused when `host` is set.
    #[serde(deserialize_with = "de::opt_mailbox")]
    pub from: Option<lettre::message::Mailbox>,
    pub timeout_secs: u64,
    pub concurrency: u32,
    pub pool_idle_secs: u64,
    pub ca_file: String,
    pub subject_auto_signed: String,
    pub subject_visit_center: String,
    pub subject_suspended: String,
    pub subject_cancelled: String,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret: never in logs or error output.
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("allow_insecure", &self.allow_insecure)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("from", &self.from)
            .field("timeout_secs", &self.timeout_secs)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// `autosign daemon`: the nightly schedule, catch-up after downtime,
/// graceful shutdown and the health endpoint (docs/deployment.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    pub schedule: CronExpr,
    pub max_catch_up_days: u32,
    /// The health endpoint; `None` (empty): no endpoint.
    #[serde(deserialize_with = "de::opt_socket_addr")]
    pub health_addr: Option<std::net::SocketAddr>,
    pub shutdown_grace_secs: u64,
    pub ready_max_lag_days: u32,
}

/// `autosign purge`: how long personal data is kept (docs/operations.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub feed_days: u32,
    pub notice_days: u32,
    /// When the daemon purges (cron, as `daemon.schedule`); `None`
    /// (empty): never.
    #[serde(deserialize_with = "de::opt_cron")]
    pub schedule: Option<CronExpr>,
}

/// The safety brake (docs/rules.md, "Safety brake"): when a run is held
/// instead of applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrakeSettings {
    pub enabled: bool,
    pub max_visit_center_share: f64,
    pub min_due: u64,
    pub max_lifecycle_share: f64,
    pub min_lifecycle_count: u64,
    pub max_age_days: FeedAges,
    pub row_drop: RowDrop,
}

/// Per feed: the largest age in days of its newest import (0: not checked).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedAges {
    pub permits: u32,
    pub residence: u32,
    pub social_insurance: u32,
    pub civil_status: u32,
}

impl FeedAges {
    /// The limit for a feed by its stored name (`social-insurance`…).
    pub fn for_feed(&self, feed: &str) -> u32 {
        match feed {
            "permits" => self.permits,
            "residence" => self.residence,
            "social-insurance" => self.social_insurance,
            "civil-status" => self.civil_status,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowDrop {
    pub min_ratio: f64,
    pub min_previous_rows: u64,
}

/// The nightly report (src/report/): its language, and how many nights
/// before the one reported the daemon's report compares it with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    pub language: Language,
    pub nights: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: LogFilter,
}

/// `log.format`: JSON lines, or the human format; `auto`: human on a
/// terminal, JSON otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

/// `log.level`: a tracing filter (`info`, `autosign=debug,sqlx=warn`),
/// checked when the settings load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        tracing_subscriber::EnvFilter::try_new(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a log filter ({e}); e.g. \"info\" or \"autosign=debug,sqlx=warn\""
            ))
        })?;
        Ok(LogFilter(text))
    }
}

/// `report.language`: the nightly report's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Language {
    /// Simplified Chinese, the default.
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

impl Language {
    /// The page's `lang` attribute, as the setting spells it.
    pub fn tag(self) -> &'static str {
        match self {
            Language::ZhCn => "zh-CN",
            Language::En => "en",
        }
    }
}

/// `email.tls`: how the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain text (loopback relays, or with `email.allow_insecure`).
    None,
    /// STARTTLS on a plain connection, required.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl EmailTls {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailTls::None => "none",
            EmailTls::Starttls => "starttls",
            EmailTls::Tls => "tls",
        }
    }
}

impl std::fmt::Display for EmailTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Settings {
    /// Loads the bundled defaults, then `path` (if given), then the
    /// environment. Errors are configuration errors (exit 2).
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AUTOSIGN_"))
            .collect();
        Self::load_with_env(path, &env)
    }

    pub fn load_with_env(path: Option<&Path>, env: &[(String, String)]) -> Result<Self, Error> {
        let mut base: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| Error::Config(format!("bundled configuration is invalid: {e}")))?;
        if let Some(path) = path {
            let text = crate::fsutil::read_regular_text(path, MAX_CONFIG_BYTES)
                .map_err(|why| Error::Config(format!("configuration {}: {why}", path.display())))?;
            let user: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                Error::Config(format!("{}: {}", path.display(), one_line(&e.to_string())))
            })?;
            merge(&mut base, user, "", &path.display().to_string())?;
        }
        for (key, value) in env {
            apply_env(&mut base, key, value)?;
        }
        // The path of a value that does not convert names its key.
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(base))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = one_line(&e.inner().to_string());
                // toml names the key at the end of some messages too.
                let inner = inner
                    .strip_suffix(&format!(" in `{path}`"))
                    .unwrap_or(&inner);
                Error::Config(format!("configuration key {path}: {inner}"))
            })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::Config(format!("configuration key {key}: {why}")));
        if !(0.0..=1.0).contains(&self.import.max_reject_ratio) {
            return bad("import.max_reject_ratio", "must be between 0 and 1");
        }
        if self.import.batch_rows == 0 || self.import.batch_rows > 1_000_000 {
            return bad("import.batch_rows", "must be between 1 and 1000000");
        }
        if self.run.page_permits == 0 || self.run.page_permits > 100_000 {
            return bad("run.page_permits", "must be between 1 and 100000");
        }
        if self.run.future_allowance_days > 7 {
            return bad("run.future_allowance_days", "must be between 0 and 7");
        }
        // Ranges keep every date computed from a setting (valid_until +
        // grace_days, as_of - window_days, now - retention.feed_days…)
        // far inside chrono's range: no setting may panic a run or purge.
        for (key, value, max) in [
            ("rules.window_days", self.rules.window_days, 366),
            ("rules.si_max_lag_months", self.rules.si_max_lag_months, 120),
            ("rules.grace_days", self.rules.grace_days, 3660),
            (
                "brake.max_age_days.permits",
                self.brake.max_age_days.permits,
                3660,
            ),
            (
                "brake.max_age_days.residence",
                self.brake.max_age_days.residence,
                3660,
            ),
            (
                "brake.max_age_days.social_insurance",
                self.brake.max_age_days.social_insurance,
                3660,
            ),
            (
                "brake.max_age_days.civil_status",
                self.brake.max_age_days.civil_status,
                3660,
            ),
        ] {
            if value > max {
                return bad(key, &format!("must be between 0 and {max}"));
            }
        }
        if self.rules.decision_deadline_days > self.rules.window_days {
            return bad(
                "rules.decision_deadline_days",
                "must not exceed rules.window_days",
            );
        }
        self.header_names()?;
        if self.delivery.max_attempts == 0 {
            return bad("delivery.max_attempts", "must be at least 1");
        }
        self.validate_delivery()?;
        self.validate_daemon()?;
        self.validate_retention()?;
        if self.report.nights == 0 || self.report.nights > 366 {
            return bad("report.nights", "must be between 1 and 366");
        }
        let b = &self.brake;
        if !(0.0..=1.0).contains(&b.max_visit_center_share) {
            return bad("brake.max_visit_center_share", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&b.max_lifecycle_share) {
            return bad("brake.max_lifecycle_share", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&b.row_drop.min_ratio) {
            return bad("brake.row_drop.min_ratio", "must be between 0 and 1");
        }
        Ok(())
    }

    /// Retention must not reach into what a run still reads: visits back to
    /// `window_days` before a due `valid_until`, months back to
    /// `si_max_lag_months` before the run's month (counted as 31 days).
    fn validate_retention(&self) -> Result<(), Error> {
        for (key, value) in [
            ("retention.feed_days", self.retention.feed_days),
            ("retention.notice_days", self.retention.notice_days),
        ] {
            if value > MAX_RETENTION_DAYS {
                return Err(Error::Config(format!(
                    "configuration key {key}: must be at most {MAX_RETENTION_DAYS} days"
                )));
            }
        }
        // In range by `validate`: no overflow.
        let horizon = self
            .rules
            .window_days
            .max(31 * (self.rules.si_max_lag_months + 1));
        if self.retention.feed_days <= horizon {
            return Err(Error::Config(format!(
                "configuration key retention.feed_days: must be more than {horizon} days, \
                 the evidence a run still reads (rules.window_days, rules.si_max_lag_months)"
            )));
        }
        if self.retention.notice_days == 0 {
            return Err(Error::Config(
                "configuration key retention.notice_days: must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The daemon keys: a bad cron string or listen address stops autosign
    /// at start-up, not at 02:00.
    fn validate_daemon(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::Config(format!("configuration key {key}: {why}")));
        let d = &self.daemon;
        if d.max_catch_up_days == 0 || d.max_catch_up_days > 366 {
            return bad("daemon.max_catch_up_days", "must be between 1 and 366");
        }
        if d.shutdown_grace_secs > 3600 {
            return bad("daemon.shutdown_grace_secs", "must be at most 3600");
        }
        if d.ready_max_lag_days > 366 {
            return bad("daemon.ready_max_lag_days", "must be at most 366");
        }
        Ok(())
    }

    /// The delivery keys: a bad URL, sender address or TLS mode stops
    /// autosign at start-up, not at 02:00.
    fn validate_delivery(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::Config(format!("configuration key {key}: {why}")));
        let d = &self.delivery;
        if d.batch_size == 0 || d.batch_size > 10_000 {
            return bad("delivery.batch_size", "must be between 1 and 10000");
        }
        if d.backoff_base_secs == 0 || d.backoff_max_secs < d.backoff_base_secs {
            return bad(
                "delivery.backoff_max_secs",
                "backoff_base_secs must be at least 1 and backoff_max_secs at least backoff_base_secs",
            );
        }
        if !(0.0..=0.5).contains(&d.backoff_jitter) {
            return bad("delivery.backoff_jitter", "must be between 0 and 0.5");
        }
        for (key, rate) in [
            ("delivery.sms_per_second", d.sms_per_second),
            ("delivery.email_per_second", d.email_per_second),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return bad(key, "must be 0 (no limit) or a positive number");
            }
        }
        // Upper bounds: a timestamp computed from these must stay in range.
        if d.backoff_max_secs > 7 * 86_400 {
            return bad(
                "delivery.backoff_max_secs",
                "must be at most 604800 (a week)",
            );
        }
        if d.poll_secs == 0 || d.poll_secs > 3600 {
            return bad("delivery.poll_secs", "must be between 1 and 3600");
        }
        if d.lease_secs > 86_400 {
            return bad("delivery.lease_secs", "must be at most 86400 (a day)");
        }
        // A claim must outlive the slowest send, or a second worker could
        // take the notice over while the first is still sending it.
        let slowest = self.sms.timeout_secs.max(self.email.timeout_secs);
        if d.lease_secs < 2 * slowest + 10 {
            return bad(
                "delivery.lease_secs",
                &format!(
                    "must be at least 2 × the longest channel timeout + 10 s ({} s)",
                    2 * slowest + 10
                ),
            );
        }
        let sms = &self.sms;
        if sms.url.is_some() {
            if let Some(why) = self.insecure_sms() {
                if !sms.allow_insecure {
                    return bad(
                        "sms.url",
                        &format!("{why}; use https://, or set sms.allow_insecure = true"),
                    );
                }
            }
            if !sms.auth_token.is_empty() {
                if reqwest::header::HeaderName::from_bytes(sms.auth_header.trim().as_bytes())
                    .is_err()
                {
                    return bad("sms.auth_header", "not a valid HTTP header name");
                }
                if reqwest::header::HeaderValue::from_str(&sms.auth_token).is_err() {
                    return bad("sms.auth_token", "not a valid HTTP header value");
                }
            }
        }
        if sms.timeout_secs == 0 || sms.timeout_secs > 300 {
            return bad("sms.timeout_secs", "must be between 1 and 300");
        }
        if sms.concurrency == 0 || sms.concurrency > 64 {
            return bad("sms.concurrency", "must be between 1 and 64");
        }
        let email = &self.email;
        if !email.host.trim().is_empty() {
            if email.from.is_none() {
                return bad("email.from", "is required when email.host is set");
            }
            if let Some(why) = self.insecure_email() {
                if !email.allow_insecure {
                    return bad(
                        "email.tls",
                        &format!(
                            "{why}; use \"tls\" or \"starttls\", or set email.allow_insecure = true"
                        ),
                    );
                }
            }
            if email.port == 0 {
                return bad(
                    "email.port",
                    "must be a TCP port (e.g. 465 for tls, 587 for starttls)",
                );
            }
        }
        if email.timeout_secs == 0 || email.timeout_secs > 300 {
            return bad("email.timeout_secs", "must be between 1 and 300");
        }
        if email.concurrency == 0 || email.concurrency > 32 {
            return bad("email.concurrency", "must be between 1 and 32");
        }
        if email.pool_idle_secs == 0 || email.pool_idle_secs > 3600 {
            return bad("email.pool_idle_secs", "must be between 1 and 3600");
        }
        Ok(())
    }

    /// Why the SMS gateway's transport is insecure, if it is: `http://` to
    /// a host that is not loopback carries the token, phone numbers and
    /// names in clear (allowed only with `sms.allow_insecure`).
    pub fn insecure_sms(&self) -> Option<String> {
        let url = self.sms.url.as_ref()?;
        let host = url.host_str()?;
        (url.scheme() == "http" && !is_loopback_host(host))
            .then(|| format!("http:// to {host}, not a loopback host, sends the token, phone numbers and names in clear"))
    }

    /// Why the SMTP relay's transport is insecure, if it is: `tls =
    /// "none"` to a host that is not loopback carries the AUTH credentials
    /// and every message in clear (allowed only with
    /// `email.allow_insecure`).
    pub fn insecure_email(&self) -> Option<String> {
        let host = self.email.host.trim();
        (!host.is_empty() && self.email.tls == EmailTls::None && !is_loopback_host(host)).then(|| {
            format!("tls = \"none\" to {host}, not a loopback host, sends the credentials and messages in clear")
        })
    }

    /// The insecure transports in force (each allowed by its
    /// `allow_insecure`, or validation would have refused it), with the
    /// key that allows it.
    pub fn insecure_transports(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(why) = self.insecure_sms() {
            v.push(format!("sms.allow_insecure = true: {why}"));
        }
        if let Some(why) = self.insecure_email() {
            v.push(format!("email.allow_insecure = true: {why}"));
        }
        v
    }

    /// The header names each feed accepts: column names, built-in aliases
    /// and `[feeds.<feed>.aliases]`. An alias for an unknown column or one
    /// claimed by two columns is a configuration error (exit 2).
    pub fn header_names(&self) -> Result<crate::domain::HeaderNames, Error> {
        use crate::domain::Feed;
        let f = &self.feeds;
        crate::domain::HeaderNames::with_aliases([
            (Feed::Permits, &f.permits.aliases),
            (Feed::Residence, &f.residence.aliases),
            (Feed::SocialInsurance, &f.social_insurance.aliases),
            (Feed::CivilStatus, &f.civil_status.aliases),
        ])
        .map_err(|why| Error::Config(format!("configuration key {why}")))
    }

    /// The delivery of `feed` (`[feeds.<feed>] delivery`).
    pub fn delivery(&self, feed: crate::domain::Feed) -> crate::domain::Delivery {
        use crate::domain::Feed;
        let f = &self.feeds;
        match feed {
            Feed::Permits => f.permits.delivery,
            Feed::Residence => f.residence.delivery,
            Feed::SocialInsurance => f.social_insurance.delivery,
            Feed::CivilStatus => f.civil_status.delivery,
        }
    }

    /// The configured zone (`timezone`): business dates, schedules,
    /// quiet hours.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone
    }

    /// `daemon.schedule` in the configured zone.
    pub fn run_schedule(&self) -> Schedule {
        self.daemon.schedule.in_zone(self.timezone)
    }

    /// `retention.schedule` in the configured zone; `None`: the daemon
    /// does not purge.
    pub fn purge_schedule(&self) -> Option<Schedule> {
        self.retention
            .schedule
            .as_ref()
            .map(|c| c.in_zone(self.timezone))
    }

    /// The database URL in force: explicit, else the embedded SQLite file.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.trim().is_empty() {
            format!(
                "sqlite://{}",
                self.data_dir.join("autosign.sqlite").display()
            )
        } else {
            self.database_url.trim().to_string()
        }
    }
}

/// A century: far beyond any retention rule, far inside chrono's range.
const MAX_RETENTION_DAYS: u32 = 36_600;

/// Largest configuration file read: a configuration is a few KiB; a path
/// to a device or a huge file must fail at once, not exhaust memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Whether `host` (a URL's or relay's host) is this machine: traffic to it
/// never crosses a network, so plain text is no exposure.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Overlays `user` on `base`, refusing keys the bundled file does not have.
fn merge(
    base: &mut toml::Table,
    user: toml::Table,
    prefix: &str,
    source: &str,
) -> Result<(), Error> {
    for (key, value) in user {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (None, _) => {
                return Err(Error::Config(format!(
                    "{source}: unknown configuration key {path}"
                )));
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u, &path, source)?,
            (Some(toml::Value::Table(_)), _) => {
                return Err(Error::Config(format!("{source}: {path} must be a table")));
            }
            (Some(slot), value) => {
                if std::mem::discriminant(slot) != std::mem::discriminant(&value)
                    && !matches!(
                        (&*slot, &value),
                        (toml::Value::Float(_), toml::Value::Integer(_))
                    )
                {
                    return Err(Error::Config(format!(
                        "{source}: {path} must be {}, not {}",
                        slot.type_str(),
                        value.type_str()
                    )));
                }
                *slot = match (&*slot, value) {
                    (toml::Value::Float(_), toml::Value::Integer(i)) => {
                        toml::Value::Float(i as f64)
                    }
                    (_, v) => v,
                };
            }
        }
    }
    Ok(())
}

/// `AUTOSIGN_RULES__WINDOW_DAYS=30` sets `rules.window_days`. The value is
/// read with the type the bundled default gives the key.
fn apply_env(base: &mut toml::Table, var: &str, raw: &str) -> Result<(), Error> {
    let Some(rest) = var.strip_prefix("AUTOSIGN_") else {
        return Ok(());
    };
    // Variables that are not settings: the config file's own path (read by
    // the command line) and test hooks.
    if rest == "CONFIG" || rest.starts_with("TEST_") {
        return Ok(());
    }
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let unknown = || {
        Error::Config(format!(
            "environment variable {var}: unknown configuration key {}",
            path.join(".")
        ))
    };
    let (last, parents) = path.split_last().ok_or_else(unknown)?;
    let mut table = base;
    for part in parents {
        table = match table.get_mut(part) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(unknown()),
        };
    }
    let slot = match table.get_mut(last) {
        Some(slot) if !slot.is_table() => slot,
        _ => return Err(unknown()),
    };
    let bad = |ty: &str| {
        Error::Config(format!(
            "environment variable {var}: expected {ty}, got {raw:?}"
        ))
    };
    *slot = match slot {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?)
        }
        // A list of strings (header aliases): comma-separated.
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        ),
        _ => return Err(bad("a value of the bundled type")),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bundled_defaults_load_and_match_the_spec() {
        let s = Settings::load_with_env(None, &[]).expect("defaults load");
        assert_eq!(s.rules.window_days, 30);
        assert_eq!(s.rules.decision_deadline_days, 7);
        assert_eq!(s.rules.si_max_lag_months, 2);
        assert_eq!(s.rules.grace_days, 60);
        assert_eq!(s.rules.lapse_policy, LapsePolicy::Cancel);
        assert_eq!(s.import.max_reject_ratio, 0.05);
        assert_eq!(s.timezone, chrono_tz::Asia::Shanghai);
        assert_eq!(s.daemon.schedule.as_str(), "0 0 2 * * *");
        assert_eq!(s.delivery.quiet_hours_start.to_string(), "21:00:00");
        assert!(s.retention.schedule.is_none());
        assert_eq!(s.log.format, LogFormat::Auto);
        // The brake: 30% VISIT_CENTER, checked from 1,000 due permits.
        assert!(s.brake.enabled);
        assert_eq!(s.brake.max_visit_center_share, 0.30);
        assert_eq!(s.brake.min_due, 1000);
        // A quarter of the live register lapsing at once, from 1,000 steps:
        // above a first night's ~19 % (generate's data).
        assert_eq!(s.brake.max_lifecycle_share, 0.25);
        assert_eq!(s.brake.min_lifecycle_count, 1000);
        assert_eq!(s.brake.max_age_days.for_feed("residence"), 7);
        assert_eq!(s.brake.max_age_days.for_feed("civil-status"), 0);
        assert_eq!(s.brake.row_drop.min_ratio, 0.5);
    }

    #[test]
    fn brake_keys_nest_in_the_environment_and_are_checked() {
        // Each brake check is tuned or turned off per key.
        let s = Settings::load_with_env(
            None,
            &env(&[
                ("AUTOSIGN_BRAKE__MAX_AGE_DAYS__RESIDENCE", "0"),
                ("AUTOSIGN_BRAKE__ROW_DROP__MIN_RATIO", "0"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.brake.max_age_days.residence, 0);
        assert_eq!(s.brake.row_drop.min_ratio, 0.0);
        let err = Settings::load_with_env(
            None,
            &env(&[("AUTOSIGN_BRAKE__MAX_VISIT_CENTER_SHARE", "1.5")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("brake.max_visit_center_share"),
            "{err}"
        );
        let err = Settings::load_with_env(
            None,
            &env(&[("AUTOSIGN_BRAKE__MAX_LIFECYCLE_SHARE", "-0.1")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("brake.max_lifecycle_share"),
            "{err}"
        );
        let s =
            Settings::load_with_env(None, &env(&[("AUTOSIGN_BRAKE__MIN_LIFECYCLE_COUNT", "5")]))
                .expect("loads");
        assert_eq!(s.brake.min_lifecycle_count, 5);
    }

    #[test]
    fn out_of_range_numbers_are_refused_naming_the_key_before_any_arithmetic() {
        for (var, value, key) in [
            (
                "AUTOSIGN_RULES__GRACE_DAYS",
                "4294967295",
                "rules.grace_days",
            ),
            ("AUTOSIGN_RULES__GRACE_DAYS", "3661", "rules.grace_days"),
            (
                "AUTOSIGN_RULES__SI_MAX_LAG_MONTHS",
                "4294967295",
                "rules.si_max_lag_months",
            ),
            (
                "AUTOSIGN_RULES__SI_MAX_LAG_MONTHS",
                "100000",
                "rules.si_max_lag_months",
            ),
            ("AUTOSIGN_RULES__WINDOW_DAYS", "367", "rules.window_days"),
            (
                "AUTOSIGN_RETENTION__FEED_DAYS",
                "4294967295",
                "retention.feed_days",
            ),
            (
                "AUTOSIGN_RETENTION__NOTICE_DAYS",
                "4294967295",
                "retention.notice_days",
            ),
            (
                "AUTOSIGN_BRAKE__MAX_AGE_DAYS__RESIDENCE",
                "4294967295",
                "brake.max_age_days.residence",
            ),
            (
                "AUTOSIGN_DELIVERY__BACKOFF_MAX_SECS",
                "9223372036854775807",
                "delivery.backoff_max_secs",
            ),
        ] {
            let err = Settings::load_with_env(None, &env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        let s = Settings::load_with_env(
            None,
            &env(&[
                ("AUTOSIGN_RULES__GRACE_DAYS", "3660"),
                ("AUTOSIGN_RULES__SI_MAX_LAG_MONTHS", "12"),
                ("AUTOSIGN_RETENTION__FEED_DAYS", "36600"),
            ]),
        );
        assert!(s.is_ok(), "{:?}", s.err());
    }

    #[test]
    fn plain_transports_to_remote_hosts_need_allow_insecure_and_loopback_does_not() {
        let remote_sms = [
            ("AUTOSIGN_SMS__URL", "http://sms.example.com/send"),
            ("AUTOSIGN_SMS__AUTH_TOKEN", "t"),
        ];
        let err = Settings::load_with_env(None, &env(&remote_sms)).unwrap_err();
        assert!(
            err.to_string().contains("sms.url") && err.to_string().contains("allow_insecure"),
            "{err}"
        );
        let mut allowed = remote_sms.to_vec();
        allowed.push(("AUTOSIGN_SMS__ALLOW_INSECURE", "true"));
        let s = Settings::load_with_env(None, &env(&allowed)).expect("allowed");
        assert_eq!(s.insecure_transports().len(), 1);
        for host in ["localhost", "127.0.0.1", "127.8.9.10", "[::1]"] {
            let url = format!("http://{host}:8080/send");
            let s = Settings::load_with_env(None, &env(&[("AUTOSIGN_SMS__URL", &url)]))
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(s.insecure_transports().is_empty(), "{host}");
        }
        let remote_mail = [
            ("AUTOSIGN_EMAIL__HOST", "smtp.example.com"),
            ("AUTOSIGN_EMAIL__TLS", "none"),
            ("AUTOSIGN_EMAIL__FROM", "a@example.com"),
        ];
        let err = Settings::load_with_env(None, &env(&remote_mail)).unwrap_err();
        assert!(err.to_string().contains("email.tls"), "{err}");
        let ok = Settings::load_with_env(
            None,
            &env(&[
                ("AUTOSIGN_EMAIL__HOST", "smtp.example.com"),
                ("AUTOSIGN_EMAIL__TLS", "starttls"),
                ("AUTOSIGN_EMAIL__FROM", "a@example.com"),
            ]),
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn environment_overrides_with_the_bundled_type() {
        let s = Settings::load_with_env(
            None,
            &env(&[
                ("AUTOSIGN_RULES__WINDOW_DAYS", "20"),
                ("AUTOSIGN_DATABASE_URL", "sqlite://x.db"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.rules.window_days, 20);
        assert_eq!(s.effective_database_url(), "sqlite://x.db");
    }

    #[test]
    fn unknown_environment_key_is_a_config_error_naming_it() {
        let err =
            Settings::load_with_env(None, &env(&[("AUTOSIGN_RULES__WINDOW", "20")])).unwrap_err();
        assert!(err.to_string().contains("rules.window"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn the_config_path_variable_is_not_a_setting() {
        let s = Settings::load_with_env(
            None,
            &env(&[("AUTOSIGN_CONFIG", "/etc/autosign/autosign.toml")]),
        );
        assert!(s.is_ok(), "{:?}", s.err());
    }

    #[test]
    fn badly_typed_environment_value_is_refused() {
        let err = Settings::load_with_env(None, &env(&[("AUTOSIGN_RULES__GRACE_DAYS", "sixty")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("AUTOSIGN_RULES__GRACE_DAYS"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_key_and_bad_value_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[rules]\nwindow_dayz = 3\n").expect("write");
        let err = Settings::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("rules.window_dayz"), "{err}");
        std::fs::write(&path, "timezone = \"Mars/Olympus\"\n").expect("write");
        let err = Settings::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("timezone"), "{err}");
        std::fs::write(&path, "[import]\nmax_reject_ratio = \"high\"\n").expect("write");
        let err = Settings::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("import.max_reject_ratio"), "{err}");
    }

    #[test]
    fn bad_daemon_schedule_and_address_are_refused_naming_the_key() {
        for (var, value, key) in [
            ("AUTOSIGN_DAEMON__SCHEDULE", "0 2 * * *", "daemon.schedule"),
            (
                "AUTOSIGN_DAEMON__SCHEDULE",
                "every night",
                "daemon.schedule",
            ),
            (
                "AUTOSIGN_DAEMON__HEALTH_ADDR",
                "localhost",
                "daemon.health_addr",
            ),
            (
                "AUTOSIGN_DAEMON__MAX_CATCH_UP_DAYS",
                "0",
                "daemon.max_catch_up_days",
            ),
            // Each value that converts to a type names its key when it
            // does not, rather than falling back to a default.
            (
                "AUTOSIGN_RETENTION__SCHEDULE",
                "nightly",
                "retention.schedule",
            ),
            (
                "AUTOSIGN_DELIVERY__QUIET_HOURS_END",
                "8am",
                "delivery.quiet_hours_end",
            ),
            ("AUTOSIGN_LOG__LEVEL", "loud[", "log.level"),
            ("AUTOSIGN_LOG__FORMAT", "xml", "log.format"),
            ("AUTOSIGN_SMS__URL", "not a url", "sms.url"),
            ("AUTOSIGN_SMS__URL", "ftp://gw.example", "sms.url"),
            ("AUTOSIGN_EMAIL__FROM", "nobody", "email.from"),
            ("AUTOSIGN_EMAIL__TLS", "ssl", "email.tls"),
            ("AUTOSIGN_TIMEZONE", "Asia/Beijing", "timezone"),
            ("AUTOSIGN_REPORT__LANGUAGE", "zh-cn", "report.language"),
            ("AUTOSIGN_REPORT__LANGUAGE", "fr", "report.language"),
        ] {
            let err = Settings::load_with_env(None, &env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{value}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        let s = Settings::load_with_env(
            None,
            &env(&[
                ("AUTOSIGN_DAEMON__SCHEDULE", "*/5 * * * * *"),
                ("AUTOSIGN_DAEMON__HEALTH_ADDR", ""),
            ]),
        )
        .expect("a per-5-second schedule and no endpoint are fine");
        assert_eq!(s.daemon.shutdown_grace_secs, 30);
    }

    #[test]
    fn header_aliases_load_from_file_and_environment_and_bad_ones_exit_2() {
        use crate::domain::Feed;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[feeds.residence.aliases]\nvisited_on = [\"走访时间\"]\n",
        )
        .expect("write");
        let s = Settings::load_with_env(
            Some(&path),
            &env(&[(
                "AUTOSIGN_FEEDS__CIVIL_STATUS__ALIASES__AS_OF",
                "登记日期, 更新日期",
            )]),
        )
        .expect("loads");
        let names = s.header_names().expect("valid");
        assert!(names.of(Feed::Residence)[1].contains(&"走访时间".to_string()));
        assert!(names.of(Feed::CivilStatus)[2].contains(&"更新日期".to_string()));

        std::fs::write(
            &path,
            "[feeds.residence.aliases]\nvisit_date = [\"走访时间\"]\n",
        )
        .expect("write");
        let err = Settings::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("feeds.residence.aliases.visit_date"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);

        std::fs::write(
            &path,
            "[feeds.permits.aliases]\nphone = [\"电话\"]\nemail = [\"电话\"]\n",
        )
        .expect("write");
        let err = Settings::load_with_env(Some(&path), &[]).unwrap_err();
        assert!(
            err.to_string().contains("feeds.permits.aliases.phone")
                && err.to_string().contains("already names column email"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}

/// Conversions of single values as the settings load; the error text
/// follows "configuration key <key>: ".
mod de {
    use chrono::NaiveTime;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    use crate::schedule::CronExpr;

    pub fn tz<'de, D: Deserializer<'de>>(d: D) -> Result<chrono_tz::Tz, D::Error> {
        let text = String::deserialize(d)?;
        text.trim().parse().map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is not an IANA time zone name (e.g. Asia/Shanghai)"
            ))
        })
    }

    pub fn time_of_day<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        NaiveTime::parse_from_str(text.trim(), "%H:%M")
            .map_err(|_| D::Error::custom(format!("{text:?} must be a time of day HH:MM")))
    }

    /// An optional value: empty (after trimming) is `None`, anything else
    /// must convert with `parse`.
    fn optional<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "" => Ok(None),
            t => parse(t).map(Some).map_err(D::Error::custom),
        }
    }

    pub fn opt_cron<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CronExpr>, D::Error> {
        optional(d, CronExpr::parse)
    }

    pub fn opt_socket_addr<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::net::SocketAddr>, D::Error> {
        optional(d, |t| {
            t.parse().map_err(|_| {
                format!("{t:?} must be IP:PORT (e.g. 127.0.0.1:9187), or empty for no endpoint")
            })
        })
    }

    pub fn opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<reqwest::Url>, D::Error> {
        optional(d, |t| match reqwest::Url::parse(t) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
            Ok(_) => Err("must be an http:// or https:// URL with a host".to_string()),
            Err(e) => Err(format!("not a URL: {e}")),
        })
    }

    pub fn opt_mailbox<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<lettre::message::Mailbox>, D::Error> {
        optional(d, |t| {
            t.parse()
                .map_err(|e| format!("not an e-mail address ({e})"))
        })
    }
}
