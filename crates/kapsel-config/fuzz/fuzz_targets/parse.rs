//! Fuzzes the vm.conf parser: any input must give a configuration or
//! diagnostics, never a panic, and a configuration must print as vm.conf
//! text that parses back to itself.
#![no_main]

use kapsel_config::{parse_str, LoadOptions, MemoryLoader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // An include target, so `include "inc.conf"` and cycles get exercised.
    let loader = MemoryLoader::default().with(
        "inc.conf",
        "m=\"1G\"\nswitch \"sw\" { interface br0 }\ninclude \"vm.conf\"\n",
    );
    let opts = LoadOptions {
        defines: vec![("d".into(), "memory 2G".into())],
        loader: &loader,
        ..LoadOptions::default()
    };
    match parse_str("vm.conf", &text, &opts) {
        Ok((mut config, warnings)) => {
            for w in &warnings {
                let _ = w.render();
            }
            let printed = config.to_vm_conf();
            let plain = LoadOptions {
                loader: &loader,
                ..LoadOptions::default()
            };
            let (mut again, _) = parse_str("printed.conf", &printed, &plain)
                .unwrap_or_else(|d| panic!("printed config does not parse:\n{printed}\n{d:?}"));
            config.clear_spans();
            again.clear_spans();
            assert_eq!(config, again, "round trip changed the model:\n{printed}");
            for name in config.vms.iter().map(|v| v.common.name.clone()) {
                let _ = config.effective_vm(&name);
            }
        }
        Err(diags) => {
            assert!(diags.iter().any(|d| d.is_error()));
            for d in &diags {
                let _ = d.render();
            }
        }
    }
});
