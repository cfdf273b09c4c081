#!/usr/bin/env python3
"""The yardstick: autosign's nightly cycle written as plain SQL in DuckDB,
to be run beside autosign.

autosign's speed is measured against the same whole pipeline written as
plain SQL in DuckDB: load the permits, import the three feeds with their
keys, the run's rules, the audit export. This script is that pipeline, on a
data set written by `autosign-generate`, so that both can be timed on the
same machine at the same hour (the machine's speed varies by 2x from one
hour to the next: docs/benchmarks.md).

It does *less* than autosign, so its time is a lower bound for DuckDB:
no ID-number or USCC check characters, no phone or e-mail validation, no
rejects file, no SHA-256 of the files, no R2 warnings, no crash-safe runs
ledger, notices as plain string concatenation, no service-center look-up. It
does parse the three date forms and the Chinese labels, keep the later row
of each key, apply R3-R7 with the default settings, queue one notice per
event and export the audit CSV in autosign's order. It prints its decision
counts so they can be compared with autosign's (they must be equal).

    python3 -m pip install duckdb
    benches/duckdb_reference.py DATA_DIR [AS_OF]   # DATA_DIR from `autosign-generate`

Its database and audit CSV go to a temporary directory, removed at the end
(2 GB at 10,000,000 permits: left behind, a few rounds fill the page cache
and slow every round after them); KEEP_WORK=1 keeps it to look at.

Run on demand, never in CI.
"""
import os
import resource
import shutil
import sys
import tempfile
import time

import duckdb

data = sys.argv[1]
as_of = sys.argv[2] if len(sys.argv) > 2 else "2026-11-27"
work = tempfile.mkdtemp(prefix="duckdb-ref-")
con = duckdb.connect(os.path.join(work, "ref.duckdb"))
con.execute("SET threads = 2")
con.execute("SET preserve_insertion_order = true")


def csv(feed):
    return os.path.join(data, feed, feed + ".csv")


def read(feed):
    # Every column as text, trimmed later; `line` keeps the file's order so
    # that the later row of a key wins (R2).
    return (f"SELECT row_number() OVER () AS line, * FROM read_csv('{csv(feed)}', "
            "header = true, all_varchar = true, quote = '\"', escape = '\"')")


DATE = """COALESCE(try_strptime(trim({0}), '%Y-%m-%d'), try_strptime(trim({0}), '%Y/%m/%d'),
                   try_strptime(trim({0}), '%Y%m%d'))::DATE"""
MONTH = """(CASE WHEN trim({0}) LIKE '%-%'
                 THEN split_part(trim({0}), '-', 1)::INT * 12 + split_part(trim({0}), '-', 2)::INT
                 ELSE left(trim({0}), 4)::INT * 12 + right(trim({0}), 2)::INT END)"""
MARITAL = """CASE trim({0}) WHEN 'single' THEN 'single' WHEN '未婚' THEN 'single'
              WHEN 'married' THEN 'married' WHEN '已婚' THEN 'married'
              WHEN 'divorced' THEN 'divorced' WHEN '离婚' THEN 'divorced' WHEN '离异' THEN 'divorced'
              WHEN 'widowed' THEN 'widowed' WHEN '丧偶' THEN 'widowed' END"""

phases = []


def phase(name, *sql):
    t0 = time.time()
    for s in sql:
        con.execute(s)
    phases.append((name, time.time() - t0))
    print(f"{name:<22} {phases[-1][1]:8.2f} s", flush=True)


phase("load permits", f"""
CREATE TABLE permits AS
SELECT trim(permit_no) AS permit_no, upper(trim(id_number)) AS id_number, trim(name) AS name,
       regexp_replace(COALESCE(trim(phone), ''), '^(\\+?86)|[ -]', '', 'g') AS phone,
       COALESCE(trim(email), '') AS email, trim(district_code) AS district_code,
       trim(street_code) AS street_code, trim(address) AS address,
       {DATE.format('valid_until')} AS valid_until,
       CASE COALESCE(trim(status), '') WHEN '' THEN 'active' WHEN 'active' THEN 'active'
            WHEN '有效' THEN 'active' WHEN 'suspended' THEN 'suspended' WHEN '中止' THEN 'suspended'
            WHEN 'cancelled' THEN 'cancelled' WHEN '注销' THEN 'cancelled' END AS status,
       COALESCE(trim(employer_uscc), '') AS employer_uscc,
       CASE trim(si_status) WHEN 'paying' THEN 'paying' WHEN '缴费' THEN 'paying'
            WHEN 'not_paying' THEN 'not_paying' WHEN '未缴费' THEN 'not_paying' END AS si_status,
       {MARITAL.format('marital_status')} AS marital_status
FROM ({read('permits')})
WHERE {DATE.format('valid_until')} IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY trim(permit_no) ORDER BY line DESC) = 1
""", "ALTER TABLE permits ADD PRIMARY KEY (permit_no)")

