//! Delivery (R8; docs/rules.md, "Delivery"): `autosign deliver` against real servers — an
//! SMTP server process (aiosmtpd, tests/support/smtp_server.py) and an HTTP
//! SMS gateway in this test process that can be told to fail — with the
//! clock injected through `deliver --now`, so quiet hours and backoff are
//! tested without sleeping.
//!
//! Each body runs on SQLite and on PostgreSQL (`dbtest!`), except the tests
//! of channel configuration and TLS, which do not depend on the database.
//!
//! Outside CI a missing aiosmtpd skips the SMTP tests with a notice on
//! stderr; in CI (`CI` set) it fails them — .ci/run installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Days, TimeZone, Utc};

use crate::helpers::*;

// ---------------------------------------------------------------- world

const AS_OF: &str = "2026-11-27";

/// A fresh world with fast, deterministic delivery settings; `None` when
/// PostgreSQL is unreachable outside CI.
pub(crate) fn world(backend: Backend) -> Option<Env> {
    let mut env = Env::try_new(backend)?;
    fast_delivery(&mut env);
    Some(env)
}

/// Delivery without pacing (the tests count sends, not time), straight to
/// the local servers whatever proxy the machine has.
pub(crate) fn fast_delivery(env: &mut Env) {
    env.set("NO_PROXY", "127.0.0.1,localhost");
    env.set("AUTOSIGN_DELIVERY__SMS_PER_SECOND", "0");
    env.set("AUTOSIGN_DELIVERY__EMAIL_PER_SECOND", "0");
    env.set("AUTOSIGN_LOG__LEVEL", "warn");
}

fn sqlite_world() -> Env {
    world(Backend::Sqlite).expect("SQLite is always available")
}

/// Permits due on 2026-11-30 with no evidence: on AS_OF (3 days before,
/// past the decision deadline) each gets VISIT_CENTER and one notice.
/// `(permit_no, phone, email)`.
pub(crate) fn permits(env: &Env, rows: &[(&str, &str, &str)]) {
    let mut csv = String::from(PERMITS_HEADER);
    csv.push('\n');
    for (i, (no, phone, email)) in rows.iter().enumerate() {
        csv.push_str(&format!(
            "{no},{},王小明,{phone},{email},310115,310115004,上海市浦东新区潍坊路1号,2026-11-30,,91310115MA1H7GPJ49,paying,single\n",
            id("19900101", i as u32 + 1)
        ));
    }
    let f = env.write("in/permits.csv", csv);
    env.import("permits", &f);
    let out = env.ok(&["run", "--as-of", AS_OF]);
    assert!(out.contains("VISIT_CENTER"), "{out}");
}

/// 10:00 in Shanghai tomorrow: after every notice's creation (the run
/// stamps them with the real clock), in the daytime.
pub(crate) fn t0() -> DateTime<Utc> {
    let tz = chrono_tz::Asia::Shanghai;
    let tomorrow = (Utc::now().with_timezone(&tz) + Days::days(1)).date_naive();
    tz.from_local_datetime(&tomorrow.and_hms_opt(10, 0, 0).expect("time"))
        .single()
        .expect("no DST in Shanghai")
        .with_timezone(&Utc)
}

pub(crate) fn at(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::Asia::Shanghai).to_rfc3339()
}

/// `autosign deliver` with the clock reading `t`.
fn deliver(env: &Env, t: DateTime<Utc>) -> Out {
    env.cmd(&["deliver", "--now", &at(t)])
}

fn deliver_ok(env: &Env, t: DateTime<Utc>) -> String {
    let o = deliver(env, t);
    assert_eq!(o.code, 0, "deliver failed:\n{}\n{}", o.stdout, o.stderr);
    o.stdout
}

/// The summary row of a channel: (sent, retry, dead, released, waiting).
fn counts(summary: &str, channel: &str) -> [u64; 5] {
    let line = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(channel))
        .unwrap_or_else(|| panic!("no {channel} row in:\n{summary}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("number"))
        .collect();
    [v[0], v[1], v[2], v[3], v[4]]
}

/// `export notifications`, as one map per row keyed by column.
fn notices(env: &Env) -> Vec<BTreeMap<String, String>> {
    let text = env.notifications(AS_OF, AS_OF);
    let rows = rows(&text);
    let header = rows[0].clone();
    rows[1..]
        .iter()
        .map(|r| header.iter().cloned().zip(r.iter().cloned()).collect())
        .collect()
}

fn notice<'a>(
    all: &'a [BTreeMap<String, String>],
    permit_no: &str,
) -> &'a BTreeMap<String, String> {
    all.iter()
        .find(|n| n["permit_no"] == permit_no)
        .unwrap_or_else(|| panic!("no notice for {permit_no}"))
}

pub(crate) fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

// ------------------------------------------------------ the SMS gateway

/// One request the gateway received.
#[derive(Debug, Clone)]
pub(crate) struct GwRequest {
    pub(crate) phone: String,
    text: String,
    pub(crate) key: String,
    header_key: String,
    auth: String,
    content_type: String,
}

#[derive(Default)]
struct GwState {
    requests: Vec<GwRequest>,
    /// Answer the next N requests with 500.
    fail_500: usize,
    /// Answer requests for these phones with 400 (echoing the phone).
    reject: BTreeSet<String>,
    /// Never answer requests for these phones (hold the connection).
    hang: BTreeSet<String>,
}

