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
//! Deliberately not done: distinct exit codes per kind of failure. Every caller so far only
//! asks "did it work", and the message on stderr says why not.

use std::fmt::Display;
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

    /// Prints the ending: its stdout text as is, its error as `error: …` on stderr.
    pub fn print(&self) {
        let (stdout, error) = match self {
            Self::Done(out) => (out.as_str(), None),
            Self::Findings { stdout, error } => (stdout.as_str(), error.as_deref()),
            Self::Failed(error) => ("", Some(error.as_str())),
        };
        print!("{stdout}");
        if let Some(e) = error {
            eprintln!("error: {e}");
        }
    }

    /// Prints the ending and returns the exit code: the last thing a command does.
    pub fn finish(self) -> ExitCode {
        self.print();
        self.exit_code()
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
}
