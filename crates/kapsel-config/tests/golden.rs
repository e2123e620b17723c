//! Golden tests: each `golden/NAME.conf` is checked and its diagnostics
//! (or, when it loads, its warnings and `--print` output) compared with
//! `golden/NAME.expected`. `UPDATE_GOLDEN=1 cargo test` rewrites them.

use kapsel_config::{load, Accounts, LoadOptions};
use std::path::Path;

struct TestAccounts;
impl Accounts for TestAccounts {
    fn user_exists(&self, name: &str) -> bool {
        ["root", "alice", "_vmd"].contains(&name)
    }
    fn group_exists(&self, name: &str) -> bool {
        ["wheel", "staff", "operator"].contains(&name)
    }
}

fn check(path: &Path) -> String {
    let opts = LoadOptions {
        defines: vec![("cli".into(), "\"from -D\"".into())],
        accounts: Some(&TestAccounts),
        ..LoadOptions::default()
    };
    match load(path, &opts) {
        Ok((config, warnings)) => {
            // The printed form reads back to the same configuration.
            let printed = config.to_vm_conf();
            let plain = LoadOptions::default();
            let (mut again, _) = kapsel_config::parse_str("printed.conf", &printed, &plain)
                .unwrap_or_else(|d| {
                    panic!("{}: printed form does not load: {d:?}", path.display())
                });
            let mut original = config.clone();
            original.clear_spans();
            again.clear_spans();
            assert_eq!(original, again, "{}", path.display());
            let mut out: String = warnings.iter().map(|w| w.render()).collect();
            out.push_str("configuration OK\n--- print ---\n");
            out.push_str(&config.to_vm_conf());
            out
        }
        Err(diags) => diags.iter().map(|d| d.render()).collect(),
    }
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!(" {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+{}\n", b[j]);
            j += 1;
        } else {
            out += &format!("-{}\n", a[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn golden() {
    let dir = Path::new("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "conf")
                && !p.file_name().unwrap().to_string_lossy().starts_with("inc-")
        })
        .collect();
    entries.sort();
    assert!(!entries.is_empty());
    let mut failures = Vec::new();
    for conf in &entries {
        let actual = check(conf);
        let expected_path = conf.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{} differs (UPDATE_GOLDEN=1 to accept):\n{}",
                conf.display(),
                diff(&expected, &actual)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
