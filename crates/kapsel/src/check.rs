//! `kapsel check`: validate a vm.conf and report every problem (like `vmd -n`).

use clap::Args;
use kapsel_config::{Config, Diagnostic, LoadOptions, Severity, DEFAULT_CONFIG_PATH};
use kapsel_container::image::{ImageError, Source};
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
            let host = image_checks(&config, args.other_host);
            report(&host);
            if host.iter().any(Diagnostic::is_error) {
                return 1;
            }
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

/// What only this host can tell about container images: an image that
/// is not there (a warning: it may come later) or a directory that is no
/// OCI image layout (an error). Nothing with `--other-host`.
fn image_checks(config: &Config, other_host: bool) -> Vec<Diagnostic> {
    if other_host {
        return Vec::new();
    }
    let mut out = Vec::new();
    for ct in &config.containers {
        let Some(image) = &ct.image else { continue };
        let (severity, message, help) = match Source::locate(image) {
            Ok(_) => continue,
            Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                (
                    Severity::Warning,
                    format!(
                        "container \"{}\": image {} does not exist on this host",
                        ct.common.name,
                        image.display()
                    ),
                    "create it before the container starts, or fix the path".to_string(),
                )
            }
            Err(e) => (
                Severity::Error,
                format!("container \"{}\": {e}", ct.common.name),
                "point `image` at a tarball or an OCI image layout, or use `root DIR`".to_string(),
            ),
        };
        out.push(Diagnostic {
            severity,
            file: ct.common.span.file.clone(),
            line: ct.common.span.line,
            col: 0,
            len: 1,
            message,
            help: Some(help),
            source_line: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_no_oci_layout_is_an_error_here_only() {
        let dir = std::env::temp_dir().join(format!("kapsel-check-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config::default();
        let mut ct = kapsel_config::ContainerSpec::new("web");
        ct.image = Some(dir.clone());
        ct.common.span.file = "vm.conf".into();
        ct.common.span.line = 7;
        config.containers.push(ct.clone());
        ct.common.name = "gone".into();
        ct.image = Some(dir.join("missing.tar"));
        config.containers.push(ct);
        let diags = image_checks(&config, false);
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags[0].is_error());
        assert!(
            diags[0]
                .render()
                .starts_with("vm.conf:7: container \"web\""),
            "{}",
            diags[0].render()
        );
        assert!(diags[0].message.contains("not an OCI image layout"));
        assert!(!diags[1].is_error());
        assert!(image_checks(&config, true).is_empty());
        std::fs::write(dir.join("oci-layout"), "{}").unwrap();
        std::fs::write(dir.join("index.json"), "{}").unwrap();
        assert_eq!(image_checks(&config, false).len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
