//! The transactional outbox (R8): notices are written by the run in the same
//! transaction as their event (see `db::Db::write_batch`); this module
//! composes their text. Delivery (claim → send → mark) is a separate step.

pub mod notice;
