//! `kapsel check`: validate a vm.conf and report every problem (like `vmd -n`).

use clap::Args;
use kapsel_config::{Accounts, Diagnostic, LoadOptions, DEFAULT_CONFIG_PATH};
use std::collections::HashSet;
use std::path::PathBuf;

/// Arguments of `kapsel check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(short = 'f', long = "file", default_value = DEFAULT_CONFIG_PATH)]
    pub file: PathBuf,
    /// Set a macro, overriding its definition in the file.
    #[arg(short = 'D', value_name = "NAME=VALUE", value_parser = kapsel_config::parse_define)]
    pub defines: Vec<(String, String)>,
    /// Print the normalized configuration (macros expanded, includes
    /// inlined, defaults shown) on standard output.
    #[arg(long)]
    pub print: bool,
    /// The file is meant for another host: owners unknown here are warnings.
    #[arg(long)]
    pub other_host: bool,
}

/// The users and groups of this host, from /etc/passwd and /etc/group,
/// then NSS. A database that cannot be read accepts every name.
struct HostAccounts {
    users: Option<HashSet<String>>,
    groups: Option<HashSet<String>>,
}

impl HostAccounts {
    fn read() -> Self {
        let names = |path: &str| {
            std::fs::read_to_string(path).ok().map(|text| {
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.split(':').next())
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
        };
        HostAccounts {
            users: names("/etc/passwd"),
            groups: names("/etc/group"),
        }
    }
}

/// Asks NSS (LDAP, sssd, systemd-homed...) through getent(1) for a name
/// the local files do not have. Without getent the name is taken as unknown.
fn getent(database: &str, name: &str) -> bool {
    std::process::Command::new("getent")
        .args([database, name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Accounts for HostAccounts {
    fn user_exists(&self, name: &str) -> bool {
        self.users.as_ref().is_none_or(|u| u.contains(name)) || getent("passwd", name)
    }
    fn group_exists(&self, name: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| g.contains(name)) || getent("group", name)
    }
}

fn report(diags: &[Diagnostic]) {
    for d in diags {
        eprint!("{}", d.render());
    }
}

/// Runs `kapsel check`; returns the process exit code.
pub fn main(args: CheckArgs) -> u8 {
    let accounts = HostAccounts::read();
    let opts = LoadOptions {
        defines: args.defines,
        accounts: Some(&accounts),
        foreign_host: args.other_host,
        ..LoadOptions::default()
    };
    match kapsel_config::load(&args.file, &opts) {
        Ok((config, warnings)) => {
            report(&warnings);
            if args.print {
                print!("{}", config.to_vm_conf());
            }
            eprintln!("configuration OK");
            0
        }
        Err(diags) => {
            report(&diags);
            let errors = diags.iter().filter(|d| d.is_error()).count();
            let warnings = diags.len() - errors;
            eprintln!(
                "{}: {errors} error{}, {warnings} warning{}",
                args.file.display(),
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" }
            );
            1
        }
    }
}
