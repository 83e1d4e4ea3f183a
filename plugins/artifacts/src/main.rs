//! `foldhost-plugins --out DIR`: copies the example plugin components into DIR.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: foldhost-plugins --out DIR\n\
    Copies the example plugin components (bank-account, bank-analytics, shopping-cart) into DIR.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [flag, dir] if flag == "--out" => PathBuf::from(dir),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match foldhost_plugins::copy_examples(&out) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "foldhost-plugins: cannot copy plugins into {}: {e}",
                out.display()
            );
            ExitCode::FAILURE
        }
    }
}
