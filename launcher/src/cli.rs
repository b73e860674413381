//! The command line (mpirun's spelling where one exists) and its merge with
//! a `--config` profile into checked [`Options`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::Config;
use crate::plan::MapBy;
use crate::qemu::{Accel, Machine, NetBackend};

const EXAMPLES: &str = "\
Examples:
  toro-mpirun -np 8 app.elf                  8 ranks in one VM (intra-node mode)
  toro-mpirun -np 32 --vms 4 app.elf         32 ranks in 4 VMs, 8 per VM (ranks 0-7 in VM 0)
  toro-mpirun -np 8 --ranks-per-vm 2 --map-by cyclic app.elf
  toro-mpirun -np 4 --accel tcg --timeout 60 -x LEVEL=3 app.elf --size 1024
  toro-mpirun -np 4 --vms 2 --dry-run app.elf   print the plan and the QEMU commands
  toro-mpirun --config configs/ci-tcg.toml -np 2 app.elf

vCPUs: by default the job's vCPUs fit the host's cores: a VM gets min(its ranks, host
cores / VMs, at least 1) vCPUs (one VM: min(ranks, cores)); further ranks run as extra
rank threads on those vCPUs, switched cooperatively inside the VM (tens of ns) rather than
as vCPU threads the host preempts (a spinning rank would hold a host core while the rank it
waits for is descheduled). --cpus-per-vm overrides it.

Exit status: 0 when every VM ended with status 0; else the first failing VM's status
(101 panic, 110 CPU exception in the app, else the app's own status), 124 timeout,
125 VM died (QEMU ended without a Toro status), 130/143 SIGINT/SIGTERM, 2 bad input.";

#[derive(Parser, Debug)]
#[command(
    name = "toro-mpirun",
    version,
    about = "Run a Toro MPI application image as a job of QEMU VMs on this host.",
    after_help = EXAMPLES,
    disable_help_subcommand = true,
    args_override_self = true
)]
pub struct Cli {
    /// Number of ranks (world size); also -np.
    #[arg(short = 'n', long = "np", value_name = "N", allow_negative_numbers = true)]
    pub np: Option<i64>,
    /// Number of VMs; ranks are split among them (default 1).
    #[arg(long, value_name = "M")]
    pub vms: Option<u32>,
    /// Ranks per VM, the alternative to --vms.
    #[arg(long, value_name = "R", conflicts_with = "vms")]
    pub ranks_per_vm: Option<u32>,
    /// vCPUs per VM (default: min(ranks in the VM, host cores / VMs), at least 1).
    #[arg(long, value_name = "C")]
    pub cpus_per_vm: Option<u32>,
    /// How ranks are dealt to VMs.
    #[arg(long, value_enum, value_name = "HOW")]
    pub map_by: Option<MapBy>,
    /// Memory per VM: 256M, 1G, or MiB (default 256M).
    #[arg(long, value_name = "SIZE")]
    pub mem: Option<String>,
    /// QEMU machine type (default microvm). q35: the NIC is virtio-pci with an MSI-X
    /// interrupt, which answers across VMs sooner; started by qboot where QEMU ships it
    /// (else SeaBIOS: seconds under KVM PVM); program output goes through the serial port.
    #[arg(long, value_enum)]
    pub machine: Option<Machine>,
    /// Accelerator: auto = KVM when /dev/kvm can create a VM, else TCG.
    #[arg(long, value_enum)]
    pub accel: Option<Accel>,
    /// Stop the job after this long: 90, 90s, 2m, 1h (default: none).
    #[arg(long, value_name = "TIME")]
    pub timeout: Option<String>,
    /// Prefix system lines with [vm K]; keep the [rank N] prefixes (default).
    #[arg(long, overrides_with = "no_tag_output")]
    pub tag_output: bool,
    /// Print application lines without their [rank N] prefix.
    #[arg(long, overrides_with = "tag_output")]
    pub no_tag_output: bool,
    /// Write each VM's raw console to DIR/vm-K.log.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Print the job plan and every command line; start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// QEMU binary (default: qemu-system-x86_64 from PATH).
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// Environment variable for the application; -x NAME alone takes it from this environment.
    #[arg(short = 'x', value_name = "VAR=VALUE")]
    pub env: Vec<String>,
    /// Carry a 2-VM job's frames through the launcher's L2 hub as with more VMs (else the
    /// two QEMUs share one socket pair); part of --net-backend dgram, which it implies.
    #[arg(long)]
    pub net_hub: bool,
    /// How the VMs' NICs are connected (more than one VM): vhost-user (default) = the
    /// launcher is their vhost-user back-end and copies frames from ring to ring; dgram =
    /// QEMU datagram sockets (a socket pair between two VMs, the launcher's hub with more;
    /// 0.65-0.85x vhost-user's bandwidth).
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub net_backend: Option<NetBackend>,
    /// Idle spin budget of a waiting core before it halts, in ns (default: the runtime's).
    #[arg(long, value_name = "NS")]
    pub spin: Option<u64>,
    /// TOML profile with defaults for these options (see configs/).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The application image (app.elf).
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Arguments for the application.
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Options that take a value, so the `-np` rewrite can skip their values.
const VALUE_OPTIONS: &[&str] = &[
    "-n", "--np", "--vms", "--ranks-per-vm", "--cpus-per-vm", "--map-by", "--mem", "--machine", "--accel",
    "--timeout", "--output-dir", "--qemu", "-x", "--spin", "--config", "--net-backend",
];

/// clap has no multi-letter short options: rewrite mpirun's `-np` to `--np`,
/// only among the launcher's own options (never in the app's arguments).
pub fn rewrite_np(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    if let Some(prog) = it.next() {
        out.push(prog);
    }
    while let Some(a) = it.next() {
        if a == "-np" {
            out.push("--np".into());
        } else if let Some(v) = a.strip_prefix("-np=") {
            out.push(format!("--np={v}"));
        } else if VALUE_OPTIONS.contains(&a.as_str()) {
            out.push(a);
            out.extend(it.next());
        } else if a == "--" || !a.starts_with('-') {
            out.push(a);
            out.extend(it);
            break;
        } else {
            out.push(a);
        }
    }
    out
}

/// Checked options, the command line over the profile over the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    pub np: u32,
    pub vms: Option<u32>,
    pub ranks_per_vm: Option<u32>,
    pub cpus_per_vm: Option<u32>,
    pub map_by: MapBy,
    pub mem_mib: u64,
    pub machine: Machine,
    pub accel: Accel,
    pub timeout: Option<Duration>,
    pub tag_output: bool,
    pub output_dir: Option<PathBuf>,
    pub dry_run: bool,
    pub qemu: Option<PathBuf>,
    pub spin: Option<u64>,
    /// Two VMs go through the hub too (`--net-hub`).
    pub net_hub: bool,
    pub net_backend: NetBackend,
    pub env: Vec<(String, String)>,
    pub image: PathBuf,
    pub args: Vec<String>,
}

