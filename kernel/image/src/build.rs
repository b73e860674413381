//! Builds an application package into a Toro image by driving cargo twice
//! (kernel for x86_64-unknown-none, app for x86_64-unknown-linux-gnu) and
//! packing the two ELFs.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct BuildOptions {
    /// The workspace root (holds Cargo.toml, kernel/, the app package).
    pub root: PathBuf,
    /// The application's cargo package.
    pub package: String,
    /// Its binary target (defaults to the package name).
    pub bin: Option<String>,
    /// Where to write the image (default: target/toro/<bin>.elf).
    pub output: Option<PathBuf>,
}

#[derive(Debug)]
pub enum BuildError {
    Cargo(String),
    Io(String),
    Image(crate::ImageError),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Cargo(s) | BuildError::Io(s) => f.write_str(s),
            BuildError::Image(e) => write!(f, "packing the image: {e}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// The workspace this tool was built from (the default `root`). If that tree is
/// gone, the path is kept as it is, so the build fails naming it; falling back to
/// the current directory would build a `target/` wherever the caller stands.
pub fn default_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn cargo(root: &Path, args: &[&str]) -> Result<(), BuildError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        // A caller's host-only flags must not leak into the guest builds.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .map_err(|e| BuildError::Cargo(format!("cannot run {cargo}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Cargo(format!("`cargo {}` failed ({status})", args.join(" "))))
    }
}

/// Builds kernel and app, packs them, writes the image; returns its path.
pub fn build_app(o: &BuildOptions) -> Result<PathBuf, BuildError> {
    let target_dir = o.root.join("target/toro");
    let td = target_dir.to_str().ok_or_else(|| BuildError::Io("target dir is not UTF-8".into()))?;
    cargo(&o.root, &["build", "--quiet", "--profile", "toro", "-p", "toro-kernel",
                     "--target", "x86_64-unknown-none", "--target-dir", td])?;
    let bin = o.bin.clone().unwrap_or_else(|| o.package.clone());
    let script = o.root.join("kernel/runtime/app.ld");
    let script_arg = format!("link-arg=-Wl,-T,{}", script.display());
    cargo(&o.root, &["rustc", "--quiet", "--profile", "toro", "-p", &o.package, "--bin", &bin,
                     "--target", "x86_64-unknown-linux-gnu", "--target-dir", td, "--",
                     "-C", "relocation-model=static",
                     "-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib",
                     "-C", "link-arg=-static", "-C", "link-arg=-no-pie",
                     "-C", "link-arg=-Wl,--build-id=none", "-C", &script_arg])?;
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| BuildError::Io(format!("{}: {e}", p.display())));
    let kernel = read(target_dir.join("x86_64-unknown-none/toro/toro-kernel"))?;
    let app = read(target_dir.join("x86_64-unknown-linux-gnu/toro").join(&bin))?;
    let image = crate::pack(&kernel, &app).map_err(BuildError::Image)?;
    let out = o.output.clone().unwrap_or_else(|| target_dir.join(format!("{bin}.elf")));
    let tmp = out.with_extension("elf.tmp");
    std::fs::write(&tmp, &image)
        .and_then(|_| std::fs::rename(&tmp, &out))
        .map_err(|e| BuildError::Io(format!("{}: {e}", out.display())))?;
    Ok(out)
}