/// A real HTTP server on 127.0.0.1 playing an SMS gateway, one thread per
/// connection.
pub(crate) struct Gateway {
    port: u16,
    state: Arc<Mutex<GwState>>,
    stop: Arc<AtomicBool>,
}

impl Gateway {
    pub(crate) fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(GwState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Gateway { port, state, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/sms", self.port)
    }

    pub(crate) fn configure(&self, env: &mut Env) {
        env.set("AUTOSIGN_SMS__URL", &self.url());
        env.set("AUTOSIGN_SMS__AUTH_TOKEN", "Bearer test-token");
    }

    pub(crate) fn requests(&self) -> Vec<GwRequest> {
        self.state.lock().expect("lock").requests.clone()
    }

    fn with(&self, f: impl FnOnce(&mut GwState)) {
        f(&mut self.state.lock().expect("lock"));
    }

    /// Answers the next `n` requests with HTTP 500 (an outage; 0 ends it).
    pub(crate) fn fail_next(&self, n: usize) {
        self.with(|s| s.fail_500 = n);
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<GwState>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut head = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let header = |name: &str| {
        head.iter()
            .find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    let field = |k: &str| json[k].as_str().unwrap_or_default().to_string();
    let req = GwRequest {
        phone: field("phone"),
        text: field("text"),
        key: field("idempotency_key"),
        header_key: header("idempotency-key"),
        auth: header("authorization"),
        content_type: header("content-type"),
    };
    let (status, answer) = {
        let mut st = state.lock().expect("lock");
        st.requests.push(req.clone());
        let n = st.requests.len();
        if st.hang.contains(&req.phone) {
            (0, String::new())
        } else if st.reject.contains(&req.phone) {
            (400, format!(r#"{{"error":"invalid phone {}"}}"#, req.phone))
        } else if st.fail_500 > 0 {
            st.fail_500 -= 1;
            (500, r#"{"error":"internal"}"#.to_string())
        } else {
            (200, format!(r#"{{"message_id":"gw-{n}"}}"#))
        }
    };
    if status == 0 {
        // Hang past the client's timeout, then drop the connection.
        std::thread::sleep(Duration::from_secs(3));
        return;
    }
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Internal Server Error",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

// ----------------------------------------------------- the SMTP server

/// aiosmtpd in a child process; killed on drop.
pub(crate) struct Smtp {
    child: Child,
    _stdin: ChildStdin,
    out: PathBuf,
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Smtp {
    /// Starts the server on `port`; `None` (test skipped, with a notice)
    /// when aiosmtpd is missing outside CI. In CI it panics instead.
    pub(crate) fn start(env: &Env, port: u16, extra: &[&str]) -> Option<Smtp> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let out = env.path(&format!("smtp-{port}.jsonl"));
        let python = std::env::var("AUTOSIGN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let spawned = Command::new(&python)
            .arg(&script)
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => return missing(&format!("cannot start {python}: {e}")),
        };
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        if !ready.starts_with("READY") {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            if status.code() == Some(3) {
                return missing(err.trim());
            }
            panic!("SMTP test server did not start ({status}): {err}");
        }
        Some(Smtp {
            child,
            _stdin: stdin,
            out,
        })
    }

    pub(crate) fn configure(port: u16, env: &mut Env) {
        env.set("AUTOSIGN_EMAIL__HOST", "127.0.0.1");
        env.set("AUTOSIGN_EMAIL__PORT", &port.to_string());
        env.set("AUTOSIGN_EMAIL__TLS", "none");
        env.set(
            "AUTOSIGN_EMAIL__FROM",
            "上海市居住证 <noreply@example.gov.cn>",
        );
        env.set("AUTOSIGN_EMAIL__TIMEOUT_SECS", "10");
    }

    /// Every message the server accepted, as its JSON record.
    pub(crate) fn messages(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing(why: &str) -> Option<Smtp> {
    if in_ci() {
        panic!("the SMTP test server cannot run in CI: {why} (.ci/run must install aiosmtpd)");
    }
    skipped(&format!(
        "needs aiosmtpd for its SMTP server: {why} (python3 -m pip install aiosmtpd)"
    ));
    None
}

// ---------------------------------------------------------------- tests

dbtest!(
    the_sample_run_is_delivered_exactly_once_over_sms_and_email,
    |mut env| {
        fast_delivery(&mut env);
        let port = free_port();
        let Some(smtp) = Smtp::start(&env, port, &["--auth", "autosign:s3cret"]) else {
            return;
        };
        let gw = Gateway::start();
        gw.configure(&mut env);
        Smtp::configure(port, &mut env);
        env.set("AUTOSIGN_EMAIL__USERNAME", "autosign");
        env.set("AUTOSIGN_EMAIL__PASSWORD", "s3cret");
        let inbox = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample_data");
        env.set("AUTOSIGN_INBOX__DIR", &inbox.display().to_string());
        let run = env.ok(&["run", "--as-of", AS_OF]);
        assert!(
            run.contains("outbox: queued 91, failed 0, sent 0, dead 0, undeliverable 6"),
            "{run}"
        );

        let before = notices(&env);
        let summary = deliver_ok(&env, t0());
        assert_eq!(counts(&summary, "sms"), [81, 0, 0, 0, 0], "{summary}");
        assert_eq!(counts(&summary, "email"), [10, 0, 0, 0, 0], "{summary}");
        assert!(
            summary.contains("outbox: queued 0, failed 0, sent 91, dead 0, undeliverable 6"),
            "{summary}"
        );

        // SMS: one request per notice, with its phone, text and key.
        let reqs = gw.requests();
        assert_eq!(reqs.len(), 81);
        let keys: BTreeSet<&str> = reqs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), 81, "one idempotency key per notice");
        let expected: BTreeSet<(String, String)> = before
            .iter()
            .filter(|n| n["channel"] == "sms")
            .map(|n| (n["message"].clone(), n["permit_no"].clone()))
            .collect();
        let got: BTreeSet<(String, String)> = reqs
            .iter()
            .map(|r| {
                let permit = r
                    .text
                    .split('（')
                    .nth(1)
                    .and_then(|s| s.split('）').next())
                    .unwrap_or("");
                (r.text.clone(), permit.to_string())
            })
            .collect();
        assert_eq!(got, expected, "each SMS carries its notice's text");
        for r in &reqs {
            assert_eq!(
                r.key, r.header_key,
                "key in body and Idempotency-Key header"
            );
            assert_eq!(r.auth, "Bearer test-token");
            assert!(
                r.content_type.starts_with("application/json"),
                "{}",
                r.content_type
            );
            assert_eq!(r.phone.len(), 11, "{}", r.phone);
        }

        // E-mail: one message per notice, read back as a mail client would.
        let mails = smtp.messages();
        assert_eq!(mails.len(), 10);
        let want: BTreeMap<String, &BTreeMap<String, String>> = before
            .iter()
            .filter(|n| n["channel"] == "email")
            .map(|n| (n["message"].clone(), n))
            .collect();
        let mut seen = BTreeSet::new();
        for m in &mails {
            let body = m["body"].as_str().expect("body").trim_end();
            let n = want
                .get(body)
                .unwrap_or_else(|| panic!("unexpected body {body:?}"));
            assert!(seen.insert(body.to_string()), "sent twice: {body}");
            let subject = m["subject"].as_str().expect("subject");
            let expected_subject = match n["kind"].as_str() {
                "AUTO_SIGNED" => "【上海市居住证】自动签注已通过",
                "VISIT_CENTER" => "【上海市居住证】未能自动签注，请到社区事务受理服务中心办理",
                "SUSPENDED" => "【上海市居住证】居住证使用功能已中止",
                _ => "【上海市居住证】居住证已注销",
            };
            assert_eq!(subject, expected_subject);
            assert_eq!(m["charset"], "utf-8");
            assert_eq!(m["content_type"], "text/plain");
            assert_eq!(
                m["raw_is_ascii"], true,
                "7-bit on the wire (base64 body, RFC 2047 subject)"
            );
            assert_eq!(m["login"], "autosign", "SMTP AUTH with the configured user");
            assert_eq!(m["mail_from"], "noreply@example.gov.cn");
            assert_eq!(m["from"], "上海市居住证 <noreply@example.gov.cn>");
            assert_eq!(m["auto_submitted"], "auto-generated");
            assert!(
                m["message_id"]
                    .as_str()
                    .expect("id")
                    .starts_with("<autosign-"),
                "{}",
                m["message_id"]
            );
        }

        // The outbox records it: sent once, with time and reference.
        let after = notices(&env);
        for n in &after {
            match n["channel"].as_str() {
                "none" => {
                    assert_eq!(n["status"], "undeliverable");
                    assert_eq!(n["attempts"], "0");
                }
                _ => {
                    assert_eq!(n["status"], "sent", "{n:?}");
                    assert_eq!(n["attempts"], "1");
                    let sent = DateTime::parse_from_rfc3339(&n["sent_at"]).expect("sent_at");
                    assert!(n["sent_at"].ends_with("+08:00"), "{n:?}");
                    let lag = sent.with_timezone(&Utc) - t0();
                    assert!(
                        (0..60).contains(&lag.num_seconds()),
                        "sent_at {}",
                        n["sent_at"]
                    );
                    assert!(!n["provider_ref"].is_empty(), "{n:?}");
                    assert_eq!(n["last_error"], "");
                    assert_eq!(n["next_attempt_at"], "");
                }
            }
        }
        let sms_ref = &after.iter().find(|n| n["channel"] == "sms").expect("sms")["provider_ref"];
        assert!(sms_ref.starts_with("gw-"), "{sms_ref}");
        let mail_ref = &after
            .iter()
            .find(|n| n["channel"] == "email")
            .expect("email")["provider_ref"];
        assert!(mail_ref.starts_with("250 "), "{mail_ref}");

        // Again, a day later: nothing is due, nothing is sent.
        let again = deliver_ok(&env, t0() + Days::days(1));
        assert_eq!(counts(&again, "sms"), [0; 5], "{again}");
        assert_eq!(counts(&again, "email"), [0; 5], "{again}");
        assert_eq!(gw.requests().len(), 81);
        assert_eq!(smtp.messages().len(), 10);
    }
);

dbtest!(
    transient_gateway_failures_are_retried_with_backoff_then_sent_once,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        permits(&env, &[("SH1", "13900000001", "")]);
        gw.with(|s| s.fail_500 = 2);

        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "sms"), [0, 1, 0, 0, 0], "{s}");
        let n = notices(&env);
        let n1 = notice(&n, "SH1");
        assert_eq!(
            (n1["status"].as_str(), n1["attempts"].as_str()),
            ("failed", "1")
        );
        assert!(
            n1["last_error"].contains("attempt 1: SMS gateway answered HTTP 500"),
            "{n1:?}"
        );
        // Backoff: 60 s ± 20 % after the attempt.
        let next = DateTime::parse_from_rfc3339(&n1["next_attempt_at"]).expect("rfc3339");
        let wait = next.with_timezone(&Utc) - t0();
        assert!((45..=80).contains(&wait.num_seconds()), "retry in {wait}");

        // Not due yet 30 s later: nothing sent.
        let s = deliver_ok(&env, t0() + Days::seconds(30));
        assert_eq!(counts(&s, "sms"), [0; 5], "{s}");
        assert_eq!(gw.requests().len(), 1);

        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "sms"), [0, 1, 0, 0, 0], "{s}");
        let s = deliver_ok(&env, t0() + Days::hours(2));
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");

        let reqs = gw.requests();
        assert_eq!(reqs.len(), 3, "two failures, one success");
        assert!(
            reqs.iter().all(|r| r.key == reqs[0].key),
            "the same key on every attempt"
        );
        let n = notices(&env);
        let n1 = notice(&n, "SH1");
        assert_eq!(
            (n1["status"].as_str(), n1["attempts"].as_str()),
            ("sent", "3")
        );
        assert!(
            n1["last_error"].contains("attempt 2: SMS gateway answered HTTP 500"),
            "{n1:?}"
        );
        assert_eq!(n1["provider_ref"], "gw-3");
        assert!(!n1["sent_at"].is_empty());

        // R10: the clerk sees it.
        let status = env.ok(&["status", "SH1"]);
        assert!(status.contains("sent (attempts 3"), "{status}");
        assert!(status.contains(", sent "), "{status}");
        assert!(status.contains("last error: attempt 2"), "{status}");
    }
);

dbtest!(
    a_notice_is_dead_after_max_attempts_of_transient_failure,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        env.set("AUTOSIGN_DELIVERY__MAX_ATTEMPTS", "2");
        permits(&env, &[("SH1", "13900000001", "")]);
        gw.with(|s| s.fail_500 = 100);
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "sms"), [0, 1, 0, 0, 0], "{s}");
        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "sms"), [0, 0, 1, 0, 0], "{s}");
        assert!(s.contains("dead 1"), "{s}");
        let n = notices(&env);
        let n1 = notice(&n, "SH1");
        assert_eq!(
            (n1["status"].as_str(), n1["attempts"].as_str()),
            ("dead", "2")
        );
        assert!(n1["last_error"].contains("no attempts left of 2"), "{n1:?}");
        let s = deliver_ok(&env, t0() + Days::days(2));
        assert_eq!(counts(&s, "sms"), [0; 5], "{s}");
        assert_eq!(gw.requests().len(), 2);
    }
);