pub const DEFAULT_MEM_MIB: u64 = 256;

impl Options {
    pub fn from_cli(cli: Cli) -> Result<Options, String> {
        let cfg = match &cli.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let np = cli.np.or(cfg.np).ok_or("missing -np N (the number of ranks)")?;
        if np < 1 {
            return Err(format!("-np must be at least 1 (got {np})"));
        }
        let np = u32::try_from(np).map_err(|_| format!("-np {np} is too large"))?;
        // The command line's choice of --vms / --ranks-per-vm replaces the profile's.
        let (vms, ranks_per_vm) = if cli.vms.is_some() || cli.ranks_per_vm.is_some() {
            (cli.vms, cli.ranks_per_vm)
        } else {
            (cfg.vms, cfg.ranks_per_vm)
        };
        let mem_mib = match cli.mem.clone().or(cfg.mem.as_ref().map(|m| m.text())) {
            Some(m) => parse_mem(&m)?,
            None => DEFAULT_MEM_MIB,
        };
        let timeout = match cli.timeout.clone().or(cfg.timeout.as_ref().map(|t| t.text())) {
            Some(t) => parse_duration(&t)?,
            None => None,
        };
        let tag_output = if cli.no_tag_output {
            false
        } else if cli.tag_output {
            true
        } else {
            cfg.tag_output.unwrap_or(true)
        };
        let mut env: Vec<(String, String)> = cfg.env.clone().unwrap_or_default().into_iter().collect();
        for (k, _) in &env {
            check_env_name(k)?;
        }
        for x in &cli.env {
            let (k, v) = match x.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = std::env::var(x).map_err(|_| format!("-x {x}: no such variable in this environment"))?;
                    (x.clone(), v)
                }
            };
            check_env_name(&k)?;
            env.retain(|(n, _)| *n != k);
            env.push((k, v));
        }
        // --net-hub is a way of the datagram path; vhost-user is the default otherwise.
        let net_backend = match cli.net_backend.or(cfg.net_backend) {
            Some(NetBackend::VhostUser) if cli.net_hub => return Err("--net-hub goes with --net-backend dgram".into()),
            Some(b) => b,
            None if cli.net_hub => NetBackend::Dgram,
            None => NetBackend::VhostUser,
        };
        Ok(Options {
            np,
            vms,
            ranks_per_vm,
            cpus_per_vm: cli.cpus_per_vm.or(cfg.cpus_per_vm),
            map_by: cli.map_by.or(cfg.map_by).unwrap_or(MapBy::Block),
            mem_mib,
            machine: cli.machine.or(cfg.machine).unwrap_or(Machine::Microvm),
            accel: cli.accel.or(cfg.accel).unwrap_or(Accel::Auto),
            timeout,
            tag_output,
            output_dir: cli.output_dir.or(cfg.output_dir),
            dry_run: cli.dry_run,
            qemu: cli.qemu.or(cfg.qemu),
            spin: cli.spin.or(cfg.spin),
            net_hub: cli.net_hub,
            net_backend,
            env,
            image: cli.image,
            args: cli.args,
        })
    }
}

