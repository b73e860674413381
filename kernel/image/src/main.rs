//! toro-build: builds a Toro application package into a bootable image,
//! or checks that a file is one.

use std::path::PathBuf;
use std::process::ExitCode;

use toro_image::{build_app, check_file, BuildOptions};

const HELP: &str = "\
toro-build: build a Toro MPI application into one bootable image (kernel + app)

Usage:
  toro-build <package> [--bin NAME] [-o OUT.elf] [--root DIR]
  toro-build --check IMAGE

  <package>   the application's cargo package in this workspace (e.g. hello)
  --bin NAME  its binary target (default: the package name)
  -o OUT.elf  where to write the image (default: target/toro/<bin>.elf)
  --root DIR  the workspace root (default: the one toro-build was built from)
  --check IMG validate an image and print what it holds

Example:
  cargo run -q -p toro-image --bin toro-build -- hello -o hello.elf
  qemu-system-x86_64 -M microvm -accel tcg -smp 2 -m 128M -nodefaults -nographic \\
      -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel hello.elf
  (QEMU exits with 2*status+1: 1 means the app returned 0.)";

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("toro-build: error: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut package = None;
    let mut opts = BuildOptions { root: toro_image::build::default_root(), package: String::new(), bin: None, output: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                return ExitCode::SUCCESS;
            }
            "--check" => {
                let path = match value("--check") {
                    Ok(p) => PathBuf::from(p),
                    Err(e) => return fail(e),
                };
                return match check_file(&path) {
                    Ok(info) => {
                        println!("{}: Toro image, ABI {}, PVH entry {:#x}, app entry {:#x}, app ends at {:#x}",
                                 path.display(), info.abi_version, info.pvh_entry, info.app_entry, info.app_end);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                };
            }
            "--bin" => match value("--bin") {
                Ok(v) => opts.bin = Some(v),
                Err(e) => return fail(e),
            },
            "-o" | "--output" => match value("-o") {
                Ok(v) => opts.output = Some(PathBuf::from(v)),
                Err(e) => return fail(e),
            },
            "--root" => match value("--root") {
                Ok(v) => opts.root = PathBuf::from(v),
                Err(e) => return fail(e),
            },
            s if s.starts_with('-') => return fail(format!("unknown option {s} (see --help)")),
            s if package.is_none() => package = Some(s.to_string()),
            s => return fail(format!("unexpected argument {s} (see --help)")),
        }
    }
    let Some(package) = package else { return fail("no package given (see --help)") };
    opts.package = package;
    match build_app(&opts) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
