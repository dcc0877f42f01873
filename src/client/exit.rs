//! How a command ends: what it prints and the process exit code, decided in one place.
//!
//! Every subcommand (the client commands here, `import`, `bench`, `workload`, even `node`)
//! hands the launcher an [`Ending`], and [`Ending::finish`] prints it and picks the exit code.
//! The policy, for scripts that call the binary:
//!
//! * **0** — the command did what was asked. Its output is on stdout.
//! * **1** — it could not (node unreachable, bad input, a flag out of range): one
//!   `error: …` line on stderr, after whatever it printed before failing.
//! * **1** as well — it ran to the end but what it found counts as a failure (an import with
//!   rejected rows, a failover workload that saw a lost write or a stale read): the full
//!   report on stdout, and on stderr an `error: …` line when the report alone does not say so.
//!
//! When the reader of stdout goes away early (`customer-cluster list --all | head`), the
//! command stops writing and exits quietly with the code it earned anyway — 0 when it did what
//! was asked: the reader chose to stop reading, which is not the command failing (a script
//! under `set -o pipefail` is not failed by `| head`; ripgrep does the same). Nothing panics
//! and nothing is said on stderr. Any other failure to write stdout (a full disk behind `>`)
//! is a failure: `error: cannot write the output: …` and exit code 1.
//!
//! Deliberately not done: distinct exit codes per kind of failure. Every caller so far only
//! asks "did it work", and the message on stderr says why not.

use std::fmt::Display;
use std::io::{self, Write};
use std::process::ExitCode;

/// How a command ended. Its variants are the exit-code policy (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Did what was asked: `stdout` printed as is; exit code 0.
    Done(String),
    /// Ran to the end, but what it found counts as a failure: `stdout` printed as is, then
    /// `error`, if any, as one `error: …` line on stderr; exit code 1.
    Findings {
        /// The command's report.
        stdout: String,
        /// Said on stderr when the report alone does not make the failure plain.
        error: Option<String>,
    },
    /// Could not do what was asked: `error` as one `error: …` line on stderr; exit code 1.
    Failed(String),
}

impl Ending {
    /// A command that could not do what was asked, for this reason.
    pub fn failed(err: &dyn Display) -> Self {
        Self::Failed(err.to_string())
    }

    /// A command whose output is one text printed as a line (the client commands): the text
    /// and a newline on success, else the error.
    pub fn line<E: Display>(result: Result<String, E>) -> Self {
        match result {
            Ok(text) => Self::Done(text + "\n"),
            Err(e) => Self::failed(&e),
        }
    }

    /// A command whose output is printed exactly as it comes (it ends its own lines).
    pub fn text<E: Display>(result: Result<String, E>) -> Self {
        match result {
            Ok(text) => Self::Done(text),
            Err(e) => Self::failed(&e),
        }
    }

    /// The process exit code for this ending.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Done(_) => ExitCode::SUCCESS,
            Self::Findings { .. } | Self::Failed(_) => ExitCode::FAILURE,
        }
    }

    /// Prints the ending: its stdout text as is, its error as `error: …` on stderr. A stdout
    /// that cannot be written (the reader went away) is not a panic; use [`Ending::finish`]
    /// to also turn that into the right exit code.
    pub fn print(&self) {
        let _ = self.write_to(&mut io::stdout().lock(), &mut io::stderr().lock());
    }

    /// Writes the ending: its stdout text to `out` (flushed), then its error, if any, as
    /// `error: …` to `err`. The error line is written even when `out` failed; failing to
    /// write `err` is ignored (there is nowhere left to say so). Returns how writing `out`
    /// went.
    pub fn write_to(&self, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
        let (stdout, error) = match self {
            Self::Done(out) => (out.as_str(), None),
            Self::Findings { stdout, error } => (stdout.as_str(), error.as_deref()),
            Self::Failed(error) => ("", Some(error.as_str())),
        };
        let written = out.write_all(stdout.as_bytes()).and_then(|()| out.flush());
        if let Some(e) = error {
            let _ = writeln!(err, "error: {e}");
        }
        written
    }

    /// The exit code once the ending was written: its own code, also when the reader went
    /// away early; 1 when stdout could not be written for any other reason.
    pub fn exit_code_after(&self, written: &io::Result<()>) -> ExitCode {
        match written {
            Err(e) if !reader_gone(e) => ExitCode::FAILURE,
            _ => self.exit_code(),
        }
    }

    /// Prints the ending and returns the exit code: the last thing a command does.
    pub fn finish(self) -> ExitCode {
        let written = self.write_to(&mut io::stdout().lock(), &mut io::stderr().lock());
        if let Err(e) = &written
            && !reader_gone(e)
        {
            let _ = writeln!(io::stderr(), "error: cannot write the output: {e}");
        }
        self.exit_code_after(&written)
    }
}