dbtest!(
    a_permanent_gateway_refusal_is_dead_after_one_attempt_and_masks_the_phone,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        permits(
            &env,
            &[("SH1", "13912345678", ""), ("SH2", "13900000002", "")],
        );
        gw.with(|s| {
            s.reject.insert("13912345678".into());
        });
        let o = deliver(&env, t0());
        assert_eq!(o.code, 0, "a failed notice is not a failed step: {o:?}");
        assert_eq!(counts(&o.stdout, "sms"), [1, 0, 1, 0, 0], "{}", o.stdout);
        assert!(
            !o.stderr.contains("13912345678"),
            "phone in logs: {}",
            o.stderr
        );
        let n = notices(&env);
        let n1 = notice(&n, "SH1");
        assert_eq!(
            (n1["status"].as_str(), n1["attempts"].as_str()),
            ("dead", "1")
        );
        assert!(n1["last_error"].contains("HTTP 400"), "{n1:?}");
        assert!(n1["last_error"].contains("(permanent)"), "{n1:?}");
        assert!(n1["last_error"].contains("139****5678"), "{n1:?}");
        assert!(!n1["last_error"].contains("13912345678"), "{n1:?}");
        assert_eq!(notice(&n, "SH2")["status"], "sent");

        deliver_ok(&env, t0() + Days::days(1));
        let to_rejected = gw
            .requests()
            .iter()
            .filter(|r| r.phone == "13912345678")
            .count();
        assert_eq!(to_rejected, 1, "a dead notice is not retried");
    }
);

