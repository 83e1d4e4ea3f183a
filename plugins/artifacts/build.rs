//! Builds every plugin into a component in `OUT_DIR/<artifact>.wasm`: the Rust
//! ones for `wasm32-unknown-unknown` with a nested cargo, componentized with
//! `foldhost-plugin-build`; the ones written in WebAssembly text assembled and
//! componentized too; the Python and JavaScript ones with
//! `foldhost_plugin_build::build` (which installs componentize-py or the
//! pinned npm toolchain on first use), cached in `target/plugins-<lang>/` by
//! the fingerprint of their inputs, since componentize-py takes a minute.
//!
//! The nested cargo uses its own target directory (`target/plugins*`), so it
//! never waits for the lock the outer cargo holds, and only builds the plugin
//! packages (`-p`), never this crate. Each build set (a package at most once,
//! with its features) gets its own target directory so switching features does
//! not relink every time.

use std::env;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
/// The workspace profile for plugins (size-optimised, LTO, no debug info).
const PROFILE: &str = "plugin";
/// Set for the nested cargo, to catch a plugin that depends on this crate.
const NESTED: &str = "FOLDHOST_PLUGINS_NESTED";

/// An artifact: its name, the package building it, the package's features, and the build
/// set it is built in (one cargo build, one target directory).
struct Recipe {
    artifact: &'static str,
    package: &'static str,
    features: &'static str,
    set: &'static str,
}

const fn plain(name: &'static str) -> Recipe {
    Recipe {
        artifact: name,
        package: name,
        features: "",
        set: "",
    }
}

const RECIPES: &[Recipe] = &[
    plain("bank-account"),
    plain("bank-analytics"),
    plain("shopping-cart"),
    plain("hostile"),
    plain("mischief"),
    plain("wrong-contract"),
    plain("old-contract"),
    plain("bank-upcast-v1"),
    plain("bank-upcast-v2"),
    plain("hostile-upcaster"),
    Recipe {
        artifact: "bank-analytics-v2",
        package: "bank-analytics",
        features: "v2",
        set: "v2",
    },
    Recipe {
        artifact: "bank-account-v2",
        package: "bank-account",
        features: "v2",
        set: "v2",
    },
    Recipe {
        artifact: "bank-analytics-lenient",
        package: "bank-analytics",
        features: "lenient",
        set: "variants",
    },
    Recipe {
        artifact: "mischief-broken-init",
        package: "mischief",
        features: "broken-init",
        set: "variants",
    },
    Recipe {
        artifact: "hostile-as-bank",
        package: "hostile",
        features: "as-bank",
        set: "variants",
    },
    // In the `v2` set only because `variants` builds `hostile` already.
    Recipe {
        artifact: "hostile-as-upcaster",
        package: "hostile",
        features: "as-upcaster",
        set: "v2",
    },
];

/// The artifact whose core module is also kept, as `<artifact>.core.wasm`.
const CORE_MODULE: &str = "bank-account";

/// A plugin in another language: its artifact name and project folder under `plugins/`.
const SOURCE_RECIPES: &[(&str, &str)] = &[
    ("bank-account-python", "python/bank-account"),
    ("bank-analytics-python", "python/bank-analytics"),
    ("hostile-python", "python/hostile"),
    ("bank-account-js", "js/bank-account"),
    ("bank-analytics-js", "js/bank-analytics"),
    ("hostile-js", "js/hostile"),
];

/// A plugin written in WebAssembly text, for attacks Rust cannot express: the
/// world it implements, and declarations spliced in at its `;; @EXTRA@` line.
struct WatRecipe {
    artifact: &'static str,
    source: &'static str,
    world: &'static str,
    extra: &'static str,
}

const HOARDER: &str = "plugins/hostile/wat/hoarder.wat";

const WAT_RECIPES: &[WatRecipe] = &[
    WatRecipe {
        artifact: "hoarder",
        source: HOARDER,
        world: "aggregate-plugin",
        extra: "",
    },
    WatRecipe {
        artifact: "hoarder-memories",
        source: HOARDER,
        world: "aggregate-plugin",
        extra: "(memory 1) (memory 1) (memory 1)",
    },
    WatRecipe {
        artifact: "hoarder-table",
        source: HOARDER,
        world: "aggregate-plugin",
        extra: "(table 10000000 funcref)",
    },
    WatRecipe {
        artifact: "hoarder-table64",
        source: HOARDER,
        world: "aggregate-plugin",
        extra: TABLE64_LEAK,
    },
];

/// A 64-bit table, and a start function that 256 times grows a memory by 512 KiB, writes it,
/// then overflows the table's size with `table.grow` (which returns -1 without trapping): a
/// host that took that failure for the memory growth's gave the grant back, leaving 128 MiB
/// mapped against unchanged budgets.
const TABLE64_LEAK: &str = "
  (table $wide i64 1 funcref)
  (func $leak (local $round i32)
    (loop $again
      (if (i32.eq (memory.grow $extra (i32.const 8)) (i32.const -1)) (then unreachable))
      (memory.fill $extra
        (i32.mul (i32.sub (memory.size $extra) (i32.const 8)) (i32.const 65536))
        (i32.const 1) (i32.const 524288))
      (drop (table.grow $wide (ref.null func) (i64.const -1)))
      (local.set $round (i32.add (local.get $round) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $round) (i32.const 256)))))
  (start $leak)";

