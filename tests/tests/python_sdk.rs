//! The Python SDK's and the Python examples' own unit tests (unittest, run
//! natively by the machine's python3 through the SDK's runtime: the same
//! decoding, exception mapping and state JSON the components run).

use std::path::Path;
use std::process::Command;

fn unittest(dir: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sdk = root.join("guest-sdk/python");
    let project = root.join(dir);
    let output = Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(&project)
        .env(
            "PYTHONPATH",
            std::env::join_paths([sdk.as_path(), project.as_path()]).unwrap(),
        )
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{dir}: unittest failed\n{stderr}");
    assert!(stderr.contains("\nOK"), "{dir}: ran no test?\n{stderr}");
}

#[test]
fn the_sdk() {
    unittest("guest-sdk/python");
}

#[test]
fn the_bank_account_example() {
    unittest("plugins/python/bank-account");
}

#[test]
fn the_bank_analytics_example() {
    unittest("plugins/python/bank-analytics");
}
