//! Exit codes (documented in the README) and the error type that maps to them.

/// Every task completed.
pub const OK: u8 = 0;
/// The run finished, but some tasks failed or were cancelled (or are still pending).
pub const TASKS_FAILED: u8 = 1;
/// Invalid input (task file, config, flags, unknown task id): nothing was run or changed.
pub const INPUT: u8 = 2;
/// The command could not do its work (database locked by another runner, I/O failure).
pub const RUNTIME: u8 = 3;
/// Stopped by Ctrl-C or SIGTERM; run the same command again to continue.
pub const INTERRUPTED: u8 = 130;

/// A command failure, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit 2.
    Input(anyhow::Error),
    /// Could not run: exit 3.
    Runtime(anyhow::Error),
}

impl Failure {
    /// Bad input.
    pub fn input(e: anyhow::Error) -> Self {
        Self::Input(e)
    }

    /// Could not run.
    pub fn runtime(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }

    /// The exit code.
    #[must_use]
    pub fn code(&self) -> u8 {
        match self {
            Self::Input(_) => INPUT,
            Self::Runtime(_) => RUNTIME,
        }
    }

    /// The error.
    #[must_use]
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::Input(e) | Self::Runtime(e) => e,
        }
    }
}