/// Whether a failed write to stdout means its reader went away (`| head` closed the pipe):
/// the command then stops writing and exits quietly (see the module doc).
pub fn reader_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

/// How a command that writes as it goes (`status --watch`) ends when a write failed: quietly,
/// as done, when the reader went away; else a failure naming the write error.
pub fn after_write_error(err: &io::Error) -> Ending {
    if reader_gone(err) {
        Ending::Done(String::new())
    } else {
        Ending::Failed(format!("cannot write the output: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_command_that_did_what_was_asked_exits_zero() {
        assert_eq!(Ending::Done("x\n".into()).exit_code(), ExitCode::SUCCESS);
        assert_eq!(Ending::Done(String::new()).exit_code(), ExitCode::SUCCESS);
        let findings = Ending::Findings {
            stdout: "created 3 row(s), rejected 1 row(s)\n".into(),
            error: None,
        };
        assert_eq!(findings.exit_code(), ExitCode::FAILURE);
        assert_eq!(
            Ending::failed(&"node unreachable").exit_code(),
            ExitCode::FAILURE
        );
    }

    #[test]
    fn a_line_command_ends_its_output_with_a_newline_and_a_text_command_does_not() {
        let ok: Result<String, String> = Ok("id: 1".into());
        assert_eq!(Ending::line(ok.clone()), Ending::Done("id: 1\n".into()));
        assert_eq!(Ending::text(ok), Ending::Done("id: 1".into()));
        let err: Result<String, String> = Err("cannot reach node".into());
        assert_eq!(
            Ending::line(err.clone()),
            Ending::Failed("cannot reach node".into())
        );
        assert_eq!(
            Ending::text(err),
            Ending::Failed("cannot reach node".into())
        );
    }

    /// A writer whose reader went away, as stdout is after `| head` closed the pipe.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_reader_that_goes_away_early_is_not_a_failure_of_the_command() {
        let done = Ending::Done("a long table\n".into());
        let written = done.write_to(&mut ClosedPipe, &mut Vec::new());
        assert!(written.is_err());
        assert_eq!(done.exit_code_after(&written), ExitCode::SUCCESS);
        let findings = Ending::Findings {
            stdout: "created 1 row(s), rejected 1 row(s)\n".into(),
            error: None,
        };
        let written = findings.write_to(&mut ClosedPipe, &mut Vec::new());
        assert_eq!(findings.exit_code_after(&written), ExitCode::FAILURE);
        assert_eq!(
            after_write_error(&io::ErrorKind::BrokenPipe.into()),
            Ending::Done(String::new())
        );
    }

    #[test]
    fn a_stdout_that_cannot_be_written_for_another_reason_fails_the_command() {
        let done = Ending::Done("x\n".into());
        let full: io::Result<()> = Err(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(done.exit_code_after(&full), ExitCode::FAILURE);
        assert!(
            matches!(after_write_error(&io::ErrorKind::StorageFull.into()), Ending::Failed(m) if m.starts_with("cannot write the output"))
        );
    }

    #[test]
    fn the_error_line_goes_to_stderr_even_when_stdout_is_gone() {
        let findings = Ending::Findings {
            stdout: "report\n".into(),
            error: Some("2 stale reads".into()),
        };
        let mut err = Vec::new();
        let _ = findings.write_to(&mut ClosedPipe, &mut err);
        assert_eq!(String::from_utf8(err).unwrap(), "error: 2 stale reads\n");
        let mut out = Vec::new();
        findings.write_to(&mut out, &mut Vec::new()).unwrap();
        assert_eq!(out, b"report\n");
    }
}
