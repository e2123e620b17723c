//! `kapsel create`: make a disk image (vmctl's `create`).

use clap::Args;
use kapsel_image::Format;
use std::path::{Path, PathBuf};

/// Arguments of `kapsel create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// A qcow2 overlay on this base image (which stays read-only).
    #[arg(short = 'b', value_name = "BASE", conflicts_with = "input")]
    pub base: Option<PathBuf>,
    /// Copy this image (any format, backing files followed) into the new one.
    #[arg(short = 'i', value_name = "INPUT")]
    pub input: Option<PathBuf>,
    /// Size, written like vm.conf sizes (10G); defaults to the base's or input's.
    #[arg(short = 's', value_name = "SIZE", value_parser = crate::run::parse_size)]
    pub size: Option<u64>,
    /// The new image: PATH (qcow2 when it ends in .qcow2, else raw), or
    /// raw:PATH / qcow2:PATH.
    #[arg(value_name = "PATH")]
    pub path: String,
}

/// The format and path of `spec`: a `raw:`/`qcow2:` prefix, else the extension.
pub fn target(spec: &str) -> (Format, PathBuf) {
    if let Some(p) = spec.strip_prefix("qcow2:") {
        return (Format::Qcow2, p.into());
    }
    if let Some(p) = spec.strip_prefix("raw:") {
        return (Format::Raw, p.into());
    }
    let path = PathBuf::from(spec);
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => Format::Qcow2,
        _ => Format::Raw,
    };
    (format, path)
}

fn run(args: &CreateArgs) -> Result<String, String> {
    let (format, path) = target(&args.path);
    let show = |p: &Path| p.display().to_string();
    if let Some(input) = &args.input {
        if args.size.is_some() {
            return Err("-s goes with a new or overlay image, not with -i (the copy keeps the input's size)".into());
        }
        let written = kapsel_image::convert(input, &path, format).map_err(|e| e.to_string())?;
        return Ok(format!(
            "{}: {format} image copied from {} ({} MiB of data)",
            show(&path),
            show(input),
            written >> 20
        ));
    }
    if let Some(base) = &args.base {
        if format != Format::Qcow2 {
            return Err(format!(
                "{}: an overlay on {} must be qcow2; name it .qcow2 or use qcow2:{}",
                args.path,
                show(base),
                args.path
            ));
        }
    } else if args.size.is_none() {
        return Err("give a size (-s 10G), a base image (-b) or an input image (-i)".into());
    }
    kapsel_image::create(&path, format, args.size, args.base.as_deref())
        .map_err(|e| e.to_string())?;
    Ok(match &args.base {
        Some(base) => format!("{}: qcow2 overlay on {}", show(&path), show(base)),
        None => format!(
            "{}: {format} image of {} bytes",
            show(&path),
            args.size.unwrap_or(0)
        ),
    })
}

/// Runs `kapsel create`; returns the process exit code.
pub fn main(args: CreateArgs) -> u8 {
    match run(&args) {
        Ok(done) => {
            println!("kapsel create: {done}");
            0
        }
        Err(e) => {
            eprintln!("kapsel create: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_prefix_or_extension() {
        assert_eq!(target("a.qcow2"), (Format::Qcow2, "a.qcow2".into()));
        assert_eq!(target("a.img"), (Format::Raw, "a.img".into()));
        assert_eq!(target("qcow2:/x/a.img"), (Format::Qcow2, "/x/a.img".into()));
        assert_eq!(target("raw:b.qcow2"), (Format::Raw, "b.qcow2".into()));
    }

    fn args(
        path: &Path,
        base: Option<&Path>,
        input: Option<&Path>,
        size: Option<u64>,
    ) -> CreateArgs {
        CreateArgs {
            base: base.map(Into::into),
            input: input.map(Into::into),
            size,
            path: path.display().to_string(),
        }
    }

    #[test]
    fn creates_overlays_copies_and_refuses_what_makes_no_sense() {
        let dir = std::env::temp_dir().join(format!("kapsel-create-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.img");
        assert!(run(&args(&base, None, None, Some(4 << 20))).is_ok());
        assert_eq!(std::fs::metadata(&base).unwrap().len(), 4 << 20);
        let top = dir.join("top.qcow2");
        assert!(run(&args(&top, Some(&base), None, None))
            .unwrap()
            .contains("overlay"));
        let copy = dir.join("copy.img");
        assert!(run(&args(&copy, None, Some(&top), None))
            .unwrap()
            .contains("copied"));
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&base).unwrap());
        // Errors: existing file, raw overlay, no size, -s with -i.
        assert!(run(&args(&base, None, None, Some(1 << 20))).is_err());
        assert!(run(&args(&dir.join("o.img"), Some(&base), None, None))
            .unwrap_err()
            .contains("must be qcow2"));
        assert!(run(&args(&dir.join("n.img"), None, None, None))
            .unwrap_err()
            .contains("give a size"));
        assert!(run(&args(&dir.join("c.img"), None, Some(&base), Some(1))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
