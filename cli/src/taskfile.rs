//! Task files: JSON Lines, one `BenchmarkTask` per line. The whole file is validated before
//! anything runs, and every problem is reported with its line number and field.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use taskexec_core::task::BenchmarkTask;
use taskexec_core::validate::{FieldError, parse_task};

/// One problem on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The problem.
    pub error: FieldError,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// What a valid file holds, in brief (tasks are read again, in chunks, when submitted).
#[derive(Debug, Clone, Default)]
pub struct FileCheck {
    /// Tasks in the file.
    pub tasks: usize,
    /// The runs they belong to (after defaulting).
    pub runs: BTreeSet<String>,
}

/// Validate every line of `path`: JSON, contract limits, duplicate ids, and `check_task` (the
/// deployment exists and accepts the task's parameters: `Deployments::check`).
pub fn check(
    path: &Path,
    default_run: &str,
    check_task: &dyn Fn(&BenchmarkTask) -> Vec<FieldError>,
) -> anyhow::Result<Result<FileCheck, Vec<LineError>>> {
    let mut errors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut summary = FileCheck::default();
    for_each_line(path, |line, text| {
        let mut push = |field: &str, message: String| {
            errors.push(LineError { line, error: FieldError { field: field.into(), message } });
        };
        match parse_task(text) {
            Err(problems) => errors.extend(problems.into_iter().map(|error| LineError { line, error })),
            Ok(task) => {
                for error in check_task(&task) {
                    push(&error.field, error.message);
                }
                if let Some(first) = seen.insert(task.id.clone(), line) {
                    push("id", format!("duplicate id `{}` (first on line {first})", task.id));
                }
                summary.tasks += 1;
                summary.runs.insert(task.run_or(default_run).to_owned());
            }
        }
    })?;
    if summary.tasks == 0 && errors.is_empty() {
        errors.push(LineError {
            line: 0,
            error: FieldError { field: String::new(), message: "the file holds no tasks".into() },
        });
    }
    Ok(if errors.is_empty() { Ok(summary) } else { Err(errors) })
}

/// Read the (already checked) tasks of `path` in chunks of `chunk`, run ids defaulted.
pub fn read_chunks(
    path: &Path,
    default_run: &str,
    chunk: usize,
    mut each: impl FnMut(Vec<(usize, BenchmarkTask)>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(chunk);
    let mut failure = None;
    for_each_line(path, |line, text| {
        if failure.is_some() {
            return;
        }
        let Ok(mut task) = parse_task(text) else { return };
        task.run_id.get_or_insert_with(|| default_run.to_owned());
        batch.push((line, task));
        if batch.len() == chunk {
            failure = each(std::mem::replace(&mut batch, Vec::with_capacity(chunk))).err();
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if !batch.is_empty() {
        each(batch)?;
    }
    Ok(())
}

fn for_each_line(path: &Path, mut f: impl FnMut(usize, &str)) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open task file {}", path.display()))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read line {} of {}", i + 1, path.display()))?;
        if !line.trim().is_empty() {
            f(i + 1, &line);
        }
    }
    Ok(())
}

/// The default run id of a task file: its file stem, made a valid id.
#[must_use]
pub fn default_run_id(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    let cleaned: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') { c } else { '-' })
        .collect();
    let cleaned =
        cleaned.trim_start_matches(|c: char| !c.is_ascii_alphanumeric()).chars().take(128).collect::<String>();
    if cleaned.is_empty() { "run".into() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(lines: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
        f.write_all(lines.as_bytes()).unwrap();
        f
    }

    fn deployments() -> impl Fn(&BenchmarkTask) -> Vec<FieldError> {
        |task| {
            if task.provider_id == "sim" {
                return Vec::new();
            }
            let message = format!("unknown deployment `{}` (configured: sim)", task.provider_id);
            vec![FieldError { field: "providerId".into(), message }]
        }
    }

    #[test]
    fn reports_every_bad_line_with_line_and_field() {
        let f = file(concat!(
            "{\"id\":\"a\",\"providerId\":\"sim\",\"modelId\":\"m\",\"prompt\":\"ok\"}\n",
            "\n",
            "{\"id\":\"b\",\"providerId\":\"nope\",\"modelId\":\"m\",\"prompt\":\"x\"}\n",
            "{\"id\":\"a\",\"providerId\":\"sim\",\"modelId\":\"m\",\"prompt\":\"again\"}\n",
            "{oops\n",
        ));
        let errors = check(f.path(), "r", &deployments()).unwrap().unwrap_err();
        let got: Vec<_> = errors.iter().map(|e| (e.line, e.error.field.as_str())).collect();
        assert_eq!(got, [(3, "providerId"), (4, "id"), (5, "")]);
        assert_eq!(errors[0].to_string(), "line 3: field `providerId`: unknown deployment `nope` (configured: sim)");
        assert!(errors[1].to_string().contains("first on line 1"));
    }

    #[test]
    fn a_valid_file_is_summarised_and_read_in_chunks() {
        let f = file(concat!(
            "{\"id\":\"a\",\"providerId\":\"sim\",\"modelId\":\"m\",\"prompt\":\"1\"}\n",
            "{\"id\":\"b\",\"providerId\":\"sim\",\"modelId\":\"m\",\"prompt\":\"2\",\"runId\":\"other\"}\n",
            "{\"id\":\"c\",\"providerId\":\"sim\",\"modelId\":\"m\",\"prompt\":\"3\"}\n",
        ));
        let summary = check(f.path(), "r", &deployments()).unwrap().unwrap();
        assert_eq!(summary.tasks, 3);
        assert_eq!(summary.runs, ["other".to_owned(), "r".to_owned()].into());
        let mut chunks = Vec::new();
        read_chunks(f.path(), "r", 2, |c| {
            chunks.push(c.iter().map(|(l, t)| (*l, t.run_id.clone().unwrap())).collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
        assert_eq!(chunks, [vec![(1, "r".into()), (2, "other".into())], vec![(3, "r".into())]]);
    }

    #[test]
    fn empty_file_is_an_error_and_run_ids_default_to_the_stem() {
        let f = file("\n\n");
        assert_eq!(
            check(f.path(), "r", &deployments()).unwrap().unwrap_err()[0].error.message,
            "the file holds no tasks"
        );
        assert_eq!(default_run_id(Path::new("dir/quickstart.jsonl")), "quickstart");
        assert_eq!(default_run_id(Path::new("my tasks (v2).jsonl")), "my-tasks--v2-");
    }
}
