//! Deterministic sample data: the four input feeds of R1 for a
//! chosen number of permits, laid out as a run's inbox.
//!
//! The output depends only on the [`GenerateOptions`]. By default it is laid
//! out as another agency's export arrives ([`Layout::Shuffled`]): permit
//! numbers with no order (`SH` and ten digits from a keyed permutation) and
//! every feed's rows in random order, so that benchmarks and tests do not
//! depend on keys arriving sorted. [`Layout::Sorted`] numbers permits
//! `SH0000000001…` and writes each holder's rows together in that order; it
//! is stable under a growing `permits`: the first N permits of a larger data
//! set are the data set of N permits (with their feed rows). Both layouts
//! hold the same rows for the same seed, permit numbers aside. Rows are
//! streamed (the shuffle goes through bucket files on disk), so memory does
//! not grow with the number of permits (10 million is fine).
//!
//! The first [`SCENARIO_COUNT`] permits are fixed scenarios whose outcome
//! for a run at `as_of` with the default settings (window 30 days, decision
//! deadline 7 days, SI lag 2 months, grace 60 days) is known in advance —
//! every decision, every reason, PENDING, both lifecycle changes, every
//! channel and the boundaries of R3–R6; see [`scenarios`]. The rest are
//! random with realistic proportions: `valid_until` uniform over
//! `[as_of - 90, as_of + 365)`, about 85% with a phone, 10% with only an
//! e-mail and 5% with neither, 75% employed and paying social insurance.
//!
//! All generated values are valid (ID check characters per GB 11643-1999,
//! USCC check characters per GB 32100-2015), but they vary in the forms the
//! feeds allow — Chinese labels, `YYYY/M/D` and `YYYYMMDD` dates, `YYYYMM`
//! months, `+86` phone prefixes, a lowercase `x` — so an import exercises
//! its parsers. E-mail addresses use the reserved `example.*` domains.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use chrono::{Datelike, NaiveDate, TimeDelta};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use autosign::domain::{
    id_check_char, uscc_check_char, Channel, EventKind, MaritalStatus, Month, PaymentStatus,
    PermitStatus, Reason, ResidenceResult, SiStatus, USCC_ALPHABET,
};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Number of permits (rows of the permits feed).
    pub permits: usize,
    /// Seed of the random generator; the same seed gives the same bytes.
    pub seed: u64,
    /// The run date the data is made for: `valid_until` dates, visits and
    /// contribution months are placed relative to it.
    pub as_of: NaiveDate,
    /// Permit numbers and row order.
    pub layout: Layout,
}

/// How permits are numbered and rows ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Permit numbers in no order, every feed's rows shuffled: the shape of
    /// real exports.
    #[default]
    Shuffled,
    /// `SH` and the 1-based index, each holder's rows together in index
    /// order.
    Sorted,
}

/// Data rows written to each feed (headers not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerateSummary {
    pub permits: usize,
    pub residence: usize,
    pub social_insurance: usize,
    pub civil_status: usize,
}

/// Paths of the feeds inside the output folder (the inbox layout).
pub const PERMITS_FILE: &str = "permits/permits.csv";
pub const RESIDENCE_FILE: &str = "residence/residence.csv";
pub const SOCIAL_INSURANCE_FILE: &str = "social_insurance/social_insurance.csv";
pub const CIVIL_STATUS_FILE: &str = "civil_status/civil_status.csv";

/// Headers exactly as R1 lists the columns (docs/rules.md).
pub const PERMITS_HEADER: [&str; 13] = [
    "permit_no",
    "id_number",
    "name",
    "phone",
    "email",
    "district_code",
    "street_code",
    "address",
    "valid_until",
    "status",
    "employer_uscc",
    "si_status",
    "marital_status",
];
pub const RESIDENCE_HEADER: [&str; 5] =
    ["id_number", "visited_on", "result", "address", "officer_id"];
pub const SOCIAL_INSURANCE_HEADER: [&str; 5] = [
    "id_number",
    "month",
    "status",
    "employer_uscc",
    "employer_name",
];
pub const CIVIL_STATUS_HEADER: [&str; 3] = ["id_number", "marital_status", "as_of"];

/// Shanghai's streets and towns (`street_code,street_name,district_code,district_name`).
const STREETS_CSV: &str = include_str!("../../../config/shanghai_streets.csv");

/// Address codes (GB/T 2260) of places outside Shanghai where holders'
/// ID numbers were issued.
const REGIONS: [&str; 37] = [
    "110105", "120101", "130102", "140105", "210102", "220102", "230103", "320102", "320582",
    "321322", "330106", "330382", "340104", "341221", "341226", "341602", "350102", "360121",
    "362330", "370102", "371321", "410102", "411521", "411627", "420106", "421023", "430104",
    "431021", "440106", "450103", "500101", "510104", "511321", "520102", "530102", "610113",
    "620102",
];

/// Address code of the scenario holders; not in [`REGIONS`], so scenario ID
/// numbers never collide with random ones.
const SCENARIO_REGION: &str = "110101";

const SURNAMES: [&str; 64] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾",
    "肖", "田", "董", "袁", "潘", "于", "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁",
    "任", "沈", "姚", "卢", "姜", "崔", "钟", "谭", "陆", "汪", "范", "金", "石", "欧阳", "司马",
    "诸葛",
];

const GIVEN: [&str; 64] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "兰", "霞", "平", "刚", "英", "华", "建", "国", "文", "辉", "鹏", "宇", "浩", "然", "涵",
    "欣", "怡", "轩", "诺", "泽", "琪", "俊", "佳", "慧", "嘉", "志", "晓", "东", "海", "燕", "春",
    "梅", "玉", "红", "波", "斌", "宁", "雪", "婷", "倩", "凯", "亮", "峰", "林", "晨", "阳", "琳",
];

const ROADS: [&str; 32] = [
    "长寿路",
    "曹杨路",
    "武宁路",
    "中山北路",
    "共和新路",
    "张杨路",
    "世纪大道",
    "浦东南路",
    "漕溪北路",
    "虹桥路",
    "延安西路",
    "四平路",
    "江湾路",
    "南京西路",
    "淮海中路",
    "龙华西路",
    "宜山路",
    "吴中路",
    "莘庄路",
    "沪闵路",
    "城中路",
    "人民路",
    "解放路",
    "新华路",
    "建设路",
    "文化路",
    "民主路",
    "和平路",
    "东方路",
    "金桥路",
    "川沙路",
    "航头路",
];

const TRADE_NAMES: [&str; 24] = [
    "申江", "浦源", "明远", "恒信", "嘉禾", "瑞丰", "鼎盛", "宏达", "新锐", "卓越", "天宇", "长风",
    "博远", "启航", "星辰", "云帆", "海纳", "至诚", "安达", "润泽", "华亭", "松泽", "沪联", "景程",
];

const INDUSTRIES: [&str; 12] = [
    "信息科技",
    "贸易",
    "餐饮管理",
    "物流",
    "建筑工程",
    "电子商务",
    "物业管理",
    "医疗器械",
    "教育科技",
    "汽车服务",
    "机械制造",
    "人力资源",
];

const MOBILE_PREFIXES: [&str; 24] = [
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
    "156", "158", "159", "176", "177", "180", "181", "186", "187", "188", "199",
];

const EMAIL_DOMAINS: [&str; 3] = ["example.com", "example.net", "example.org"];

/// Employers in the pool that random holders work for.
const EMPLOYER_POOL: usize = 1024;

/// Random ID numbers are `REGIONS × birth days (1960–2004) × sequence
/// 001–999`; a pseudo-random permutation of this space maps permit index →
/// ID number, so IDs are unique without remembering them.
const BIRTH_FIRST: (i32, u32, u32) = (1960, 1, 1);
const BIRTH_LAST: (i32, u32, u32) = (2004, 12, 31);
const PERMUTATION_BITS: u32 = 30;

