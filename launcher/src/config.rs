//! `--config FILE`: a TOML profile with defaults for the command-line
//! options (the command line wins). Keys are the long option names;
//! an unknown key is an error. Profiles live in `configs/`.
//!
//! ```toml
//! np = 8
//! vms = 2                 # or ranks-per-vm = 4
//! cpus-per-vm = 2
//! map-by = "block"        # block | cyclic
//! mem = "256M"
//! machine = "microvm"     # microvm | q35
//! accel = "auto"          # auto | kvm | tcg
//! timeout = "60s"
//! tag-output = true
//! output-dir = "logs"
//! qemu = "/usr/bin/qemu-system-x86_64"
//! spin = 200000           # ns
//! net-backend = "vhost-user"   # vhost-user | dgram
//! [env]                   # like -x NAME=VALUE
//! OMP_NUM_THREADS = "1"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::plan::MapBy;
use crate::qemu::{Accel, Machine, NetBackend};

/// A number or a string such as "256M" / "30s".
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NumOrStr {
    Int(i64),
    Float(f64),
    Str(String),
}

impl NumOrStr {
    pub fn text(&self) -> String {
        match self {
            NumOrStr::Int(i) => i.to_string(),
            NumOrStr::Float(f) => f.to_string(),
            NumOrStr::Str(s) => s.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub np: Option<i64>,
    pub vms: Option<u32>,
    pub ranks_per_vm: Option<u32>,
    pub cpus_per_vm: Option<u32>,
    pub map_by: Option<MapBy>,
    pub mem: Option<NumOrStr>,
    pub machine: Option<Machine>,
    pub accel: Option<Accel>,
    pub timeout: Option<NumOrStr>,
    pub tag_output: Option<bool>,
    pub output_dir: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    pub spin: Option<u64>,
    pub net_backend: Option<NetBackend>,
    pub env: Option<BTreeMap<String, String>>,
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start.min(text.len())].matches('\n').count() + 1))
                .unwrap_or_default();
            let msg = e.message().lines().next().unwrap_or("").trim().to_string();
            format!("config {}{at}: {}", origin.display(), msg.replace("field", "key"))
        })
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config {}: cannot read it: {}", path.display(), e.kind()))?;
        // A relative output-dir is relative to the working directory, like on the command line.
        Config::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_profile() {
        let c = Config::parse(
            r#"
            np = 8
            vms = 2
            map-by = "cyclic"
            mem = "512M"
            machine = "q35"
            accel = "tcg"
            timeout = 30
            tag-output = false
            spin = 1000
            [env]
            A = "1"
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.np, Some(8));
        assert_eq!(c.map_by, Some(MapBy::Cyclic));
        assert_eq!(c.machine, Some(Machine::Q35));
        assert_eq!(c.accel, Some(Accel::Tcg));
        assert_eq!(c.timeout.unwrap().text(), "30");
        assert_eq!(c.mem.unwrap().text(), "512M");
        assert_eq!(c.tag_output, Some(false));
        assert_eq!(c.env.unwrap()["A"], "1");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::parse("np = 2\nbogus = 1\n", Path::new("p.toml")).unwrap_err();
        assert!(e.starts_with("config p.toml (line 2): unknown key `bogus`"), "{e}");
        assert!(!e.contains('\n'));
        let e = Config::parse("accel = \"xen\"", Path::new("p.toml")).unwrap_err();
        assert!(e.contains("xen"), "{e}");
    }

    #[test]
    fn shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 2);
    }
}