dbtest!(
    a_gateway_that_hangs_past_the_timeout_is_retried_with_the_same_key,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        env.set("AUTOSIGN_SMS__TIMEOUT_SECS", "1");
        permits(&env, &[("SH1", "13900000001", "")]);
        gw.with(|s| {
            s.hang.insert("13900000001".into());
        });
        let started = Instant::now();
        let s = deliver_ok(&env, t0());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(counts(&s, "sms"), [0, 1, 0, 0, 0], "{s}");
        let n = notices(&env);
        assert!(
            notice(&n, "SH1")["last_error"].contains("did not answer within 1 s (outcome unknown)"),
            "{:?}",
            notice(&n, "SH1")
        );
        gw.with(|s| s.hang.clear());
        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");
        let reqs = gw.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            reqs[0].key, reqs[1].key,
            "the gateway can drop the repeat by its key"
        );
    }
);

dbtest!(
    quiet_hours_defer_sms_until_eight_but_not_email,
    |mut env| {
        fast_delivery(&mut env);
        let port = free_port();
        let Some(smtp) = Smtp::start(&env, port, &[]) else {
            return;
        };
        let gw = Gateway::start();
        gw.configure(&mut env);
        Smtp::configure(port, &mut env);
        permits(
            &env,
            &[("SH1", "13900000001", ""), ("SH2", "", "li.si@example.com")],
        );
        let evening = t0() + Days::hours(12); // 22:00 Shanghai
        let s = deliver_ok(&env, evening);
        assert_eq!(counts(&s, "sms"), [0, 0, 0, 0, 1], "{s}");
        assert_eq!(counts(&s, "email"), [1, 0, 0, 0, 0], "{s}");
        assert!(
            s.contains("sms: quiet hours (21:00-08:00 Asia/Shanghai): 1 due notices deferred"),
            "{s}"
        );
        let s = deliver_ok(&env, t0() + Days::minutes(21 * 60 + 59)); // 07:59
        assert_eq!(counts(&s, "sms"), [0, 0, 0, 0, 1], "{s}");
        assert!(gw.requests().is_empty());
        let n = notices(&env);
        assert_eq!(
            (
                notice(&n, "SH1")["status"].as_str(),
                notice(&n, "SH1")["attempts"].as_str()
            ),
            ("queued", "0"),
            "deferral spends no attempt"
        );
        let s = deliver_ok(&env, t0() + Days::hours(22)); // 08:00
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");
        assert_eq!(gw.requests().len(), 1);
        assert_eq!(smtp.messages().len(), 1);

        // Configurable: quiet hours off.
        let mut env2 = world(env.backend).expect("the server answered a moment ago");
        gw.configure(&mut env2);
        env2.set("AUTOSIGN_DELIVERY__QUIET_HOURS_START", "00:00");
        env2.set("AUTOSIGN_DELIVERY__QUIET_HOURS_END", "00:00");
        permits(&env2, &[("SH9", "13900000009", "")]);
        let s = deliver_ok(&env2, evening);
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");
    }
);

