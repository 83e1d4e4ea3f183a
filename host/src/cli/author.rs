//! Plugin authoring, offline: `plugins new` scaffolds a project, `plugins
//! build` turns one into a component checked against the contract.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use foldhost_plugin_build::{Lang, scaffold};

/// A plugin's source language.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Language {
    Rust,
    Python,
    Js,
}

impl From<Language> for Lang {
    fn from(language: Language) -> Self {
        match language {
            Language::Rust => Lang::Rust,
            Language::Python => Lang::Python,
            Language::Js => Lang::Js,
        }
    }
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: its stream category, and the project's folder.
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Language,
    /// Where to create the project (default: ./NAME).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project: a Cargo.toml (Rust), pyproject.toml (Python) or package.json (JavaScript)
    /// folder.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to write the component (default: DIR/<folder name>.wasm).
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// `plugins new`: writes a project that builds with `plugins build`.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    scaffold::create(args.lang.into(), &args.name, &dir)?;
    println!(
        "created {} ({:?} plugin {}); build it with: foldhost plugins build {}",
        dir.display(),
        args.lang,
        args.name,
        dir.display()
    );
    Ok(())
}

/// `plugins build`: builds, componentizes and checks a project; writes the component.
pub async fn build(args: BuildArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let dir = args
            .dir
            .canonicalize()
            .with_context(|| format!("opening {}", args.dir.display()))?;
        let built = foldhost_plugin_build::build(&dir)?;
        let out = match args.out {
            Some(out) => out,
            None => {
                let name = dir.file_name().context("the project folder has no name")?;
                dir.join(name).with_extension("wasm")
            }
        };
        std::fs::write(&out, &built.component)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "built {} ({} {}, {} KiB)",
            out.display(),
            built.lang,
            built.world,
            built.component.len() >> 10
        );
        Ok(())
    })
    .await?
}
