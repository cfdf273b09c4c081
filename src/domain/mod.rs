//! Domain value types, parsed once at the edge.
//!
//! A raw string from a CSV row, a CLI argument, the configuration or a
//! database row becomes one of these types exactly once; past that edge the
//! rest of the crate takes `IdNumber`, `Uscc`, `Phone`, … and never re-checks
//! them. Each type keeps its value private, parses with `parse(&str)` (the
//! input is trimmed first) and has an error enum of its own whose messages are
//! short lowercase phrases meant to follow a field name
//! (`id_number: check character is 5, expected X`). Personal data is masked in
//! `Debug` output and never echoed by an error message.

mod contact;
mod dates;
mod enums;
mod feed;
mod id_number;
mod mask;
#[cfg(test)]
mod props;
mod reasons;
mod uscc;

pub use contact::{Email, EmailError, Phone, PhoneError};
pub use dates::{add_one_year, parse_date, DateError, Month, MonthError};
pub use enums::{
    Channel, CycleDecision, Effect, EnumError, EventKind, EventState, MaritalStatus, NoticeStatus,
    PaymentStatus, PermitStatus, Reason, ResidenceResult, RunStatus, SiStatus,
};
pub(crate) use feed::normalise as normalise_header;
pub use feed::{Delivery, Encoding, Feed, HeaderNames};
pub use id_number::{id_check_char, IdNumber, IdNumberError};
pub use mask::{
    escape_controls, escape_controls_in_lines, mask_id_str, mask_name, mask_numbers_in_text,
    mask_text,
};
pub use reasons::Reasons;
pub use uscc::{uscc_check_char, Uscc, UsccError, USCC_ALPHABET};