phase("import residence", f"""
CREATE TABLE residence AS
SELECT upper(trim(id_number)) AS id_number, {DATE.format('visited_on')} AS visited_on,
       CASE trim(result) WHEN 'consistent' THEN 'consistent' WHEN '一致' THEN 'consistent'
            WHEN 'changed' THEN 'changed' WHEN '变化' THEN 'changed' WHEN '不一致' THEN 'changed'
            WHEN 'not_found' THEN 'not_found' WHEN '查无此人' THEN 'not_found' END AS result,
       trim(address) AS address, trim(officer_id) AS officer_id
FROM ({read('residence')})
WHERE {DATE.format('visited_on')} IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY upper(trim(id_number)), {DATE.format('visited_on')}
                           ORDER BY line DESC) = 1
""")

phase("import social-insur.", f"""
CREATE TABLE social_insurance AS
SELECT upper(trim(id_number)) AS id_number, {MONTH.format('month')} AS month,
       CASE trim(status) WHEN 'paid' THEN 'paid' WHEN '正常' THEN 'paid' WHEN '正常缴费' THEN 'paid'
            WHEN 'arrears' THEN 'arrears' WHEN '欠缴' THEN 'arrears'
            WHEN 'stopped' THEN 'stopped' WHEN '停保' THEN 'stopped' WHEN '暂停' THEN 'stopped' END
         AS status,
       COALESCE(upper(trim(employer_uscc)), '') AS employer_uscc, trim(employer_name) AS employer_name
FROM ({read('social_insurance')})
QUALIFY row_number() OVER (PARTITION BY upper(trim(id_number)), {MONTH.format('month')}
                           ORDER BY line DESC) = 1
""")

phase("import civil-status", f"""
CREATE TABLE civil_status AS
SELECT upper(trim(id_number)) AS id_number, {MARITAL.format('marital_status')} AS marital_status,
       {DATE.format('as_of')} AS as_of
FROM ({read('civil_status')})
QUALIFY row_number() OVER (PARTITION BY upper(trim(id_number)) ORDER BY line DESC) = 1
""")