/// Outer-build settings the nested build must not inherit: flags meant for the
/// host target (`CARGO_ENCODED_RUSTFLAGS` is what cargo hands build scripts),
/// and clippy's wrapper. The jobserver (`CARGO_MAKEFLAGS`) is kept on purpose
/// so both builds share the same job slots.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    if env::var_os(NESTED).is_some() {
        return Err("a plugin depends on foldhost-plugins; the plugin build would recurse".into());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    for path in [".cargo", "guest-sdk", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("plugins").display()
    );
    check_target_installed()?;

    let mut sets: Vec<&str> = Vec::new();
    for recipe in RECIPES {
        if !sets.contains(&recipe.set) {
            sets.push(recipe.set);
        }
    }
    for set in sets {
        let recipes: Vec<&Recipe> = RECIPES.iter().filter(|r| r.set == set).collect();
        let target_dir = match set {
            "" => workspace.join("target/plugins"),
            _ => workspace.join(format!("target/plugins-{set}")),
        };
        cargo_build(&workspace, &target_dir, &recipes)?;
        for recipe in recipes {
            let module = target_dir
                .join(TARGET)
                .join(PROFILE)
                .join(format!("{}.wasm", recipe.package.replace('-', "_")));
            let component = out_dir.join(format!("{}.wasm", recipe.artifact));
            if recipe.artifact == CORE_MODULE {
                std::fs::copy(&module, out_dir.join(format!("{CORE_MODULE}.core.wasm")))?;
            }
            componentize(std::fs::read(&module)?, &component)
                .map_err(|e| format!("componentizing {}: {e:#}", module.display()))?;
        }
    }
    for recipe in WAT_RECIPES {
        assemble(
            &workspace,
            recipe,
            &out_dir.join(format!("{}.wasm", recipe.artifact)),
        )
        .map_err(|e| format!("assembling {}: {e}", recipe.artifact))?;
    }
    for (artifact, dir) in SOURCE_RECIPES {
        build_cached(
            &workspace,
            artifact,
            &workspace.join("plugins").join(dir),
            &out_dir,
        )
        .map_err(|e| format!("building {dir}: {e:#}"))?;
    }
    Ok(())
}

/// Builds the project in `dir` unless a build of the same inputs is cached.
fn build_cached(
    workspace: &Path,
    artifact: &str,
    dir: &Path,
    out_dir: &Path,
) -> anyhow::Result<()> {
    let lang = foldhost_plugin_build::Lang::detect(dir)?;
    let cache = workspace.join(format!("target/plugins-{lang}"));
    let cached = cache.join(format!(
        "{artifact}-{}.wasm",
        foldhost_plugin_build::fingerprint(dir)?
    ));
    if !cached.exists() {
        let built = foldhost_plugin_build::build(dir)?;
        std::fs::create_dir_all(&cache)?;
        let partial = cached.with_extension("partial");
        std::fs::write(&partial, &built.component)?;
        std::fs::rename(&partial, &cached)?;
    }
    std::fs::copy(&cached, out_dir.join(format!("{artifact}.wasm")))?;
    Ok(())
}

/// Assembles a [`WatRecipe`], embeds its world's type information (what
/// `wit-bindgen` does for Rust plugins) and componentizes it.
fn assemble(workspace: &Path, recipe: &WatRecipe, component: &Path) -> Result<(), Box<dyn Error>> {
    let source = workspace.join(recipe.source);
    let text = std::fs::read_to_string(&source)?;
    if !text.contains(";; @EXTRA@") {
        return Err(format!("{} has no ;; @EXTRA@ line", source.display()).into());
    }
    let mut module = wat::parse_str(text.replace(";; @EXTRA@", recipe.extra))?;
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(workspace.join("wit"))?;
    let world = resolve.select_world(&[package], Some(recipe.world))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    componentize(module, component)
}

fn check_target_installed() -> Result<(), Box<dyn Error>> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()?;
    let libdir = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && Path::new(libdir.trim()).is_dir() {
        Ok(())
    } else {
        Err(format!("the {TARGET} target is missing: run `rustup target add {TARGET}`").into())
    }
}

fn cargo_build(
    workspace: &Path,
    target_dir: &Path,
    recipes: &[&Recipe],
) -> Result<(), Box<dyn Error>> {
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(workspace)
        .args([
            "build",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
            "--target-dir",
        ])
        .arg(target_dir)
        .env(NESTED, "1");
    for recipe in recipes {
        cargo.args(["-p", recipe.package]);
        if !recipe.features.is_empty() {
            cargo.args([
                "--features",
                &format!("{}/{}", recipe.package, recipe.features),
            ]);
        }
    }
    for var in SCRUBBED_ENV {
        cargo.env_remove(var);
    }
    let status = cargo.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(
            format!("building the plugins for {TARGET} failed ({status}); see the output above")
                .into(),
        )
    }
}

/// Componentizes a plugin's core module (unchecked: `wrong-contract` must
/// stay wrong; `tests/components.rs` checks the others).
fn componentize(module: Vec<u8>, component: &Path) -> Result<(), Box<dyn Error>> {
    let encoded =
        foldhost_plugin_build::componentize::componentize(&module).map_err(|e| format!("{e:#}"))?;
    std::fs::write(component, encoded)?;
    Ok(())
}
