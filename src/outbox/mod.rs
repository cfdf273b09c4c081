//! The transactional outbox (R8). The run writes each notice in the same
//! transaction as its event ([`notice`] composes the text); delivery is a
//! separate step ([`delivery`]: claim → send → mark) over two channels, an
//! HTTP SMS gateway ([`sms`]) and an SMTP relay ([`email`]), with the
//! retry, quiet-hours and pacing policy in [`policy`].

pub mod channel;
pub mod delivery;
pub mod email;
pub mod notice;
pub mod policy;
pub mod sms;

pub use channel::DeliveryError;
pub use delivery::{deliver, run_worker, Channels, DeliveryOutcome};

/// rustls needs one process-wide crypto provider; both HTTP and SMTP use
/// *ring* (no C toolchain beyond what *ring* needs, no aws-lc build).
pub(crate) fn install_crypto_provider() {
    // Err means one is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