dbtest!(
    an_smtp_server_down_then_up_gets_each_mail_once,
    |mut env| {
        fast_delivery(&mut env);
        let port = free_port();
        Smtp::configure(port, &mut env);
        permits(
            &env,
            &[
                ("SH1", "", "zhang.san@example.com"),
                ("SH2", "", "li.si@example.org"),
            ],
        );
        // Nobody listens on the port yet.
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "email"), [0, 2, 0, 0, 0], "{s}");
        let n = notices(&env);
        assert!(
            notice(&n, "SH1")["last_error"].contains("SMTP relay unreachable"),
            "{:?}",
            notice(&n, "SH1")
        );
        assert_eq!(notice(&n, "SH1")["status"], "failed");

        let Some(smtp) = Smtp::start(&env, port, &[]) else {
            return;
        };
        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "email"), [2, 0, 0, 0, 0], "{s}");
        let rcpts: Vec<String> = smtp
            .messages()
            .iter()
            .map(|m| m["rcpt_tos"][0].as_str().expect("rcpt").to_string())
            .collect();
        assert_eq!(rcpts.len(), 2);
        assert_eq!(
            rcpts.iter().cloned().collect::<BTreeSet<_>>(),
            ["li.si@example.org", "zhang.san@example.com"]
                .map(String::from)
                .into(),
        );
        let n = notices(&env);
        assert_eq!(notice(&n, "SH1")["attempts"], "2");
        deliver_ok(&env, t0() + Days::days(1));
        assert_eq!(smtp.messages().len(), 2);
    }
);

dbtest!(
    smtp_4xx_is_retried_and_5xx_is_dead_with_the_address_masked,
    |mut env| {
        fast_delivery(&mut env);
        let port = free_port();
        let Some(smtp) = Smtp::start(&env, port, &["--busy-times", "2"]) else {
            return;
        };
        Smtp::configure(port, &mut env);
        permits(
            &env,
            &[
                ("SH1", "", "busy.one@example.com"),
                ("SH2", "", "reject.two@example.com"),
            ],
        );
        let o = deliver(&env, t0());
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(counts(&o.stdout, "email"), [0, 1, 1, 0, 0], "{}", o.stdout);
        assert!(
            !o.stderr.contains("reject.two@"),
            "address in logs: {}",
            o.stderr
        );
        let n = notices(&env);
        let dead = notice(&n, "SH2");
        assert_eq!(
            (dead["status"].as_str(), dead["attempts"].as_str()),
            ("dead", "1")
        );
        assert!(dead["last_error"].contains("550"), "{dead:?}");
        assert!(dead["last_error"].contains("r***@example.com"), "{dead:?}");
        assert!(!dead["last_error"].contains("reject.two@"), "{dead:?}");
        assert!(
            notice(&n, "SH1")["last_error"].contains("451"),
            "{:?}",
            notice(&n, "SH1")
        );

        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "email"), [0, 1, 0, 0, 0], "{s}");
        let s = deliver_ok(&env, t0() + Days::hours(2));
        assert_eq!(counts(&s, "email"), [1, 0, 0, 0, 0], "{s}");
        let mails = smtp.messages();
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0]["rcpt_tos"][0], "busy.one@example.com");
        assert_eq!(notice(&notices(&env), "SH1")["attempts"], "3");
    }
);

