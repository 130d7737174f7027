//! Cross-crate tests of the serverless shape live in `tests/`; this library is empty.
