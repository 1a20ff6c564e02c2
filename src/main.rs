//! The `p2pstore` binary: every role is a subcommand (see `p2pstore --help`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match p2pstore::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if p2pstore::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One sentence with its cause chain; never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