#[test]
fn starttls_and_implicit_tls_work_with_an_operator_ca_file() {
    let certs_env = sqlite_world();
    let Some((cert, key, ca)) = make_certs(&certs_env) else {
        return;
    };
    for mode in ["starttls", "tls"] {
        let mut env = sqlite_world();
        let port = free_port();
        let args = [
            "--tls-mode",
            mode,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth",
            "autosign:s3cret",
        ];
        let Some(smtp) = Smtp::start(&env, port, &args) else {
            return;
        };
        Smtp::configure(port, &mut env);
        env.set("AUTOSIGN_EMAIL__TLS", mode);
        env.set("AUTOSIGN_EMAIL__CA_FILE", &ca);
        env.set("AUTOSIGN_EMAIL__USERNAME", "autosign");
        env.set("AUTOSIGN_EMAIL__PASSWORD", "s3cret");
        permits(&env, &[("SH1", "", "zhang.san@example.com")]);
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "email"), [1, 0, 0, 0, 0], "{mode}: {s}");
        let mails = smtp.messages();
        assert_eq!(mails.len(), 1, "{mode}");
        assert_eq!(mails[0]["login"], "autosign", "{mode}");

        // Without the CA file the relay is not trusted: transient, retried.
        let mut env = sqlite_world();
        Smtp::configure(port, &mut env);
        env.set("AUTOSIGN_EMAIL__TLS", mode);
        env.set("AUTOSIGN_EMAIL__USERNAME", "autosign");
        env.set("AUTOSIGN_EMAIL__PASSWORD", "s3cret");
        permits(&env, &[("SH2", "", "li.si@example.com")]);
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "email"), [0, 1, 0, 0, 0], "{mode}: {s}");
        assert_eq!(smtp.messages().len(), 1, "{mode}");
    }
}

/// A CA and a server certificate for 127.0.0.1 (openssl): (cert, key, ca).
fn make_certs(env: &Env) -> Option<(String, String, String)> {
    let dir = env.path("tls");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    let steps: [Vec<String>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=autosign test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("srv.key"),
            "-out",
            &p("srv.csr"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            &p("srv.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("srv.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    for args in steps {
        match Command::new("openssl").args(&args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                if in_ci() {
                    panic!("openssl is needed for the TLS test in CI: {e}");
                }
                skipped(&format!("needs openssl for its TLS certificates: {e}"));
                return None;
            }
        }
    }
    Some((p("srv.pem"), p("srv.key"), p("ca.pem")))
}

dbtest!(
    a_killed_deliver_rerun_sends_nothing_twice_but_the_one_documented_window,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        env.set("AUTOSIGN_DELIVERY__BATCH_SIZE", "1");
        env.set("AUTOSIGN_SMS__CONCURRENCY", "1");
        let phones = [
            "13900000001",
            "13900000002",
            "13900000003",
            "13900000004",
            "13900000005",
        ];
        let rows: Vec<(String, &str)> = phones
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("SH{}", i + 1), *p))
            .collect();
        let rows: Vec<(&str, &str, &str)> =
            rows.iter().map(|(no, p)| (no.as_str(), *p, "")).collect();
        permits(&env, &rows);

        // Killed (abort, like kill -9) after the third send, before its record.
        env.set("AUTOSIGN_TEST_FAULT", "deliver.after_send@3");
        let o = deliver(&env, t0());
        assert_ne!(o.code, 0, "the fault must kill the process: {o:?}");
        env.env.retain(|(k, _)| k != "AUTOSIGN_TEST_FAULT");
        assert_eq!(gw.requests().len(), 3);
        let n = notices(&env);
        let window = notice(&n, "SH3");
        assert_eq!(
            (window["status"].as_str(), window["attempts"].as_str()),
            ("queued", "1"),
            "claimed, sent, unrecorded"
        );

        // Rerun at once: the others go out; SH3's claim has not expired.
        let s = deliver_ok(&env, t0() + Days::seconds(10));
        assert_eq!(counts(&s, "sms"), [2, 0, 0, 0, 0], "{s}");
        assert_eq!(gw.requests().len(), 5);

        // After the lease (300 s): SH3 is sent again — the documented window —
        // with the same idempotency key.
        let s = deliver_ok(&env, t0() + Days::minutes(10));
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");
        let reqs = gw.requests();
        assert_eq!(reqs.len(), 6);
        let mut per_phone: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in &reqs {
            per_phone.entry(&r.phone).or_default().push(&r.key);
        }
        for (phone, keys) in &per_phone {
            if *phone == "13900000003" {
                assert_eq!(
                    keys.len(),
                    2,
                    "the one window: sent, killed before the record"
                );
                assert_eq!(
                    keys[0], keys[1],
                    "same idempotency key: the gateway drops the repeat"
                );
            } else {
                assert_eq!(keys.len(), 1, "{phone} sent twice");
            }
        }
        let n = notices(&env);
        assert!(n.iter().all(|x| x["status"] == "sent"), "{n:?}");
        assert_eq!(notice(&n, "SH3")["attempts"], "2");
        let s = deliver_ok(&env, t0() + Days::days(1));
        assert_eq!(counts(&s, "sms"), [0; 5], "{s}");
        assert_eq!(gw.requests().len(), 6);
    }
);

