//! `foldhost-plugins --out DIR`: copies the example plugin components into DIR, and the next
//! builds of two of them into DIR/v2.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: foldhost-plugins --out DIR\n\
    Copies the example plugin components (bank-account, bank-analytics, shopping-cart) into DIR,\n\
    and the next builds of bank-analytics and bank-account into DIR/v2 (to try a hot swap).";

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
    let copied = foldhost_plugins::copy_examples(&out).and_then(|mut files| {
        files.extend(foldhost_plugins::copy_next_versions(&out)?);
        Ok(files)
    });
    match copied {
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