/// Writes the four feeds for `opts` into `out_dir` (created with its
/// sub-folders if missing, files overwritten).
pub fn generate(opts: &GenerateOptions, out_dir: &Path) -> anyhow::Result<GenerateSummary> {
    if !(1901..=9000).contains(&opts.as_of.year()) {
        bail!(
            "as_of {} is out of the supported range (years 1901-9000)",
            opts.as_of
        );
    }
    let streets = parse_streets(STREETS_CSV)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let ids = IdSpace::new(&mut rng)?;
    if opts.permits as u64 > ids.capacity {
        bail!("at most {} permits can be generated", ids.capacity);
    }
    let employers = employer_pool(&mut rng, &streets)?;
    // The layout draws from a generator of its own, so that both layouts
    // hold the same rows for a seed.
    let mut layout_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ LAYOUT_SEED);
    let numbers = PermitNumbers::new(opts.layout, &mut layout_rng);
    let shuffle = (opts.layout == Layout::Shuffled).then(|| Shuffle {
        buckets: opts
            .permits
            .div_ceil(PERMITS_PER_BUCKET)
            .clamp(1, MAX_BUCKETS),
        rng: layout_rng,
    });
    let mut out = Writers::create(out_dir, shuffle)?;
    let mut scratch = Scratch::default();
    let ctx = Inputs {
        as_of: opts.as_of,
        month: Month::of(opts.as_of),
        streets: &streets,
        employers: &employers,
    };

    for index in 0..opts.permits {
        let holder = match SCENARIOS.get(index) {
            Some(scenario) => scenario_holder(index, scenario, &ctx, &mut rng, &mut scratch)?,
            None => {
                let id = ids.id_of(index as u64)?;
                random_holder(index, id, &ctx, &mut rng, &mut scratch)?
            }
        };
        out.write(&holder, &numbers, &ctx, &mut rng, &mut scratch)
            .with_context(|| format!("failed to write the rows of permit {}", index + 1))?;
    }
    out.finish()
}

// ---------------------------------------------------------------------------
// Scenarios

/// What a run at `as_of` (default settings) should do with a scenario permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioOutcome {
    /// A decision or lifecycle change with its reasons (in R5 order).
    Event(EventKind, &'static [Reason]),
    /// Due, but only waiting reasons and more than 7 days left (R6).
    Pending(&'static [Reason]),
    /// Not due, or left alone (C13).
    Nothing,
}

/// A scenario permit as [`scenarios`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioInfo {
    pub permit_no: String,
    pub description: &'static str,
    pub outcome: ScenarioOutcome,
    /// Channel of the notice (when the outcome queues one).
    pub channel: Channel,
}

/// Number of fixed scenario permits at the start of every data set.
pub const SCENARIO_COUNT: usize = SCENARIOS.len();