dbtest!(
    a_deliver_killed_after_claiming_sends_each_notice_once_when_the_lease_expires,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        permits(
            &env,
            &[
                ("SH1", "13900000001", ""),
                ("SH2", "13900000002", ""),
                ("SH3", "13900000003", ""),
            ],
        );
        env.set("AUTOSIGN_TEST_FAULT", "deliver.after_claim");
        let o = deliver(&env, t0());
        assert_ne!(o.code, 0, "{o:?}");
        env.env.retain(|(k, _)| k != "AUTOSIGN_TEST_FAULT");
        assert!(gw.requests().is_empty());
        // Claimed: nothing is due until the lease expires.
        let s = deliver_ok(&env, t0() + Days::minutes(1));
        assert_eq!(counts(&s, "sms"), [0; 5], "{s}");
        let s = deliver_ok(&env, t0() + Days::minutes(6));
        assert_eq!(counts(&s, "sms"), [3, 0, 0, 0, 0], "{s}");
        let phones: BTreeSet<String> = gw.requests().iter().map(|r| r.phone.clone()).collect();
        assert_eq!(gw.requests().len(), 3);
        assert_eq!(phones.len(), 3);
    }
);

dbtest!(
    an_interrupted_last_attempt_is_dead_with_an_unknown_outcome,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        env.set("AUTOSIGN_DELIVERY__MAX_ATTEMPTS", "1");
        permits(&env, &[("SH1", "13900000001", "")]);
        env.set("AUTOSIGN_TEST_FAULT", "deliver.after_send");
        assert_ne!(deliver(&env, t0()).code, 0);
        env.env.retain(|(k, _)| k != "AUTOSIGN_TEST_FAULT");
        let s = deliver_ok(&env, t0() + Days::minutes(6));
        assert!(
            s.contains("1 notices dead: their last attempt was interrupted"),
            "{s}"
        );
        let n = notices(&env);
        assert_eq!(notice(&n, "SH1")["status"], "dead");
        assert!(
            notice(&n, "SH1")["last_error"].contains("outcome unknown"),
            "{:?}",
            notice(&n, "SH1")
        );
        assert_eq!(gw.requests().len(), 1, "not sent again: no attempts left");
    }
);

dbtest!(
    a_failing_gateway_stops_the_channel_without_spending_every_attempt,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        env.set("AUTOSIGN_DELIVERY__BREAKER_FAILURES", "3");
        env.set("AUTOSIGN_SMS__CONCURRENCY", "1");
        let rows: Vec<(String, String)> = (1..=6)
            .map(|i| (format!("SH{i}"), format!("1390000000{i}")))
            .collect();
        let rows: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_str(), ""))
            .collect();
        permits(&env, &rows);
        gw.with(|s| s.fail_500 = 100);
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "sms"), [0, 3, 0, 3, 3], "{s}");
        assert!(
            s.contains("sms: stopped after repeated transient failures"),
            "{s}"
        );
        assert_eq!(gw.requests().len(), 3);
        let n = notices(&env);
        let attempts: Vec<&str> = n.iter().map(|x| x["attempts"].as_str()).collect();
        assert_eq!(
            attempts.iter().filter(|a| **a == "0").count(),
            3,
            "{attempts:?}"
        );
        // The gateway recovers: the rest go out, and the failed ones in turn.
        gw.with(|s| s.fail_500 = 0);
        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "sms"), [6, 0, 0, 0, 0], "{s}");
        assert_eq!(gw.requests().len(), 9);
    }
);

dbtest!(
    unconfigured_channels_leave_notices_queued_and_say_so,
    |mut env| {
        fast_delivery(&mut env);
        permits(
            &env,
            &[("SH1", "13900000001", ""), ("SH2", "", "li.si@example.com")],
        );
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "sms"), [0, 0, 0, 0, 1], "{s}");
        assert_eq!(counts(&s, "email"), [0, 0, 0, 0, 1], "{s}");
        assert!(
            s.contains("sms: not configured (sms.url is empty): 1 due notices stay queued"),
            "{s}"
        );
        assert!(
            s.contains("email: not configured (email.host is empty): 1 due notices stay queued"),
            "{s}"
        );
        assert!(notices(&env)
            .iter()
            .all(|n| n["status"] == "queued" && n["attempts"] == "0"));
    }
);

#[test]
fn bad_channel_configuration_exits_2_naming_the_key() {
    for (key, value, named) in [
        ("AUTOSIGN_SMS__URL", "ftp//nowhere", "sms.url"),
        ("AUTOSIGN_SMS__URL", "ftp://example.com/sms", "sms.url"),
        ("AUTOSIGN_EMAIL__TLS", "ssl", "email.tls"),
        ("AUTOSIGN_EMAIL__HOST", "smtp.example.com", "email.from"),
        ("AUTOSIGN_DELIVERY__LEASE_SECS", "5", "delivery.lease_secs"),
    ] {
        let mut env = sqlite_world();
        env.set(key, value);
        let o = env.cmd(&["deliver"]);
        assert_eq!(o.code, 2, "{key}={value}: {o:?}");
        assert!(o.stderr.contains(named), "{key}={value}: {}", o.stderr);
    }
    let mut env = sqlite_world();
    env.set("AUTOSIGN_EMAIL__HOST", "smtp.example.com");
    env.set("AUTOSIGN_EMAIL__FROM", "not an address");
    let o = env.cmd(&["deliver"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("email.from"), "{}", o.stderr);
    let o = env.cmd(&["deliver", "--now", "tomorrow"]);
    assert_eq!(o.code, 2, "{o:?}");
}

dbtest!(
    the_daemon_worker_delivers_what_is_due_and_stops_on_request,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        permits(
            &env,
            &[("SH1", "13900000001", ""), ("SH2", "13900000002", "")],
        );
        let vars: Vec<(String, String)> = env
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("AUTOSIGN_"))
            .cloned()
            .chain([("AUTOSIGN_DELIVERY__POLL_SECS".to_string(), "1".to_string())])
            .collect();
        let settings = autosign::settings::Settings::load_with_env(None, &vars).expect("settings");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let db = autosign::db::Db::connect(&env.db_url).await.expect("db");
            let channels = autosign::outbox::Channels::from_settings(&settings).expect("channels");
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let clock = autosign::clock::Clock::starting_at(t0(), settings.tz());
            let worker = autosign::outbox::run_worker(&db, &settings, &channels, clock, stop);
            let watcher = async {
                let deadline = Instant::now() + Duration::from_secs(10);
                while gw.requests().len() < 2 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Let it poll once more with nothing due, then stop it.
                tokio::time::sleep(Duration::from_millis(1200)).await;
                stop_tx.send(true).expect("stop");
            };
            let ((), ()) = tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(worker, watcher)
            })
            .await
            .expect("the worker stops when asked");
        });
        assert_eq!(gw.requests().len(), 2);
        assert!(notices(&env).iter().all(|n| n["status"] == "sent"));
    }
);

