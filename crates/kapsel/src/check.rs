//! `kapsel check`: validate a vm.conf and report every problem (like `vmd -n`).

use clap::Args;
use kapsel_config::{Diagnostic, LoadOptions, DEFAULT_CONFIG_PATH};
use kapsel_daemon::accounts::HostAccounts;
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
