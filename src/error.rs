//! The one error type that reaches `main`, and the exit status it maps to
//! (R11): 1 runtime failure, 2 usage/configuration/refused operation,
//! 3 input file refused; and 4, a run held by the safety brake
//! (docs/rules.md, "Exit status 4").

/// An error that ends a command. The message is one line, already naming
/// the file, line and field where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration (exit 2).
    #[error("{0}")]
    Config(String),
    /// A bad command-line value (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A refused operation, e.g. a run for an earlier `as_of` (exit 2).
    #[error("{0}")]
    Refused(String),
    /// An input file refused whole: missing column, undecodable, too many
    /// rejected rows (exit 3).
    #[error("{0}")]
    InputRefused(String),
    /// The run was held by the safety brake (exit 4): its decisions are
    /// recorded, not applied or notified, until `autosign release` or
    /// `autosign discard`. The message is the alert.
    #[error("{0}")]
    Held(String),
    /// Database failure (exit 1).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migration failure (exit 1).
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other runtime failure: I/O and the like (exit 1).
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) | Error::Refused(_) => 2,
            Error::InputRefused(_) => 3,
            Error::Held(_) => 4,
            Error::Db(_) | Error::Migrate(_) | Error::Runtime(_) => 1,
        }
    }

    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        Error::Runtime(anyhow::anyhow!("{context}: {err}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
