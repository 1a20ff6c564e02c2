//! Where a password comes from: the flag's value, a prompt without echo, a file, or the
//! environment; never an empty one, and never a silent wait for input that cannot come.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(clap::Args, Debug)]
pub struct PasswordArgs {
    /// The password; given without a value it is asked for without echo
    /// (also: P2PSTORE_PASSWORD, --password-file)
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub password: Option<String>,
    /// Read the password from the first line of this file
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PasswordArgs {
    pub(super) fn get(&self, confirm: bool) -> anyhow::Result<String> {
        let pw = match (&self.password, &self.password_file) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            (prompt, None) => match std::env::var("P2PSTORE_PASSWORD") {
                Ok(p) if prompt.is_none() => p,
                _ if prompt.is_some() || std::io::stdin().is_terminal() => {
                    let p =
                        rpassword::prompt_password("Password: ").context("reading the password from the terminal")?;
                    if confirm && rpassword::prompt_password("Password again: ")? != p {
                        bail!("the two passwords differ");
                    }
                    p
                }
                _ => bail!("no password given: use --password (asks), --password-file FILE or P2PSTORE_PASSWORD"),
            },
        };
        if pw.is_empty() {
            bail!("the password is empty");
        }
        Ok(pw)
    }
}
