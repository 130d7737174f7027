//! Where the CLI finds its run configuration: `--config FILE`, else `FILE.toml` beside the task
//! file, else `./taskexec.toml`, else the built-in one. The format itself is
//! `taskexec_providers::settings::RunConfig`, shared with the Lambda functions.

use std::path::{Path, PathBuf};

use anyhow::Context;
pub use taskexec_providers::settings::RunConfig as Config;

/// The config to use: `explicit`, else `<tasks file stem>.toml` beside the tasks file (when
/// there is one), else `taskexec.toml` in the working directory, else the built-in one (a
/// single `sim` deployment). Returns where it came from.
pub fn locate(explicit: Option<&Path>, tasks: Option<&Path>) -> anyhow::Result<(Config, String)> {
    if let Some(path) = explicit {
        return Ok((load(path)?, path.display().to_string()));
    }
    let beside = tasks.map(|t| t.with_extension("toml"));
    for candidate in beside.into_iter().chain([PathBuf::from("taskexec.toml")]) {
        if candidate.is_file() {
            return Ok((load(&candidate)?, candidate.display().to_string()));
        }
    }
    Ok((Config::builtin(), "built-in (one `sim` deployment)".into()))
}

/// Read and check a config file.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    Config::parse(&text).with_context(|| format!("invalid config {}", path.display()))
}