dbtest!(
    fresh_notices_are_claimed_by_id_from_a_mark_that_never_passes_one,
    |mut env| {
        // A night's notices are written fresh, with no next_attempt_at, and
        // the worker finds them by id above their channel's mark
        // (src/db/outbox.rs, `claim!`). E-mail is not configured at first:
        // its notices wait, scheduled at the time they were due from, so
        // that its mark does not stay below them.
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        env.set("AUTOSIGN_DELIVERY__BATCH_SIZE", "2");
        permits(
            &env,
            &[
                ("SH1", "13900000001", ""),
                ("SH2", "", "wang@example.com"),
                ("SH3", "13900000003", ""),
                ("SH4", "", "li@example.com"),
                ("SH5", "13900000005", ""),
                ("SH6", "13900000006", ""),
            ],
        );
        let fresh = "SELECT count(*) FROM notifications
                      WHERE status = 'queued' AND next_attempt_at IS NULL";
        let passed = "SELECT count(*) FROM notifications n
                        JOIN delivery_marks m ON m.channel = n.channel
                       WHERE n.notification_id <= m.fresh_after
                         AND n.status = 'queued' AND n.next_attempt_at IS NULL";
        assert_eq!(env.query(fresh), ["6"]);
        assert_eq!(env.query(passed), ["0"]);
        for n in notices(&env) {
            assert_eq!(n["next_attempt_at"], n["created_at"], "due when queued");
        }

        // Three claims of two (the last finds none); one send fails.
        gw.with(|s| s.fail_500 = 1);
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "sms"), [3, 1, 0, 0, 0], "{s}");
        assert_eq!(counts(&s, "email"), [0, 0, 0, 0, 2], "{s}");
        assert!(s.contains("email: not configured"), "{s}");
        assert_eq!(gw.requests().len(), 4);
        assert_eq!(env.query(passed), ["0"]);
        assert_eq!(env.query(fresh), ["0"]);
        let waiting = "SELECT count(*) FROM notifications WHERE channel = 'email'
                         AND status = 'queued' AND attempts = 0 AND next_attempt_at = created_at";
        assert_eq!(env.query(waiting), ["2"], "the e-mails wait, due as before");
        let marks = "SELECT channel || ' ' || CASE
                       WHEN fresh_after = (SELECT max(notification_id) FROM notifications)
                         THEN 'at the last notice' ELSE 'elsewhere' END
                     FROM delivery_marks ORDER BY channel";
        assert_eq!(
            env.query(marks),
            ["email at the last notice", "sms at the last notice"]
        );
        let n = notices(&env);
        assert!(
            n.iter()
                .any(|x| x["status"] == "failed" && x["next_attempt_at"] > x["created_at"]),
            "the failed one is scheduled: {n:?}"
        );

        // The retry is found by its time, not by the mark; so are the
        // e-mails, once their channel is configured.
        let port = free_port();
        let Some(smtp) = Smtp::start(&env, port, &[]) else {
            return;
        };
        Smtp::configure(port, &mut env);
        let s = deliver_ok(&env, t0() + Days::hours(1));
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");
        assert_eq!(counts(&s, "email"), [2, 0, 0, 0, 0], "{s}");
        assert!(notices(&env).iter().all(|x| x["status"] == "sent"));
        assert_eq!(gw.requests().len(), 5);
        assert_eq!(smtp.messages().len(), 2);
    }
);

dbtest!(
    a_channel_without_its_delivery_mark_is_an_error_not_a_silent_channel,
    |mut env| {
        fast_delivery(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        permits(&env, &[("SH1", "13900000001", "")]);
        env.query("DELETE FROM delivery_marks WHERE channel = 'sms'");
        let o = deliver(&env, t0());
        assert_eq!(o.code, 1, "{o:?}");
        assert!(
            o.stderr
                .contains("delivery_marks has no row for channel sms"),
            "{}",
            o.stderr
        );
        assert!(gw.requests().is_empty());
        // The restore the message gives: a mark of 0 finds every fresh notice.
        env.query("INSERT INTO delivery_marks (channel, fresh_after) VALUES ('sms', 0)");
        let s = deliver_ok(&env, t0());
        assert_eq!(counts(&s, "sms"), [1, 0, 0, 0, 0], "{s}");
    }
);
