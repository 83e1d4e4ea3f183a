//! The `foldhost` binary; everything lives in [`foldhost::cli`].

fn main() -> std::process::ExitCode {
    foldhost::cli::main()
}