A = f"DATE '{as_of}'"
M = f"(year({A}) * 12 + month({A}))"
phase("run", f"""
CREATE TABLE events AS
WITH lifecycle AS (
    SELECT permit_no, valid_until,
           CASE WHEN {A} > valid_until + 60 THEN 'CANCELLED' ELSE 'SUSPENDED' END AS decision
    FROM permits
    WHERE (status IN ('active', 'suspended') AND {A} > valid_until + 60)
       OR (status = 'active' AND valid_until < {A} AND {A} <= valid_until + 60)
),
due AS (
    SELECT * FROM permits
    WHERE status = 'active' AND valid_until - {A} BETWEEN 0 AND 30
),
res AS (
    SELECT d.permit_no, arg_max(r.result, r.visited_on) AS result, max(r.visited_on) AS visited_on
    FROM due d JOIN residence r ON r.id_number = d.id_number
     AND r.visited_on BETWEEN d.valid_until - 30 AND {A}
    GROUP BY d.permit_no
),
si AS (
    SELECT d.permit_no, arg_max(s.status, s.month) AS status,
           arg_max(s.employer_uscc, s.month) AS employer_uscc, max(s.month) AS month
    FROM due d JOIN social_insurance s ON s.id_number = d.id_number
     AND s.month BETWEEN {M} - 2 AND {M}
    GROUP BY d.permit_no
),
evidence AS (
    SELECT d.permit_no, d.valid_until, d.marital_status AS permit_marital,
           res.visited_on, res.result, si.month AS si_month, si.status AS si_status_row,
           si.employer_uscc AS si_employer, c.marital_status AS civil_marital,
           list_filter([
             CASE WHEN res.permit_no IS NULL THEN 'ADDRESS_NOT_VERIFIED' END,
             CASE WHEN res.result <> 'consistent' THEN 'ADDRESS_CHANGED' END,
             CASE WHEN d.si_status = 'paying' AND si.permit_no IS NULL THEN 'SOCIAL_INSURANCE_MISSING' END,
             CASE WHEN (d.si_status = 'paying' AND si.status <> 'paid')
                    OR (d.si_status = 'not_paying' AND si.status = 'paid')
                  THEN 'SOCIAL_INSURANCE_CHANGED' END,
             CASE WHEN d.si_status = 'paying' AND si.status = 'paid'
                   AND si.employer_uscc <> d.employer_uscc THEN 'EMPLOYER_CHANGED' END,
             CASE WHEN c.marital_status <> d.marital_status THEN 'MARITAL_STATUS_CHANGED' END
           ], lambda x: x IS NOT NULL) AS reasons
    FROM due d
    LEFT JOIN res USING (permit_no)
    LEFT JOIN si USING (permit_no)
    LEFT JOIN civil_status c ON c.id_number = d.id_number AND (c.as_of IS NULL OR c.as_of <= {A})
),
decided AS (
    SELECT *,
           CASE WHEN len(reasons) = 0 THEN 'AUTO_SIGNED'
                WHEN len(list_filter(reasons, lambda x: x NOT IN ('ADDRESS_NOT_VERIFIED',
                                                             'SOCIAL_INSURANCE_MISSING'))) > 0
                  OR valid_until - {A} <= 7 THEN 'VISIT_CENTER'
                ELSE 'PENDING' END AS decision
    FROM evidence
)
SELECT permit_no, valid_until, decision, array_to_string(reasons, ';') AS reasons,
       CASE WHEN decision = 'AUTO_SIGNED'
            THEN CASE WHEN month(valid_until) = 2 AND day(valid_until) = 29
                      THEN make_date(year(valid_until) + 1, 2, 28)
                      ELSE make_date(year(valid_until) + 1, month(valid_until), day(valid_until)) END
       END AS new_valid_until,
       visited_on, result, si_month, si_status_row, si_employer, civil_marital
FROM decided
UNION ALL
SELECT permit_no, valid_until, decision, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM lifecycle
""", """
CREATE TABLE notifications AS
SELECT row_number() OVER (ORDER BY e.permit_no) AS notification_id, e.permit_no, e.valid_until,
       e.decision AS kind,
       CASE WHEN p.phone <> '' THEN 'sms' WHEN p.email <> '' THEN 'email' ELSE 'none' END AS channel,
       CASE WHEN p.phone <> '' THEN p.phone ELSE p.email END AS recipient,
       CASE WHEN p.phone = '' AND p.email = '' THEN 'undeliverable' ELSE 'queued' END AS status,
       p.name || '您好：您的上海市居住证（' || e.permit_no || '）' ||
       CASE e.decision WHEN 'AUTO_SIGNED' THEN '已自动签注，有效期至' || strftime(e.new_valid_until, '%Y年%m月%d日')
                       WHEN 'VISIT_CENTER' THEN '未能自动签注（' || e.reasons || '），请于' ||
                            strftime(e.valid_until, '%Y年%m月%d日') || '前携带居住证明材料到社区事务受理服务中心办理'
                       WHEN 'SUSPENDED' THEN '已中止'
                       ELSE '已注销' END || '。' AS message
FROM events e JOIN permits p USING (permit_no)
WHERE e.decision <> 'PENDING'
""", f"""
UPDATE permits SET
    valid_until = COALESCE(e.new_valid_until, permits.valid_until),
    status = CASE e.decision WHEN 'SUSPENDED' THEN 'suspended' WHEN 'CANCELLED' THEN 'cancelled'
                             ELSE permits.status END
FROM events e
WHERE e.permit_no = permits.permit_no AND e.decision IN ('AUTO_SIGNED', 'SUSPENDED', 'CANCELLED')
""")

phase("export audit", f"""
COPY (
    SELECT 1 AS run_id, {A} AS as_of, e.permit_no,
           left(p.id_number, 6) || '********' || right(p.id_number, 4) AS id_number,
           e.decision, e.reasons, e.valid_until, e.new_valid_until,
           e.visited_on AS residence_visited_on, e.result AS residence_result,
           CASE WHEN e.si_month IS NULL THEN NULL
                ELSE printf('%04d-%02d', (e.si_month - 1) // 12, (e.si_month - 1) % 12 + 1) END AS si_month,
           e.si_status_row AS si_status, e.si_employer AS si_employer_uscc,
           e.civil_marital AS marital_status, n.channel AS notification_channel,
           n.status AS notification_status, now() AS decided_at
    FROM events e JOIN permits p USING (permit_no)
    JOIN notifications n ON n.permit_no = e.permit_no
    WHERE e.decision <> 'PENDING'
    ORDER BY e.permit_no
) TO '{os.path.join(work, 'audit.csv')}' (HEADER)
""")

total = sum(t for _, t in phases)
print(f"{'total':<22} {total:8.2f} s")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
for decision, n in con.execute(
        "SELECT decision, count(*) FROM events GROUP BY decision ORDER BY decision").fetchall():
    print(f"       {decision:<14} {n:>9}")
con.close()
if os.environ.get("KEEP_WORK"):
    print(f"(work files in {work})")
else:
    shutil.rmtree(work)