/// The scenario permits among the first `permits`, with the outcome a run at
/// `as_of` should produce under the default settings.
pub fn scenarios(opts: &GenerateOptions) -> Vec<ScenarioInfo> {
    let numbers = PermitNumbers::new(
        opts.layout,
        &mut ChaCha8Rng::seed_from_u64(opts.seed ^ LAYOUT_SEED),
    );
    SCENARIOS
        .iter()
        .take(opts.permits)
        .enumerate()
        .map(|(index, s)| ScenarioInfo {
            permit_no: numbers.of(index),
            description: s.description,
            outcome: s.outcome,
            channel: match s.contact {
                Contact::Phone | Contact::PhoneFormatted | Contact::PhoneAndEmail => Channel::Sms,
                Contact::Email => Channel::Email,
                Contact::Nothing => Channel::None,
            },
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    Phone,
    /// `+86 138-0013-8000` style.
    PhoneFormatted,
    PhoneAndEmail,
    Email,
    Nothing,
}

/// Who a social-insurance row names as employer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payer {
    /// The employer on the permit.
    Own,
    /// Another employer.
    Other,
    /// Nobody (empty column).
    Nobody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CivilRow {
    Same,
    Different,
}

struct Scenario {
    description: &'static str,
    outcome: ScenarioOutcome,
    /// `valid_until - as_of`.
    days_left: i64,
    status: PermitStatus,
    contact: Contact,
    si_status: SiStatus,
    has_employer: bool,
    /// Visits: (`visited_on - as_of`, result).
    visits: &'static [(i64, ResidenceResult)],
    /// Contributions: (months before month(as_of), status, payer).
    si: &'static [(u32, PaymentStatus, Payer)],
    /// Civil-status row: (kind, `row as_of - as_of` in days).
    civil: Option<(CivilRow, i64)>,
    /// Write the ID's check character as a lowercase `x` in the permits file.
    lowercase_x: bool,
}

use PaymentStatus::{Arrears, Paid, Stopped};
use Reason::{
    AddressChanged as AC, AddressNotVerified as ANV, EmployerChanged as EC,
    MaritalStatusChanged as MSC, SocialInsuranceChanged as SIC, SocialInsuranceMissing as SIM,
};
use ResidenceResult::{Changed, Consistent, NotFound};

const SI_OK: &[(u32, PaymentStatus, Payer)] = &[
    (2, Paid, Payer::Own),
    (1, Paid, Payer::Own),
    (0, Paid, Payer::Own),
];
const VISIT_OK: &[(i64, ResidenceResult)] = &[(-3, Consistent)];
const CIVIL_SAME: Option<(CivilRow, i64)> = Some((CivilRow::Same, -10));
const AUTO: ScenarioOutcome = ScenarioOutcome::Event(EventKind::AutoSigned, &[]);
const fn visit(reasons: &'static [Reason]) -> ScenarioOutcome {
    ScenarioOutcome::Event(EventKind::VisitCenter, reasons)
}

/// The default scenario: due in 20 days, all evidence in order.
const BASE: Scenario = Scenario {
    description: "",
    outcome: AUTO,
    days_left: 20,
    status: PermitStatus::Active,
    contact: Contact::Phone,
    si_status: SiStatus::Paying,
    has_employer: true,
    visits: VISIT_OK,
    si: SI_OK,
    civil: CIVIL_SAME,
    lowercase_x: false,
};

const SCENARIOS: [Scenario; 45] = [
    Scenario { description: "AUTO_SIGNED by sms", ..BASE },
    Scenario {
        description: "AUTO_SIGNED by e-mail (no phone)",
        days_left: 15,
        contact: Contact::Email,
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, no phone or e-mail: undeliverable",
        days_left: 12,
        contact: Contact::Nothing,
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, not paying, no social-insurance or civil-status rows",
        days_left: 18,
        si_status: SiStatus::NotPaying,
        has_employer: false,
        visits: &[(-1, Consistent)],
        si: &[],
        civil: None,
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED on the last day: valid_until = as_of (R4)",
        days_left: 0,
        visits: &[(-20, Consistent)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED on the first due day: valid_until = as_of + 30, visited on as_of (R4, R5)",
        days_left: 30,
        visits: &[(0, Consistent)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, visited on the first day of the window (R5)",
        days_left: 10,
        visits: &[(-20, Consistent)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, the latest visit in the window counts (R5)",
        days_left: 14,
        visits: &[(-12, Changed), (-2, Consistent)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, a visit after as_of is ignored (C4)",
        days_left: 14,
        visits: &[(-5, Consistent), (1, Changed)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, latest contribution month(as_of) - 2 (R5 lag)",
        days_left: 16,
        si: &[(3, Paid, Payer::Own), (2, Paid, Payer::Own)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, only the latest contribution counts (R5)",
        days_left: 17,
        si: &[(2, Arrears, Payer::Own), (1, Paid, Payer::Own), (0, Paid, Payer::Own)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, a civil-status record dated after as_of is ignored (C4)",
        days_left: 19,
        civil: Some((CivilRow::Different, 3)),
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, ID number written with a lowercase x in the permits file",
        days_left: 9,
        lowercase_x: true,
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, not paying, latest row stopped (C2)",
        days_left: 21,
        si_status: SiStatus::NotPaying,
        has_employer: false,
        si: &[(2, Paid, Payer::Other), (1, Stopped, Payer::Nobody)],
        ..BASE
    },
    Scenario {
        description: "AUTO_SIGNED, phone written +86 with hyphens, e-mail too: sms",
        days_left: 23,
        contact: Contact::PhoneFormatted,
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_NOT_VERIFIED: no visit, 5 days left (R6)",
        outcome: visit(&[ANV]),
        days_left: 5,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_NOT_VERIFIED: visited the day before the window, 7 days left (R5, R6 deadline)",
        outcome: visit(&[ANV]),
        days_left: 7,
        visits: &[(-24, Consistent)],
        ..BASE
    },
    Scenario {
        description: "PENDING ADDRESS_NOT_VERIFIED: no visit, 8 days left (R6)",
        outcome: ScenarioOutcome::Pending(&[ANV]),
        days_left: 8,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "PENDING ADDRESS_NOT_VERIFIED: no visit, 25 days left",
        outcome: ScenarioOutcome::Pending(&[ANV]),
        days_left: 25,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "PENDING SOCIAL_INSURANCE_MISSING: paying, no contribution rows, 20 days left",
        outcome: ScenarioOutcome::Pending(&[SIM]),
        si: &[],
        ..BASE
    },
    Scenario {
        description: "PENDING ADDRESS_NOT_VERIFIED and SOCIAL_INSURANCE_MISSING, 15 days left",
        outcome: ScenarioOutcome::Pending(&[ANV, SIM]),
        days_left: 15,
        visits: &[],
        si: &[],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_CHANGED: visit found the address changed",
        outcome: visit(&[AC]),
        visits: &[(-2, Changed)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_CHANGED: visit found nobody (not_found)",
        outcome: visit(&[AC]),
        days_left: 22,
        visits: &[(-4, NotFound)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER SOCIAL_INSURANCE_MISSING: no contribution rows, 3 days left",
        outcome: visit(&[SIM]),
        days_left: 3,
        si: &[],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER SOCIAL_INSURANCE_MISSING: contributions only before month(as_of) - 2, 6 days left",
        outcome: visit(&[SIM]),
        days_left: 6,
        si: &[(5, Paid, Payer::Own), (4, Paid, Payer::Own), (3, Paid, Payer::Own)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER SOCIAL_INSURANCE_CHANGED: latest contribution in arrears",
        outcome: visit(&[SIC]),
        si: &[(2, Paid, Payer::Own), (1, Paid, Payer::Own), (0, Arrears, Payer::Own)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER SOCIAL_INSURANCE_CHANGED: insurance stopped",
        outcome: visit(&[SIC]),
        days_left: 11,
        si: &[(1, Paid, Payer::Own), (0, Stopped, Payer::Nobody)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER SOCIAL_INSURANCE_CHANGED: not paying at registration, now paid (C2)",
        outcome: visit(&[SIC]),
        days_left: 13,
        si_status: SiStatus::NotPaying,
        has_employer: false,
        si: &[(1, Paid, Payer::Other), (0, Paid, Payer::Other)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER EMPLOYER_CHANGED: paid by another employer",
        outcome: visit(&[EC]),
        si: &[(2, Paid, Payer::Own), (1, Paid, Payer::Other), (0, Paid, Payer::Other)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER EMPLOYER_CHANGED: paying without employer, paid row names one (C3)",
        outcome: visit(&[EC]),
        days_left: 24,
        has_employer: false,
        si: &[(0, Paid, Payer::Other)],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER MARITAL_STATUS_CHANGED",
        outcome: visit(&[MSC]),
        civil: Some((CivilRow::Different, -30)),
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_NOT_VERIFIED and MARITAL_STATUS_CHANGED at once, 25 days left (R6)",
        outcome: visit(&[ANV, MSC]),
        days_left: 25,
        visits: &[],
        civil: Some((CivilRow::Different, -5)),
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_CHANGED, EMPLOYER_CHANGED and MARITAL_STATUS_CHANGED by e-mail",
        outcome: visit(&[AC, EC, MSC]),
        contact: Contact::Email,
        visits: &[(-6, Changed)],
        si: &[(0, Paid, Payer::Other)],
        civil: Some((CivilRow::Different, -1)),
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_NOT_VERIFIED and SOCIAL_INSURANCE_MISSING, 2 days left",
        outcome: visit(&[ANV, SIM]),
        days_left: 2,
        visits: &[],
        si: &[],
        ..BASE
    },
    Scenario {
        description: "VISIT_CENTER ADDRESS_CHANGED and SOCIAL_INSURANCE_CHANGED, undeliverable",
        outcome: visit(&[AC, SIC]),
        contact: Contact::Nothing,
        visits: &[(-8, NotFound)],
        si: &[(0, Stopped, Payer::Nobody)],
        ..BASE
    },
    Scenario {
        description: "not due: 31 days left (R4)",
        outcome: ScenarioOutcome::Nothing,
        days_left: 31,
        visits: &[],
        si: &[],
        ..BASE
    },
    Scenario {
        description: "not due: 200 days left",
        outcome: ScenarioOutcome::Nothing,
        days_left: 200,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "SUSPENDED: valid_until = as_of - 1 (R3)",
        outcome: ScenarioOutcome::Event(EventKind::Suspended, &[]),
        days_left: -1,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "SUSPENDED: 60 days past valid_until, the last day of grace (R3)",
        outcome: ScenarioOutcome::Event(EventKind::Suspended, &[]),
        days_left: -60,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "CANCELLED directly from active: 61 days past valid_until (R3, C1)",
        outcome: ScenarioOutcome::Event(EventKind::Cancelled, &[]),
        days_left: -61,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "CANCELLED: suspended in the register, 75 days past (C13)",
        outcome: ScenarioOutcome::Event(EventKind::Cancelled, &[]),
        days_left: -75,
        status: PermitStatus::Suspended,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "nothing: suspended in the register, 30 days past, no event (C13)",
        outcome: ScenarioOutcome::Nothing,
        days_left: -30,
        status: PermitStatus::Suspended,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "nothing: cancelled in the register, never evaluated (C13)",
        outcome: ScenarioOutcome::Nothing,
        days_left: 10,
        status: PermitStatus::Cancelled,
        ..BASE
    },
    Scenario {
        description: "SUSPENDED by e-mail",
        outcome: ScenarioOutcome::Event(EventKind::Suspended, &[]),
        days_left: -5,
        contact: Contact::Email,
        visits: &[],
        ..BASE
    },
    Scenario {
        description: "CANCELLED, undeliverable",
        outcome: ScenarioOutcome::Event(EventKind::Cancelled, &[]),
        days_left: -90,
        contact: Contact::Nothing,
        visits: &[],
        ..BASE
    },
];

// ---------------------------------------------------------------------------
// Holders

/// Everything about one permit and its feed rows, borrowing the reusable
/// buffers of [`Scratch`].
struct Holder {
    index: usize,
    valid_until: NaiveDate,
    status: PermitStatus,
    /// Write `status` empty (it defaults to active).
    status_blank: bool,
    contact: Contact,
    si_status: SiStatus,
    employer: Option<usize>,
    marital: MaritalStatus,
    civil: Option<(MaritalStatus, Option<NaiveDate>)>,
    lowercase_x: bool,
    street: usize,
}

/// Reusable buffers so that generating a permit allocates nothing once warm.
#[derive(Default)]
struct Scratch {
    id: String,
    visits: Vec<(NaiveDate, ResidenceResult)>,
    si: Vec<(Month, PaymentStatus, Option<usize>)>,
    permit_no: String,
    id_field: String,
    name: String,
    phone: String,
    email: String,
    address: String,
    other_address: String,
    date: String,
    officer: String,
}

/// Read-only inputs of the generation.
struct Inputs<'a> {
    as_of: NaiveDate,
    month: Month,
    streets: &'a [Street],
    employers: &'a [Employer],
}

/// Mixed into the seed for the layout's own generator.
const LAYOUT_SEED: u64 = 0x5045_524D_4954_4E4F;

/// Permit numbers are `SH` and ten digits.
const PERMIT_DIGITS: u64 = 10_000_000_000;
/// The smallest even bit width whose space holds every ten-digit number.
const PERMIT_BITS: u32 = 34;

/// Permit index → permit number.
enum PermitNumbers {
    /// `SH` and the 1-based index.
    Sequential,
    /// `SH` and a keyed permutation of the ten-digit numbers: unique, in no
    /// order, like numbers issued over years by district offices.
    Permuted(Feistel),
}

impl PermitNumbers {
    fn new(layout: Layout, rng: &mut ChaCha8Rng) -> PermitNumbers {
        match layout {
            Layout::Sorted => PermitNumbers::Sequential,
            Layout::Shuffled => PermitNumbers::Permuted(Feistel::new(PERMIT_BITS, rng)),
        }
    }

    fn of(&self, index: usize) -> String {
        let mut s = String::with_capacity(12);
        self.push(&mut s, index);
        s
    }

    fn push(&self, buf: &mut String, index: usize) {
        let n = match self {
            PermitNumbers::Sequential => index as u64 + 1,
            PermitNumbers::Permuted(f) => f.permute_below(index as u64, PERMIT_DIGITS),
        };
        buf.push_str("SH");
        push_padded(buf, n, 10);
    }
}

fn add_days(d: NaiveDate, days: i64) -> NaiveDate {
    // `generate` checked that as_of is far from chrono's limits.
    d.checked_add_signed(TimeDelta::days(days)).unwrap_or(d)
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// An employer index different from `own` (or any, when `own` is `None`).
fn other_employer(rng: &mut ChaCha8Rng, own: Option<usize>, pool: usize) -> usize {
    let offset = rng.random_range(1..pool);
    own.map_or(offset, |e| (e + offset) % pool)
}

fn scenario_holder(
    index: usize,
    s: &Scenario,
    ctx: &Inputs,
    rng: &mut ChaCha8Rng,
    scratch: &mut Scratch,
) -> anyhow::Result<Holder> {
    // Scenario IDs: their own region code, a distinct birth date each, and
    // (for the lowercase-x case) the first sequence number giving an X.
    let birth = add_days(date(1970, 1, 1)?, index as i64 * 211);
    let mut seq = 101 + index as u64;
    loop {
        build_id(&mut scratch.id, SCENARIO_REGION, birth, seq)?;
        if !s.lowercase_x || scratch.id.ends_with('X') {
            break;
        }
        seq = seq % 999 + 1;
    }

    let valid_until = add_days(ctx.as_of, s.days_left);
    let pool = ctx.employers.len();
    let own = s.has_employer.then(|| rng.random_range(0..pool));
    let other = other_employer(rng, own, pool);
    let marital = pick(rng, &MaritalStatus::ALL);

    scratch.visits.clear();
    for &(offset, result) in s.visits {
        scratch.visits.push((add_days(ctx.as_of, offset), result));
    }
    scratch.si.clear();
    for &(back, status, payer) in s.si {
        let employer = match payer {
            Payer::Own => own,
            Payer::Other => Some(other),
            Payer::Nobody => None,
        };
        scratch.si.push((ctx.month.minus(back), status, employer));
    }
    let civil = s.civil.map(|(kind, offset)| {
        let status = match kind {
            CivilRow::Same => marital,
            CivilRow::Different => changed_marital(marital),
        };
        (status, Some(add_days(ctx.as_of, offset)))
    });
    Ok(Holder {
        index,
        valid_until,
        status: s.status,
        status_blank: false,
        contact: s.contact,
        si_status: s.si_status,
        employer: own,
        marital,
        civil,
        lowercase_x: s.lowercase_x,
        street: rng.random_range(0..ctx.streets.len()),
    })
}

/// The plausible next marital status.
fn changed_marital(m: MaritalStatus) -> MaritalStatus {
    match m {
        MaritalStatus::Single | MaritalStatus::Divorced | MaritalStatus::Widowed => {
            MaritalStatus::Married
        }
        MaritalStatus::Married => MaritalStatus::Divorced,
    }
}

fn random_holder(
    index: usize,
    id: IdParts,
    ctx: &Inputs,
    rng: &mut ChaCha8Rng,
    scratch: &mut Scratch,
) -> anyhow::Result<Holder> {
    build_id(&mut scratch.id, id.region, id.birth, id.seq)?;
    let as_of = ctx.as_of;
    let days_left = rng.random_range(-90..365i64);
    let valid_until = add_days(as_of, days_left);

    let r = rng.random_range(0..1000u32);
    let status = if r < 5 {
        PermitStatus::Cancelled
    } else if days_left < 0 && r < 105 {
        // About 10% of lapsed permits were already suspended by an earlier
        // run (≈ 2% of all permits).
        PermitStatus::Suspended
    } else {
        PermitStatus::Active
    };
    let status_blank = status == PermitStatus::Active && rng.random_range(0..10u32) == 0;

    let contact = match rng.random_range(0..100u32) {
        0..=66 => Contact::Phone,
        67..=81 => Contact::PhoneAndEmail,
        82..=84 => Contact::PhoneFormatted,
        85..=94 => Contact::Email,
        _ => Contact::Nothing,
    };
    let pool = ctx.employers.len();
    let (si_status, employer) = if rng.random_range(0..100u32) < 75 {
        (SiStatus::Paying, Some(rng.random_range(0..pool)))
    } else {
        (SiStatus::NotPaying, None)
    };
    let marital = match rng.random_range(0..100u32) {
        0..=34 => MaritalStatus::Single,
        35..=87 => MaritalStatus::Married,
        88..=96 => MaritalStatus::Divorced,
        _ => MaritalStatus::Widowed,
    };

    // Residence visits (R5): most due permits were visited in their window.
    scratch.visits.clear();
    let due = (0..=30).contains(&days_left);
    if due {
        let window_start = add_days(valid_until, -30);
        let span = (as_of - window_start).num_days();
        match rng.random_range(0..100u32) {
            0..=91 => {
                if rng.random_range(0..10u32) == 0 {
                    // An earlier visit from the previous cycle.
                    let back = rng.random_range(200..400i64);
                    scratch.visits.push((add_days(as_of, -back), Consistent));
                }
                let on = add_days(window_start, rng.random_range(0..=span));
                let result = match rng.random_range(0..100u32) {
                    0..=93 => Consistent,
                    94..=97 => Changed,
                    _ => NotFound,
                };
                scratch.visits.push((on, result));
            }
            92..=96 => {}
            _ => {
                // Visited, but before the window opened.
                let before = rng.random_range(1..120i64);
                scratch
                    .visits
                    .push((add_days(window_start, -before), Consistent));
            }
        }
    } else if rng.random_range(0..100u32) < 3 {
        let back = rng.random_range(31..400i64);
        scratch.visits.push((add_days(as_of, -back), Consistent));
    }

    // Social insurance, for every holder: the last three months.
    scratch.si.clear();
    let m0 = ctx.month;
    match (si_status, employer) {
        (SiStatus::Paying, Some(e)) => {
            let r = rng.random_range(0..1000u32);
            if r < 30 {
                // Missing: nothing recent, sometimes older months.
                if r < 15 {
                    for back in [5, 4, 3] {
                        scratch.si.push((m0.minus(back), Paid, Some(e)));
                    }
                }
            } else if r < 50 {
                let last = if r < 40 { Arrears } else { Stopped };
                let payer = (last == Arrears).then_some(e);
                scratch.si.push((m0.minus(2), Paid, Some(e)));
                scratch.si.push((m0.minus(1), Paid, Some(e)));
                scratch.si.push((m0, last, payer));
            } else if r < 70 {
                let new = other_employer(rng, Some(e), pool);
                scratch.si.push((m0.minus(2), Paid, Some(e)));
                scratch.si.push((m0.minus(1), Paid, Some(new)));
                scratch.si.push((m0, Paid, Some(new)));
            } else {
                // One in five employers reports a month late.
                let lag = u32::from(rng.random_range(0..5u32) == 0);
                for back in [2, 1, 0] {
                    scratch.si.push((m0.minus(back + lag), Paid, Some(e)));
                }
            }
        }
        _ => {
            let r = rng.random_range(0..1000u32);
            if r < 30 {
                let new = other_employer(rng, None, pool);
                scratch.si.push((m0.minus(1), Paid, Some(new)));
                scratch.si.push((m0, Paid, Some(new)));
            } else if r < 80 {
                let old = other_employer(rng, None, pool);
                scratch.si.push((m0.minus(4), Paid, Some(old)));
                scratch.si.push((m0.minus(3), Stopped, None));
            }
        }
    }

    // Civil status for about 60% of holders, 2% of them changed.
    let civil = (rng.random_range(0..100u32) < 60).then(|| {
        let status = if rng.random_range(0..1000u32) < 20 {
            changed_marital(marital)
        } else {
            marital
        };
        let row_as_of = (rng.random_range(0..20u32) != 0)
            .then(|| add_days(as_of, -rng.random_range(1..=90i64)));
        (status, row_as_of)
    });

    Ok(Holder {
        index,
        valid_until,
        status,
        status_blank,
        contact,
        si_status,
        employer,
        marital,
        civil,
        lowercase_x: scratch.id.ends_with('X') && rng.random_range(0..5u32) == 0,
        street: rng.random_range(0..ctx.streets.len()),
    })
}

// ---------------------------------------------------------------------------
// ID numbers

/// The parts of a random holder's ID number.
struct IdParts {
    region: &'static str,
    birth: NaiveDate,
    seq: u64,
}

/// A keyed pseudo-random permutation of the numbers below `2^bits` (`bits`
/// even): a four-round Feistel network.
struct Feistel {
    keys: [u64; 4],
    half: u32,
}

impl Feistel {
    fn new(bits: u32, rng: &mut ChaCha8Rng) -> Feistel {
        debug_assert!(bits.is_multiple_of(2) && bits <= 62);
        Feistel {
            keys: [
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
            ],
            half: bits / 2,
        }
    }

    fn permute(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half) - 1;
        let (mut left, mut right) = (x >> self.half, x & mask);
        for key in self.keys {
            let f = splitmix64(right ^ key) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half) | right
    }

    /// The permutation restricted to `0..capacity` (`x < capacity`): cycle
    /// walking, so distinct `x` give distinct results.
    fn permute_below(&self, x: u64, capacity: u64) -> u64 {
        let mut y = self.permute(x);
        while y >= capacity {
            y = self.permute(y);
        }
        y
    }
}

/// A keyed pseudo-random permutation of `REGIONS × birth days × 999`.
struct IdSpace {
    permutation: Feistel,
    birth_first: NaiveDate,
    days: u64,
    capacity: u64,
}

impl IdSpace {
    fn new(rng: &mut ChaCha8Rng) -> anyhow::Result<IdSpace> {
        let birth_first = date(BIRTH_FIRST.0, BIRTH_FIRST.1, BIRTH_FIRST.2)?;
        let birth_last = date(BIRTH_LAST.0, BIRTH_LAST.1, BIRTH_LAST.2)?;
        let days = (birth_last - birth_first).num_days() as u64 + 1;
        let capacity = REGIONS.len() as u64 * days * 999;
        debug_assert!(capacity <= 1 << PERMUTATION_BITS);
        Ok(IdSpace {
            permutation: Feistel::new(PERMUTATION_BITS, rng),
            birth_first,
            days,
            capacity,
        })
    }

    /// The ID parts of permit `index` (< capacity); distinct indexes give
    /// distinct IDs.
    fn id_of(&self, index: u64) -> anyhow::Result<IdParts> {
        if index >= self.capacity {
            bail!("permit index {index} exceeds the ID space");
        }
        let x = self.permutation.permute_below(index, self.capacity);
        let regions = REGIONS.len() as u64;
        let region = REGIONS[(x % regions) as usize];
        let rest = x / regions;
        let birth = self
            .birth_first
            .checked_add_days(chrono::Days::new(rest % self.days))
            .ok_or_else(|| anyhow!("birth date out of range"))?;
        Ok(IdParts {
            region,
            birth,
            seq: rest / self.days + 1,
        })
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes a full ID number (with its check character) into `buf`.
fn build_id(buf: &mut String, region: &str, birth: NaiveDate, seq: u64) -> anyhow::Result<()> {
    buf.clear();
    buf.push_str(region);
    push_padded(buf, birth.year() as u64, 4);
    push_padded(buf, u64::from(birth.month()), 2);
    push_padded(buf, u64::from(birth.day()), 2);
    push_padded(buf, seq, 3);
    let check =
        id_check_char(buf).ok_or_else(|| anyhow!("generated an ID body that is not 17 digits"))?;
    buf.push(check);
    Ok(())
}

fn date(y: i32, m: u32, d: u32) -> anyhow::Result<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d).ok_or_else(|| anyhow!("invalid date {y}-{m}-{d}"))
}

// ---------------------------------------------------------------------------
// Reference data

struct Street {
    code: &'static str,
    name: &'static str,
    district_code: &'static str,
    district_name: &'static str,
}

fn parse_streets(csv: &'static str) -> anyhow::Result<Vec<Street>> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches('\u{feff}');
    if header.trim() != "street_code,street_name,district_code,district_name" {
        bail!("config/shanghai_streets.csv has an unexpected header");
    }
    let mut streets = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        match (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) {
            (Some(code), Some(name), Some(district_code), Some(district_name), None) => streets
                .push(Street {
                    code,
                    name,
                    district_code,
                    district_name,
                }),
            _ => bail!(
                "config/shanghai_streets.csv line {} does not have 4 fields",
                n + 2
            ),
        }
    }
    if streets.is_empty() {
        bail!("config/shanghai_streets.csv lists no streets");
    }
    Ok(streets)
}

struct Employer {
    uscc: String,
    name: String,
}

/// A pool of employers with valid codes (GB 32100-2015): `91` (enterprise
/// registered by the market regulator), a Shanghai district code, a 9-character
/// organisation code and the check character.
fn employer_pool(rng: &mut ChaCha8Rng, streets: &[Street]) -> anyhow::Result<Vec<Employer>> {
    let alphabet = USCC_ALPHABET.as_bytes();
    let mut seen = std::collections::HashSet::with_capacity(EMPLOYER_POOL);
    let mut pool = Vec::with_capacity(EMPLOYER_POOL);
    while pool.len() < EMPLOYER_POOL {
        let street = &streets[rng.random_range(0..streets.len())];
        let mut uscc = String::with_capacity(18);
        uscc.push_str("91");
        uscc.push_str(street.district_code);
        if rng.random_bool(0.5) {
            // Codes issued since 2015 carry an "MA" organisation code.
            uscc.push_str("MA");
            for _ in 0..7 {
                uscc.push(char::from(pick(rng, alphabet)));
            }
        } else {
            for _ in 0..9 {
                uscc.push(char::from(b'0' + rng.random_range(0..10u8)));
            }
        }
        let check = uscc_check_char(&uscc)
            .ok_or_else(|| anyhow!("generated a USCC body that is not 17 characters"))?;
        uscc.push(check);
        if !seen.insert(uscc.clone()) {
            continue;
        }
        let name = format!(
            "上海{}{}有限公司",
            pick(rng, &TRADE_NAMES),
            pick(rng, &INDUSTRIES)
        );
        pool.push(Employer { uscc, name });
    }
    Ok(pool)
}

// ---------------------------------------------------------------------------
// Output

type CsvWriter = csv::Writer<BufWriter<File>>;

/// Permits per shuffle bucket: a bucket's rows are shuffled in memory
/// (about 200 bytes a permit row, with its feed rows a few times that).
const PERMITS_PER_BUCKET: usize = 100_000;
/// Bucket files open at once, per feed.
const MAX_BUCKETS: usize = 64;

/// How the rows of a shuffled layout are put in random order.
struct Shuffle {
    buckets: usize,
    rng: ChaCha8Rng,
}

/// One feed's output file: rows written straight through, or dealt at
/// random into bucket files that [`CsvOut::finish`] shuffles one at a time
/// and appends (a uniform random order in bounded memory).
struct CsvOut {
    path: std::path::PathBuf,
    out: CsvWriter,
    buckets: Vec<(std::path::PathBuf, CsvWriter)>,
}

impl CsvOut {
    fn create(
        out_dir: &Path,
        rel: &str,
        header: &[&str],
        buckets: usize,
    ) -> anyhow::Result<CsvOut> {
        let path = out_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        let mut out = csv_writer(&path)?;
        out.write_record(header)
            .with_context(|| format!("failed to write {}", path.display()))?;
        let buckets = (0..buckets)
            .map(|i| {
                let bucket = path.with_extension(format!("csv.bucket-{i}"));
                csv_writer(&bucket).map(|w| (bucket, w))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(CsvOut { path, out, buckets })
    }

    fn write_record<I, T>(&mut self, record: I, shuffle: Option<&mut Shuffle>) -> anyhow::Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let w = match shuffle {
            Some(s) if !self.buckets.is_empty() => {
                let i = s.rng.random_range(0..self.buckets.len());
                &mut self.buckets[i].1
            }
            _ => &mut self.out,
        };
        Ok(w.write_record(record)?)
    }

    fn finish(mut self, mut shuffle: Option<&mut Shuffle>) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for (bucket, mut w) in std::mem::take(&mut self.buckets) {
            w.flush()
                .with_context(|| format!("failed to write {}", bucket.display()))?;
            drop(w);
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_path(&bucket)
                .with_context(|| format!("failed to read {}", bucket.display()))?;
            rows.clear();
            for row in r.byte_records() {
                rows.push(row.with_context(|| format!("failed to read {}", bucket.display()))?);
            }
            if let Some(s) = shuffle.as_deref_mut() {
                rand::seq::SliceRandom::shuffle(rows.as_mut_slice(), &mut s.rng);
            }
            for row in &rows {
                self.out.write_byte_record(row)?;
            }
            std::fs::remove_file(&bucket)
                .with_context(|| format!("failed to remove {}", bucket.display()))?;
        }
        self.out
            .flush()
            .with_context(|| format!("failed to write {}", self.path.display()))
    }
}

fn csv_writer(path: &Path) -> anyhow::Result<CsvWriter> {
    let file =
        File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
    Ok(csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(BufWriter::with_capacity(1 << 18, file)))
}

struct Writers {
    permits: CsvOut,
    residence: CsvOut,
    social_insurance: CsvOut,
    civil_status: CsvOut,
    shuffle: Option<Shuffle>,
    summary: GenerateSummary,
}

/// How a date is written: mostly ISO, sometimes another form R1 allows.
#[derive(Clone, Copy)]
enum DateForm {
    Iso,
    Slash,
    Compact,
}

fn date_form(rng: &mut ChaCha8Rng) -> DateForm {
    match rng.random_range(0..20u32) {
        0 => DateForm::Slash,
        1 => DateForm::Compact,
        _ => DateForm::Iso,
    }
}

fn push_date(buf: &mut String, d: NaiveDate, form: DateForm) {
    buf.clear();
    let (y, m, day) = (d.year() as u64, u64::from(d.month()), u64::from(d.day()));
    match form {
        DateForm::Iso => {
            push_padded(buf, y, 4);
            buf.push('-');
            push_padded(buf, m, 2);
            buf.push('-');
            push_padded(buf, day, 2);
        }
        DateForm::Slash => {
            push_padded(buf, y, 4);
            buf.push('/');
            push_padded(buf, m, 1);
            buf.push('/');
            push_padded(buf, day, 1);
        }
        DateForm::Compact => {
            push_padded(buf, y, 4);
            push_padded(buf, m, 2);
            push_padded(buf, day, 2);
        }
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_padded(buf: &mut String, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (digits.len() - start)..width {
        buf.push('0');
    }
    buf.extend(digits[start..].iter().map(|&b| char::from(b)));
}

/// The English code mostly, a Chinese label one time in ten.
fn label(
    rng: &mut ChaCha8Rng,
    code: &'static str,
    labels: &'static [&'static str],
) -> &'static str {
    if rng.random_range(0..10u32) == 0 {
        pick(rng, labels)
    } else {
        code
    }
}

fn push_address(buf: &mut String, rng: &mut ChaCha8Rng, street: &Street) {
    buf.clear();
    buf.push_str("上海市");
    buf.push_str(street.district_name);
    buf.push_str(street.name);
    buf.push_str(pick(rng, &ROADS));
    push_padded(buf, rng.random_range(1..1000u64), 1);
    buf.push('弄');
    push_padded(buf, rng.random_range(1..60u64), 1);
    buf.push('号');
    push_padded(buf, rng.random_range(1..31u64), 1);
    push_padded(buf, rng.random_range(1..5u64), 2);
    buf.push('室');
}

impl Writers {
    fn create(out_dir: &Path, shuffle: Option<Shuffle>) -> anyhow::Result<Writers> {
        let n = shuffle.as_ref().map_or(0, |s| s.buckets);
        Ok(Writers {
            permits: CsvOut::create(out_dir, PERMITS_FILE, &PERMITS_HEADER, n)?,
            residence: CsvOut::create(out_dir, RESIDENCE_FILE, &RESIDENCE_HEADER, n)?,
            social_insurance: CsvOut::create(
                out_dir,
                SOCIAL_INSURANCE_FILE,
                &SOCIAL_INSURANCE_HEADER,
                n,
            )?,
            civil_status: CsvOut::create(out_dir, CIVIL_STATUS_FILE, &CIVIL_STATUS_HEADER, n)?,
            shuffle,
            summary: GenerateSummary::default(),
        })
    }

    fn write(
        &mut self,
        h: &Holder,
        numbers: &PermitNumbers,
        ctx: &Inputs,
        rng: &mut ChaCha8Rng,
        s: &mut Scratch,
    ) -> anyhow::Result<()> {
        let street = &ctx.streets[h.street];
        let id = s.id.as_str();

        // permits
        s.permit_no.clear();
        numbers.push(&mut s.permit_no, h.index);
        s.id_field.clear();
        s.id_field.push_str(id);
        if h.lowercase_x {
            s.id_field.pop();
            s.id_field.push('x');
        }
        s.name.clear();
        s.name.push_str(pick(rng, &SURNAMES));
        s.name.push_str(pick(rng, &GIVEN));
        if rng.random_range(0..10u32) < 7 {
            s.name.push_str(pick(rng, &GIVEN));
        }
        s.phone.clear();
        s.email.clear();
        let prefix = pick(rng, &MOBILE_PREFIXES);
        let line = rng.random_range(0..100_000_000u64);
        match h.contact {
            Contact::Phone | Contact::PhoneAndEmail => {
                s.phone.push_str(prefix);
                push_padded(&mut s.phone, line, 8);
            }
            Contact::PhoneFormatted => {
                s.phone.push_str("+86 ");
                s.phone.push_str(prefix);
                s.phone.push('-');
                push_padded(&mut s.phone, line / 10_000, 4);
                s.phone.push('-');
                push_padded(&mut s.phone, line % 10_000, 4);
            }
            Contact::Email | Contact::Nothing => {}
        }
        if matches!(
            h.contact,
            Contact::Email | Contact::PhoneAndEmail | Contact::PhoneFormatted
        ) {
            s.email.push('u');
            push_padded(&mut s.email, rng.random_range(0..100_000_000u64), 8);
            s.email.push('@');
            s.email.push_str(pick(rng, &EMAIL_DOMAINS));
        }
        push_address(&mut s.address, rng, street);
        let form = date_form(rng);
        push_date(&mut s.date, h.valid_until, form);
        let status = if h.status_blank {
            ""
        } else {
            label(rng, h.status.code(), h.status.labels_zh())
        };
        let employer = h.employer.map_or("", |e| ctx.employers[e].uscc.as_str());
        let si_status = label(rng, h.si_status.code(), h.si_status.labels_zh());
        let marital = label(rng, h.marital.code(), h.marital.labels_zh());
        self.permits.write_record(
            [
                s.permit_no.as_str(),
                s.id_field.as_str(),
                s.name.as_str(),
                s.phone.as_str(),
                s.email.as_str(),
                street.district_code,
                street.code,
                s.address.as_str(),
                s.date.as_str(),
                status,
                employer,
                si_status,
                marital,
            ],
            self.shuffle.as_mut(),
        )?;
        self.summary.permits += 1;

        // residence
        for &(on, result) in &s.visits {
            let form = date_form(rng);
            push_date(&mut s.date, on, form);
            let address = match result {
                Changed => {
                    let other = &ctx.streets[rng.random_range(0..ctx.streets.len())];
                    push_address(&mut s.other_address, rng, other);
                    s.other_address.as_str()
                }
                Consistent | NotFound => s.address.as_str(),
            };
            s.officer.clear();
            s.officer.push('P');
            push_padded(&mut s.officer, rng.random_range(0..1_000_000u64), 6);
            self.residence.write_record(
                [
                    id,
                    s.date.as_str(),
                    label(rng, result.code(), result.labels_zh()),
                    address,
                    s.officer.as_str(),
                ],
                self.shuffle.as_mut(),
            )?;
            self.summary.residence += 1;
        }

        // social_insurance
        for &(month, status, employer) in &s.si {
            s.date.clear();
            push_padded(&mut s.date, month.year() as u64, 4);
            if rng.random_range(0..10u32) != 0 {
                s.date.push('-');
            }
            push_padded(&mut s.date, u64::from(month.month()), 2);
            let (uscc, name) = employer.map_or(("", ""), |e| {
                let e = &ctx.employers[e];
                (e.uscc.as_str(), e.name.as_str())
            });
            self.social_insurance.write_record(
                [
                    id,
                    s.date.as_str(),
                    label(rng, status.code(), status.labels_zh()),
                    uscc,
                    name,
                ],
                self.shuffle.as_mut(),
            )?;
            self.summary.social_insurance += 1;
        }

        // civil_status
        if let Some((marital, row_as_of)) = h.civil {
            s.date.clear();
            if let Some(d) = row_as_of {
                push_date(&mut s.date, d, DateForm::Iso);
            }
            self.civil_status.write_record(
                [
                    id,
                    label(rng, marital.code(), marital.labels_zh()),
                    s.date.as_str(),
                ],
                self.shuffle.as_mut(),
            )?;
            self.summary.civil_status += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<GenerateSummary> {
        for out in [
            self.permits,
            self.residence,
            self.social_insurance,
            self.civil_status,
        ] {
            out.finish(self.shuffle.as_mut())?;
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autosign::domain::{parse_date, Email, IdNumber, Phone, Uscc};
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn as_of() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    fn opts(permits: usize, seed: u64, layout: Layout) -> GenerateOptions {
        GenerateOptions {
            permits,
            seed,
            as_of: as_of(),
            layout,
        }
    }

    fn run_in(layout: Layout, permits: usize, seed: u64) -> (tempfile::TempDir, GenerateSummary) {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(&opts(permits, seed, layout), dir.path()).unwrap();
        (dir, summary)
    }

    /// The default layout, shuffled.
    fn run(permits: usize, seed: u64) -> (tempfile::TempDir, GenerateSummary) {
        run_in(Layout::Shuffled, permits, seed)
    }

    fn read(dir: &Path, rel: &str) -> Vec<u8> {
        std::fs::read(dir.join(rel)).unwrap()
    }

    fn rows(dir: &Path, rel: &str) -> Vec<csv::StringRecord> {
        let mut r = csv::Reader::from_path(dir.join(rel)).unwrap();
        r.records().map(Result::unwrap).collect()
    }

    const FILES: [&str; 4] = [
        PERMITS_FILE,
        RESIDENCE_FILE,
        SOCIAL_INSURANCE_FILE,
        CIVIL_STATUS_FILE,
    ];

    #[test]
    fn writes_the_spec_headers_into_the_inbox_layout() {
        let (dir, _) = run(10, 1);
        let first_line = |rel| {
            let text = String::from_utf8(read(dir.path(), rel)).unwrap();
            text.lines().next().unwrap().to_owned()
        };
        assert_eq!(
            first_line(PERMITS_FILE),
            "permit_no,id_number,name,phone,email,district_code,street_code,address,valid_until,\
             status,employer_uscc,si_status,marital_status"
        );
        assert_eq!(
            first_line(RESIDENCE_FILE),
            "id_number,visited_on,result,address,officer_id"
        );
        assert_eq!(
            first_line(SOCIAL_INSURANCE_FILE),
            "id_number,month,status,employer_uscc,employer_name"
        );
        assert_eq!(
            first_line(CIVIL_STATUS_FILE),
            "id_number,marital_status,as_of"
        );
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_another_seed_differs() {
        let (a, sa) = run(500, 42);
        let (b, sb) = run(500, 42);
        let (c, _) = run(500, 43);
        assert_eq!(sa, sb);
        for rel in FILES {
            assert_eq!(read(a.path(), rel), read(b.path(), rel), "{rel}");
        }
        assert_ne!(read(a.path(), PERMITS_FILE), read(c.path(), PERMITS_FILE));
    }

    #[test]
    fn a_smaller_sorted_data_set_is_a_prefix_of_a_larger_one() {
        let (small, _) = run_in(Layout::Sorted, 120, 7);
        let (large, _) = run_in(Layout::Sorted, 400, 7);
        for rel in FILES {
            let s = read(small.path(), rel);
            let l = read(large.path(), rel);
            assert!(l.starts_with(&s), "{rel}");
        }
    }

    #[test]
    fn the_shuffled_layout_holds_the_sorted_rows_in_another_order_with_unordered_numbers() {
        // More than one bucket, so the shuffle's merge is exercised.
        let n = PERMITS_PER_BUCKET + 500;
        let (sorted, ss) = run_in(Layout::Sorted, n, 11);
        let (shuffled, sh) = run_in(Layout::Shuffled, n, 11);
        assert_eq!(ss, sh);
        for rel in FILES {
            let mut a: Vec<Vec<String>> = rows(sorted.path(), rel)
                .iter()
                .map(|r| r.iter().map(str::to_owned).collect())
                .collect();
            let mut b: Vec<Vec<String>> = rows(shuffled.path(), rel)
                .iter()
                .map(|r| r.iter().map(str::to_owned).collect())
                .collect();
            assert_ne!(a, b, "{rel}: rows not shuffled");
            if rel == PERMITS_FILE {
                // The permit numbers differ; the rest of each row is the same.
                let numbers: HashSet<String> = b.iter().map(|r| r[0].clone()).collect();
                assert_eq!(numbers.len(), n, "permit numbers are unique");
                let ascending = b.windows(2).filter(|w| w[0][0] < w[1][0]).count();
                assert!(
                    (n * 2 / 5..n * 3 / 5).contains(&ascending),
                    "{ascending} of {n} neighbours ascend: not random"
                );
                for r in a.iter_mut().chain(b.iter_mut()) {
                    assert!(r[0].starts_with("SH") && r[0].len() == 12, "{}", r[0]);
                    r[0].clear();
                }
            }
            a.sort();
            b.sort();
            assert!(a == b, "{rel}: the layouts hold different rows");
        }
        let left: Vec<_> = std::fs::read_dir(shuffled.path().join("permits"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["permits.csv"], "bucket files removed");
    }

    #[test]
    fn zero_permits_writes_headers_only() {
        let (dir, summary) = run(0, 1);
        assert_eq!(summary, GenerateSummary::default());
        for rel in FILES {
            assert_eq!(rows(dir.path(), rel).len(), 0);
        }
    }

    #[test]
    fn every_generated_value_parses() {
        let (dir, summary) = run(3000, 9);
        let permits = rows(dir.path(), PERMITS_FILE);
        assert_eq!(permits.len(), summary.permits);
        let streets = parse_streets(STREETS_CSV).unwrap();
        let street_codes: HashMap<&str, &str> =
            streets.iter().map(|s| (s.code, s.district_code)).collect();
        let mut permit_nos = HashSet::new();
        let mut ids = HashSet::new();
        let mut lowercase_x = 0;
        let c3: HashSet<String> = scenarios(&opts(SCENARIO_COUNT, 9, Layout::Shuffled))
            .into_iter()
            .filter(|s| s.description.contains("(C3)"))
            .map(|s| s.permit_no)
            .collect();
        assert_eq!(c3.len(), 1);
        for p in &permits {
            assert!(
                permit_nos.insert(p[0].to_owned()),
                "duplicate permit_no {}",
                &p[0]
            );
            let id = IdNumber::parse(&p[1]).unwrap_or_else(|e| panic!("{}: {e}", &p[1]));
            lowercase_x += usize::from(p[1].ends_with('x'));
            assert!(ids.insert(id), "duplicate id_number");
            assert!(!p[2].is_empty());
            if !p[3].is_empty() {
                Phone::parse(&p[3]).unwrap_or_else(|e| panic!("{}: {e}", &p[3]));
            }
            if !p[4].is_empty() {
                Email::parse(&p[4]).unwrap_or_else(|e| panic!("{}: {e}", &p[4]));
            }
            assert_eq!(street_codes.get(&p[6]), Some(&&p[5]));
            assert!(p[7].starts_with("上海市"));
            parse_date(&p[8]).unwrap();
            if !p[9].is_empty() {
                PermitStatus::parse(&p[9]).unwrap();
            }
            let si = SiStatus::parse(&p[11]).unwrap();
            if !p[10].is_empty() {
                assert!(Uscc::parse(&p[10]).unwrap().check_ok(), "{}", &p[10]);
            } else {
                // Only the C3 scenario pays without an employer.
                assert!(si == SiStatus::NotPaying || c3.contains(&p[0]), "{}", &p[0]);
            }
            MaritalStatus::parse(&p[12]).unwrap();
        }
        assert!(lowercase_x > 0);
        for r in rows(dir.path(), RESIDENCE_FILE) {
            IdNumber::parse(&r[0]).unwrap();
            parse_date(&r[1]).unwrap();
            ResidenceResult::parse(&r[2]).unwrap();
        }
        for r in rows(dir.path(), SOCIAL_INSURANCE_FILE) {
            IdNumber::parse(&r[0]).unwrap();
            Month::parse(&r[1]).unwrap();
            let status = PaymentStatus::parse(&r[2]).unwrap();
            if status == PaymentStatus::Paid {
                assert!(!r[3].is_empty(), "paid row without employer");
            }
            if !r[3].is_empty() {
                assert!(Uscc::parse(&r[3]).unwrap().check_ok());
            }
        }
        for r in rows(dir.path(), CIVIL_STATUS_FILE) {
            IdNumber::parse(&r[0]).unwrap();
            MaritalStatus::parse(&r[1]).unwrap();
            if !r[2].is_empty() {
                parse_date(&r[2]).unwrap();
            }
        }
        assert_eq!(rows(dir.path(), RESIDENCE_FILE).len(), summary.residence);
        assert_eq!(
            rows(dir.path(), SOCIAL_INSURANCE_FILE).len(),
            summary.social_insurance
        );
        assert_eq!(
            rows(dir.path(), CIVIL_STATUS_FILE).len(),
            summary.civil_status
        );
    }

    #[test]
    fn random_ids_are_unique_across_the_permutation() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let space = IdSpace::new(&mut rng).unwrap();
        let mut seen = HashSet::new();
        let mut id = String::new();
        for i in 0..200_000u64 {
            let parts = space.id_of(i).unwrap();
            assert!((1..=999).contains(&parts.seq));
            build_id(&mut id, parts.region, parts.birth, parts.seq).unwrap();
            assert!(seen.insert(id.clone()));
        }
        assert!(space.id_of(space.capacity).is_err());
    }

    /// What a run at `as_of` decides for a permit, computed straight from
    /// R3–R6 with the default settings.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        Event(EventKind, Vec<Reason>),
        Pending(Vec<Reason>),
        Nothing,
    }

    impl From<ScenarioOutcome> for Outcome {
        fn from(o: ScenarioOutcome) -> Outcome {
            match o {
                ScenarioOutcome::Event(k, r) => Outcome::Event(k, r.to_vec()),
                ScenarioOutcome::Pending(r) => Outcome::Pending(r.to_vec()),
                ScenarioOutcome::Nothing => Outcome::Nothing,
            }
        }
    }

    /// A reference evaluation of the generated feeds (one import, one run).
    fn evaluate(dir: &Path, as_of: NaiveDate) -> BTreeMap<String, (Outcome, Channel)> {
        let mut visits: HashMap<IdNumber, Vec<(NaiveDate, ResidenceResult)>> = HashMap::new();
        for r in rows(dir, RESIDENCE_FILE) {
            let id = IdNumber::parse(&r[0]).unwrap();
            let on = parse_date(&r[1]).unwrap();
            visits
                .entry(id)
                .or_default()
                .push((on, ResidenceResult::parse(&r[2]).unwrap()));
        }
        let mut si: HashMap<IdNumber, Vec<(Month, PaymentStatus, String)>> = HashMap::new();
        for r in rows(dir, SOCIAL_INSURANCE_FILE) {
            let id = IdNumber::parse(&r[0]).unwrap();
            let row = (
                Month::parse(&r[1]).unwrap(),
                PaymentStatus::parse(&r[2]).unwrap(),
                r[3].to_owned(),
            );
            si.entry(id).or_default().push(row);
        }
        let mut civil: HashMap<IdNumber, (MaritalStatus, Option<NaiveDate>)> = HashMap::new();
        for r in rows(dir, CIVIL_STATUS_FILE) {
            let row_as_of = (!r[2].is_empty()).then(|| parse_date(&r[2]).unwrap());
            civil.insert(
                IdNumber::parse(&r[0]).unwrap(),
                (MaritalStatus::parse(&r[1]).unwrap(), row_as_of),
            );
        }
        let mut out = BTreeMap::new();
        for p in rows(dir, PERMITS_FILE) {
            let id = IdNumber::parse(&p[1]).unwrap();
            let channel = if !p[3].is_empty() {
                Channel::Sms
            } else if !p[4].is_empty() {
                Channel::Email
            } else {
                Channel::None
            };
            let vu = parse_date(&p[8]).unwrap();
            let status = if p[9].is_empty() {
                PermitStatus::Active
            } else {
                PermitStatus::parse(&p[9]).unwrap()
            };
            let left = (vu - as_of).num_days();
            let outcome = if status == PermitStatus::Cancelled {
                Outcome::Nothing
            } else if left < -60 {
                Outcome::Event(EventKind::Cancelled, vec![])
            } else if left < 0 {
                if status == PermitStatus::Active {
                    Outcome::Event(EventKind::Suspended, vec![])
                } else {
                    Outcome::Nothing
                }
            } else if status != PermitStatus::Active || left > 30 {
                Outcome::Nothing
            } else {
                let mut reasons = vec![];
                let window_start = vu - TimeDelta::days(30);
                let visit = visits
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|(on, _)| window_start <= *on && *on <= as_of)
                    .max_by_key(|(on, _)| *on);
                match visit {
                    None => reasons.push(Reason::AddressNotVerified),
                    Some((_, ResidenceResult::Consistent)) => {}
                    Some(_) => reasons.push(Reason::AddressChanged),
                }
                let m0 = Month::of(as_of);
                let latest = si
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|(m, _, _)| m0.minus(2) <= *m && *m <= m0)
                    .max_by_key(|(m, _, _)| *m);
                match (SiStatus::parse(&p[11]).unwrap(), latest) {
                    (SiStatus::Paying, None) => reasons.push(Reason::SocialInsuranceMissing),
                    (SiStatus::Paying, Some((_, PaymentStatus::Paid, employer))) => {
                        if employer.as_str() != &p[10] {
                            reasons.push(Reason::EmployerChanged);
                        }
                    }
                    (SiStatus::Paying, Some(_)) => reasons.push(Reason::SocialInsuranceChanged),
                    (SiStatus::NotPaying, Some((_, PaymentStatus::Paid, _))) => {
                        reasons.push(Reason::SocialInsuranceChanged)
                    }
                    (SiStatus::NotPaying, _) => {}
                }
                if let Some((m, row_as_of)) = civil.get(&id) {
                    if row_as_of.is_none_or(|d| d <= as_of)
                        && *m != MaritalStatus::parse(&p[12]).unwrap()
                    {
                        reasons.push(Reason::MaritalStatusChanged);
                    }
                }
                if reasons.is_empty() {
                    Outcome::Event(EventKind::AutoSigned, reasons)
                } else if reasons.iter().all(|r| r.awaits_evidence()) && left > 7 {
                    Outcome::Pending(reasons)
                } else {
                    Outcome::Event(EventKind::VisitCenter, reasons)
                }
            };
            out.insert(p[0].to_owned(), (outcome, channel));
        }
        out
    }

    #[test]
    fn scenario_permits_get_their_documented_outcome() {
        let (dir, _) = run(300, 42);
        let outcomes = evaluate(dir.path(), as_of());
        let scenarios = scenarios(&opts(300, 42, Layout::Shuffled));
        assert_eq!(scenarios.len(), SCENARIO_COUNT);
        for s in &scenarios {
            let (outcome, channel) = &outcomes[&s.permit_no];
            assert_eq!(
                *outcome,
                Outcome::from(s.outcome),
                "{} {}",
                s.permit_no,
                s.description
            );
            assert_eq!(*channel, s.channel, "{} {}", s.permit_no, s.description);
        }
        assert_eq!(super::scenarios(&opts(5, 1, Layout::Sorted)).len(), 5);
    }

    #[test]
    fn a_small_data_set_exercises_every_outcome_reason_and_channel() {
        for seed in [42, 1, 2] {
            let (dir, _) = run(300, seed);
            let outcomes = evaluate(dir.path(), as_of());
            let mut kinds = HashSet::new();
            let mut visit_reasons = HashSet::new();
            let mut pending = false;
            let mut channels = HashSet::new();
            for (outcome, channel) in outcomes.values() {
                match outcome {
                    Outcome::Event(kind, reasons) => {
                        kinds.insert(*kind);
                        channels.insert(*channel);
                        if *kind == EventKind::VisitCenter {
                            visit_reasons.extend(reasons.iter().copied());
                        }
                    }
                    Outcome::Pending(_) => pending = true,
                    Outcome::Nothing => {}
                }
            }
            assert_eq!(kinds.len(), EventKind::ALL.len());
            assert_eq!(visit_reasons.len(), Reason::ALL.len());
            assert_eq!(channels.len(), Channel::ALL.len());
            assert!(pending);
        }
    }

    #[test]
    fn random_permits_have_realistic_proportions() {
        let n = 20_000;
        let (dir, summary) = run(n, 3);
        let outcomes = evaluate(dir.path(), as_of());
        let count = |f: &dyn Fn(&Outcome) -> bool| {
            outcomes
                .values()
                .skip(SCENARIO_COUNT)
                .filter(|(o, _)| f(o))
                .count() as f64
                / n as f64
        };
        let auto = count(&|o| matches!(o, Outcome::Event(EventKind::AutoSigned, _)));
        let visit = count(&|o| matches!(o, Outcome::Event(EventKind::VisitCenter, _)));
        let pending = count(&|o| matches!(o, Outcome::Pending(_)));
        // About 31/455 ≈ 6.8% of permits are due; most of them pass.
        assert!((0.04..0.07).contains(&auto), "auto {auto}");
        assert!((0.003..0.02).contains(&visit), "visit {visit}");
        assert!(pending > 0.0005, "pending {pending}");
        assert!(summary.social_insurance > 2 * n && summary.social_insurance < 3 * n);
        assert!(summary.civil_status > n / 2 && summary.civil_status < 2 * n / 3);
    }
}
