//! `autosign requeue` after a gateway outage, against the real servers of
//! the delivery tests (an HTTP SMS gateway in this process, aiosmtpd for
//! e-mail): notices go dead while the gateway and the relay fail, an
//! operator requeues them (by channel and date range, then the rest),
//! `deliver` sends them, and they arrive with the idempotency keys of the
//! attempts that failed. And the refusals: no selector, no reason, unknown
//! run or notice, a sent or withdrawn notice, a reverted run.

use std::collections::BTreeMap;

use chrono::{Duration as Days, NaiveDate};

use crate::deliver::{at, fast_delivery, free_port, permits, t0, Gateway, Smtp};
use crate::helpers::*;

const AS_OF: &str = "2026-11-27";

/// Fast, deterministic delivery (as the delivery tests set it), two
/// attempts before a notice is dead.
fn setup(env: &mut Env) {
    fast_delivery(env);
    env.set("AUTOSIGN_DELIVERY__MAX_ATTEMPTS", "2");
}

fn deliver(env: &Env, hours: i64) -> String {
    env.ok(&["deliver", "--now", &at(t0() + Days::hours(hours))])
}

/// `export notifications` by permit: (status, attempts).
fn outbox(env: &Env) -> BTreeMap<String, (String, String)> {
    let rows = rows(&env.notifications(AS_OF, AS_OF));
    let col = |name: &str| {
        rows[0]
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (p, s, a) = (col("permit_no"), col("status"), col("attempts"));
    rows[1..]
        .iter()
        .map(|r| (r[p].clone(), (r[s].clone(), r[a].clone())))
        .collect()
}

fn state(status: &str, attempts: &str) -> (String, String) {
    (status.to_string(), attempts.to_string())
}

/// The key a notice of this permit carries (VISIT_CENTER, cycle
/// 2026-11-30), as the delivery step derives it.
fn key_of(permit_no: &str) -> String {
    autosign::outbox::channel::idempotency_key(&autosign::db::outbox::ClaimedNotice {
        notification_id: 0,
        permit_no: permit_no.into(),
        cycle_valid_until: NaiveDate::from_ymd_opt(2026, 11, 30).expect("date"),
        kind: autosign::domain::EventKind::VisitCenter,
        // Not part of the key.
        channel: autosign::domain::Channel::Sms,
        recipient: String::new(),
        message: String::new(),
        attempt: 0,
    })
}

dbtest!(
    notices_dead_in_an_outage_are_requeued_and_arrive_with_their_keys,
    |mut env| {
        setup(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        let port = free_port();
        // The relay answers 451 to each "busy" recipient twice: with two
        // attempts allowed, the e-mail is dead before the relay recovers.
        let Some(smtp) = Smtp::start(&env, port, &["--busy-times", "2"]) else {
            return;
        };
        Smtp::configure(port, &mut env);
        permits(
            &env,
            &[
                ("SH1", "13900000001", ""),
                ("SH2", "13900000002", ""),
                ("SH3", "", "busy3@example.cn"),
            ],
        );
        gw.fail_next(100);
        deliver(&env, 0);
        deliver(&env, 1);
        let dead = state("dead", "2");
        assert_eq!(
            outbox(&env),
            BTreeMap::from([
                ("SH1".into(), dead.clone()),
                ("SH2".into(), dead.clone()),
                ("SH3".into(), dead.clone()),
            ])
        );
        gw.fail_next(0);
        // Dead notices are not tried again by themselves.
        deliver(&env, 2);
        assert_eq!(gw.requests().len(), 4);
        assert!(smtp.messages().is_empty());

        // A dry run counts and changes nothing.
        let out = env.ok(&["requeue", "--run", "1", "--dry-run"]);
        for part in [
            "requeue: 3 notices selected (run 1)",
            "  to requeue: 3",
            "    email  dead            1",
            "    sms    dead            2",
            "dry run: nothing changed",
        ] {
            assert!(out.contains(part), "{part:?} in:\n{out}");
        }
        assert_eq!(outbox(&env)["SH1"], dead);
        assert_eq!(env.query("SELECT count(*) FROM notice_requeues"), ["0"]);

        // The e-mail first, by channel and date range.
        let out = env.ok(&[
            "requeue",
            "--channel",
            "email",
            "--from",
            AS_OF,
            "--to",
            AS_OF,
            "--reason",
            "relay outage, ticket 17",
        ]);
        assert!(
            out.contains(
                "requeue: 1 notices selected (as_of 2026-11-27 to 2026-11-27, channel email)"
            ) && out.contains("requeued 1 notices (requeue 1, at "),
            "{out}"
        );
        assert_eq!(outbox(&env)["SH3"], state("queued", "0"));
        assert_eq!(outbox(&env)["SH1"], dead, "the SMS stay dead");
        // Then the rest.
        let out = env.ok(&["requeue", "--all", "--reason", "gateway outage"]);
        assert!(
            out.contains("requeue: 3 notices selected (every notice (--all))")
                && out.contains("  to requeue: 2")
                && out.contains("is queued already: delivery sends it when it is due")
                && out.contains("requeued 2 notices (requeue 2, at "),
            "{out}"
        );

        let s = deliver(&env, 3);
        assert!(s.contains("sent 3"), "{s}");
        let sent = state("sent", "1");
        assert_eq!(
            outbox(&env),
            BTreeMap::from([
                ("SH1".into(), sent.clone()),
                ("SH2".into(), sent.clone()),
                ("SH3".into(), sent),
            ])
        );
        // SMS: the attempts that failed and the one that went through
        // carry the same key.
        let reqs = gw.requests();
        assert_eq!(reqs.len(), 6);
        for (no, phone) in [("SH1", "13900000001"), ("SH2", "13900000002")] {
            let keys: Vec<&str> = reqs
                .iter()
                .filter(|r| r.phone == phone)
                .map(|r| r.key.as_str())
                .collect();
            assert_eq!(keys, [key_of(no).as_str(); 3], "{no}");
        }
        // E-mail: the Message-ID is made from the same key.
        let mails = smtp.messages();
        assert_eq!(mails.len(), 1);
        assert_eq!(
            mails[0]["message_id"].as_str().map(|m| m.split('@').next()),
            Some(Some(format!("<{}", key_of("SH3")).as_str()))
        );

        // The trail: who, when, why, and what each notice was before.
        assert_eq!(
            env.query(
                "SELECT requeue_id || ' ' || notification_id || ' ' || previous_status || ' ' \
                 || previous_attempts || ' ' || reason FROM notice_requeues \
                 ORDER BY requeue_id, notification_id"
            ),
            [
                "1 3 dead 2 relay outage, ticket 17",
                "2 1 dead 2 gateway outage",
                "2 2 dead 2 gateway outage"
            ]
        );
        let users = env.query("SELECT DISTINCT os_user FROM notice_requeues");
        assert_eq!(users.len(), 1);
        assert!(users[0].contains("(uid "), "{users:?}");
        let status = env.ok(&["status", "SH3"]);
        assert!(
            status.contains("requeued ")
                && status.contains(&format!(
                    " by {} (was dead, attempts 2): relay outage, ticket 17",
                    users[0]
                )),
            "{status}"
        );
        let json = env.ok(&["status", "SH1", "--json"]);
        assert!(json.contains("\"reason\": \"gateway outage\""), "{json}");

        // Sent notices are never requeued.
        let out = env.ok(&["requeue", "--run", "1", "--reason", "again"]);
        assert!(
            out.contains("  to requeue: 0")
                && out.contains("        3  was sent: never requeued")
                && out.contains("nothing to requeue: no dead or failed notice in the selection"),
            "{out}"
        );
        let o = env.cmd(&["requeue", "--notice", "1", "--reason", "again"]);
        assert_eq!(o.code, 2, "{}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr
                .contains("notice 1 (SH1) was sent: never requeued; nothing requeued"),
            "{}",
            o.stderr
        );
        assert_eq!(env.query("SELECT count(*) FROM notice_requeues"), ["3"]);
    }
);

/// Runs a refused `requeue` and returns its error line.
fn refused(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["requeue"];
    all.extend_from_slice(args);
    let o = env.cmd(&all);
    assert_eq!(o.code, 2, "{args:?}:\n{}\n{}", o.stdout, o.stderr);
    o.stderr
}

dbtest!(
    requeue_refuses_without_selector_or_reason_and_for_unknown_or_final_notices,
    |mut env| {
        setup(&mut env);
        let gw = Gateway::start();
        gw.configure(&mut env);
        permits(&env, &[("SH1", "13900000001", "")]);
        gw.fail_next(100);
        deliver(&env, 0);
        deliver(&env, 1);
        assert_eq!(outbox(&env)["SH1"], state("dead", "2"));
        for (args, why) in [
            (
                &["--reason", "outage"][..],
                "requeue needs a selector: --run RUN_ID, --from DATE/--to DATE",
            ),
            (&["--run", "1"][..], "requeue needs --reason TEXT"),
            (&["--run", "1", "--reason", "  "][..], "--reason is empty"),
            (
                &["--run", "99", "--reason", "outage"][..],
                "there is no run 99: nothing to requeue",
            ),
            (
                &["--notice", "1", "--notice", "42", "--reason", "outage"][..],
                "there is no notice 42: nothing requeued",
            ),
            (
                &["--from", "2026-02-30", "--reason", "outage"][..],
                "--from \"2026-02-30\"",
            ),
            (
                &[
                    "--from",
                    "2026-11-28",
                    "--to",
                    "2026-11-27",
                    "--reason",
                    "x",
                ][..],
                "--from 2026-11-28 is after --to 2026-11-27",
            ),
            (
                &["--run", "1", "--notice", "1", "--reason", "outage"][..],
                "cannot be used with",
            ),
            (&["--all", "--channel", "fax", "--reason", "x"][..], "fax"),
        ] {
            let err = refused(&env, args);
            assert!(err.contains(why), "{args:?}: {err}");
        }
        assert_eq!(env.query("SELECT count(*) FROM notice_requeues"), ["0"]);
        assert_eq!(outbox(&env)["SH1"], state("dead", "2"));
    }
);

dbtest!(
    notices_of_a_reverted_run_are_withdrawn_and_never_requeued,
    |mut env| {
        setup(&mut env);
        permits(&env, &[("SH1", "13900000001", "")]);
        env.ok(&["revert", "1"]);
        assert_eq!(outbox(&env)["SH1"], state("withdrawn", "0"));
        let err = refused(&env, &["--run", "1", "--reason", "outage"]);
        assert!(
            err.contains("run 1 for 2026-11-27 was reverted: its notices were withdrawn and are never requeued; nothing requeued"),
            "{err}"
        );
        let err = refused(&env, &["--notice", "1", "--reason", "outage"]);
        assert!(
            err.contains("notice 1 (SH1) was withdrawn by `autosign revert`: never requeued"),
            "{err}"
        );
        let out = env.ok(&["requeue", "--all", "--reason", "outage"]);
        assert!(
            out.contains("requeue: 1 notices selected")
                && out.contains("  to requeue: 0")
                && out.contains("        1  was withdrawn by `autosign revert`: never requeued"),
            "{out}"
        );
        assert_eq!(outbox(&env)["SH1"], state("withdrawn", "0"));
        assert_eq!(env.query("SELECT count(*) FROM notice_requeues"), ["0"]);
    }
);
