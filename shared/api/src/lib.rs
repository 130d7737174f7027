//! taskexec-api (being built).
