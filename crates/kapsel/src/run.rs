//! `kapsel run`: boot one VM in the foreground.

use clap::{Args, ValueEnum};
use kapsel_vmm::{ConsoleSpec, OnReboot, VmConfig, VmExit};
use std::path::PathBuf;

/// Arguments of `kapsel run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel: a Linux bzImage, or an ELF (vmlinux or other) with a PVH entry note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = kapsel_vmm::config::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest memory, written like vm.conf sizes (512M, 2G).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "512M", value_parser = parse_memory)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1)]
    pub cpus: u8,
    /// Serial console: stdio, none, or file:PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_console)]
    pub console: ConsoleSpec,
    /// What a guest reboot does.
    #[arg(long, value_enum, default_value_t = RebootArg::Exit)]
    pub on_reboot: RebootArg,
    /// CPU features to hide from the guest, comma-separated (e.g. xsave,avx).
    #[arg(long, value_name = "FEATURES", value_delimiter = ',')]
    pub hide_cpuid: Vec<String>,
}

/// `--on-reboot` values.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RebootArg {
    /// Exit with status 0.
    Exit,
    /// Boot the guest again.
    Restart,
}

fn parse_memory(text: &str) -> Result<u64, String> {
    kapsel_config::parse_size(text)
        .map(|s| s.bytes())
        .map_err(|e| format!("{e} (write sizes like 512M or 2G)"))
}

fn parse_console(text: &str) -> Result<ConsoleSpec, String> {
    match text {
        "stdio" => Ok(ConsoleSpec::Stdio),
        "none" => Ok(ConsoleSpec::None),
        _ => match text.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleSpec::File(path.into())),
            _ => Err("use stdio, none or file:PATH".into()),
        },
    }
}

/// Runs `kapsel run`; returns the process exit code.
pub fn main(args: RunArgs) -> u8 {
    let cfg = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        cpus: args.cpus,
        console: args.console,
        on_reboot: match args.on_reboot {
            RebootArg::Exit => OnReboot::Exit,
            RebootArg::Restart => OnReboot::Restart,
        },
        hide_cpuid: args.hide_cpuid,
    };
    match kapsel_vmm::run(&cfg) {
        Ok(exit) => {
            tracing::info!("{exit}");
            match exit {
                VmExit::PowerOff | VmExit::Reset => 0,
                failure => {
                    eprintln!("kapsel run: {failure}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("kapsel run: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_specs() {
        assert_eq!(parse_console("stdio"), Ok(ConsoleSpec::Stdio));
        assert_eq!(parse_console("none"), Ok(ConsoleSpec::None));
        assert_eq!(
            parse_console("file:/tmp/x.log"),
            Ok(ConsoleSpec::File("/tmp/x.log".into()))
        );
        assert!(parse_console("file:").is_err());
        assert!(parse_console("tty").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert!(parse_memory("lots").unwrap_err().contains("512M"));
    }
}
