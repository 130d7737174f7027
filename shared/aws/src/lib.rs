//! taskexec-aws (being built).