fn check_env_name(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("-x {k:?}: a variable name is letters, digits and _"))
    }
}

/// `256M`, `1G`, `1536` (MiB, like QEMU's -m), `512MiB`; must lie within
/// [MIN_RAM, RAM_MAP_LIMIT].
pub fn parse_mem(s: &str) -> Result<u64, String> {
    use toro_abi::layout::{MIN_RAM, RAM_MAP_LIMIT};
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let num_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (num, unit) = lower.split_at(num_end);
    let n: u64 = num.parse().map_err(|_| format!("--mem {s:?}: want a size such as 256M or 1G"))?;
    let mib = match unit.trim() {
        "" | "m" | "mb" | "mib" => Some(n),
        "g" | "gb" | "gib" => n.checked_mul(1024),
        "k" | "kb" | "kib" => Some(n / 1024),
        _ => return Err(format!("--mem {s:?}: want a size such as 256M or 1G")),
    }
    .ok_or(format!("--mem {s:?} is too large"))?;
    let min = MIN_RAM.div_ceil(1 << 20);
    let max = RAM_MAP_LIMIT >> 20;
    if mib < min || mib > max {
        return Err(format!("--mem {s}: a VM needs between {min}M and {max}M"));
    }
    Ok(mib)
}

/// `90`, `90s`, `1.5`, `2m`, `1h`; `0` means no timeout.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("--timeout {s:?}: want seconds such as 90, 90s, 2m"))?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e9 {
        return Err(format!("--timeout {s:?}: want seconds such as 90, 90s, 2m"));
    }
    Ok((v > 0.0).then(|| Duration::from_secs_f64(v * mult)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn np_rewrite_stops_at_the_image() {
        assert_eq!(rewrite_np(args("p -np 4 app.elf -np 3")), args("p --np 4 app.elf -np 3"));
        assert_eq!(rewrite_np(args("p --vms 2 -np 4 a")), args("p --vms 2 --np 4 a"));
        assert_eq!(rewrite_np(args("p -x -np -np 2 a")), args("p -x -np --np 2 a"));
        assert_eq!(rewrite_np(args("p -np=2 a")), args("p --np=2 a"));
    }

    #[test]
    fn parses_mpirun_style() {
        let cli = Cli::try_parse_from(rewrite_np(args("toro-mpirun -np 4 --vms 2 -x A=1 -x B=2 --vms 2 app.elf -v --n 3"))).unwrap();
        let o = Options::from_cli(cli).unwrap();
        assert_eq!((o.np, o.vms), (4, Some(2)));
        assert_eq!(o.env, vec![("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())]);
        assert_eq!(o.args, args("-v --n 3"));
        assert!(o.tag_output);
        assert_eq!(o.mem_mib, DEFAULT_MEM_MIB);
        let cli = Cli::try_parse_from(args("toro-mpirun -n 1 --no-tag-output a")).unwrap();
        assert!(!Options::from_cli(cli).unwrap().tag_output);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_mem("256M"), Ok(256));
        assert_eq!(parse_mem("1G"), Ok(1024));
        assert_eq!(parse_mem("512"), Ok(512));
        assert_eq!(parse_mem("3G"), Ok(3072));
        assert!(parse_mem("4G").is_err());
        assert!(parse_mem("32M").is_err());
        assert!(parse_mem("lots").is_err());
        assert_eq!(parse_duration("90"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_duration("2m"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(parse_duration("0.5s"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(parse_duration("0"), Ok(None));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn env_names() {
        assert!(check_env_name("OMP_NUM_THREADS").is_ok());
        assert!(check_env_name("1X").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_env_name("").is_err());
    }
}
