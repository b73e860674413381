//! `toro-mpirun`: starts a Toro MPI job as a group of QEMU VMs on this host.
//!
//! Flow: parse and check everything (options, profile, image, QEMU,
//! accelerator, plan) before anything starts — bad input is one line and
//! exit code 2 — then either print the plan (`--dry-run`) or run it.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod hub;
pub mod image;
pub mod plan;
pub mod qemu;
pub mod run;
pub mod switch;
pub mod vhost_user;
#[doc(hidden)]
pub mod testutil;

use std::hash::{BuildHasher, Hasher};
use std::io::Write;

use clap::Parser;

use cli::{Cli, Options};
use plan::{Plan, PlanInput};
use qemu::{display_command, qemu_args, QemuSetup};

/// Overrides the random job id (tests, reproducible dry runs).
pub const JOB_ID_ENV: &str = "TORO_JOB_ID";

fn job_id() -> Result<String, String> {
    if let Ok(id) = std::env::var(JOB_ID_ENV) {
        let ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        return if ok { Ok(id) } else { Err(format!("{JOB_ID_ENV}={id:?}: want 1-32 letters, digits or -")) };
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    Ok(format!("{:08x}", h.finish() as u32))
}

fn host_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

struct Prepared {
    opts: Options,
    plan: Plan,
    setup: QemuSetup,
}

fn prepare(cli: Cli) -> Result<Prepared, String> {
    let opts = Options::from_cli(cli)?;
    image::check_image(&opts.image).map_err(|e| e.to_string())?;
    let input = PlanInput {
        np: opts.np,
        vms: opts.vms,
        ranks_per_vm: opts.ranks_per_vm,
        cpus_per_vm: opts.cpus_per_vm,
        map_by: opts.map_by,
        host_cores: host_cores(),
        mem_mib: opts.mem_mib,
        job_id: job_id()?,
        spin_ns: opts.spin,
        env: opts.env.clone(),
        args: opts.args.clone(),
    };
    let plan = Plan::new(&input)?;
    let qemu = qemu::find_qemu(opts.qemu.as_deref())?;
    let accel = qemu::resolve_accel(opts.accel)?;
    if !opts.dry_run && run::JobDir::path_for(&plan.job_id).exists() {
        return Err(format!("job {} already exists ({})", plan.job_id, run::JobDir::path_for(&plan.job_id).display()));
    }
    let setup = QemuSetup { qemu, machine: opts.machine, accel, image: opts.image.clone(), net: opts.net_backend };
    Ok(Prepared { opts, plan, setup })
}

/// The job plan and the command lines, as `--dry-run` prints them.
pub fn describe(plan: &Plan, setup: &QemuSetup, net_hub: bool) -> String {
    let mut s = String::new();
    s += &format!("job {}\n", plan.job_id);
    s += &format!(
        "world {} ranks, {} VM{}, map-by {}, machine {}, accel {}\n",
        plan.world,
        plan.vms.len(),
        if plan.vms.len() == 1 { "" } else { "s" },
        plan.map_by.name(),
        setup.machine.name(),
        setup.accel.name()
    );
    if plan.vms.len() > 1 {
        let (fd, limit) = (hub::QEMU_NET_FD, hub::MAX_FRAME);
        let link = if setup.net == qemu::NetBackend::VhostUser {
            let socket = vhost_user::socket_path(&run::JobDir::path_for(&plan.job_id), 0);
            let socket = socket.to_string_lossy().replace("vm-0.", "vm-K.");
            format!(
                "vhost-user back-end in toro-mpirun (guest RAM a shared memfd, VM K's QEMU connects to {socket}; frames copied from ring to ring)"
            )
        } else if hub::is_direct(plan.vms.len(), net_hub) {
            format!("one Unix datagram socket pair between the two QEMUs (fd {fd} in each; frames up to {limit} bytes)")
        } else {
            format!("L2 hub in toro-mpirun (a Unix datagram socket pair per VM, fd {fd} in QEMU; frames up to {limit} bytes)")
        };
        s += &format!("network: {link}, {}/{}\n", plan::IP_BASE, plan::IP_PREFIX);
    } else {
        s += "network: none (one VM)\n";
    }
    for vm in &plan.vms {
        s += &format!(
            "vm {}: ranks {}, {} vCPU{}, {}M",
            vm.index,
            plan::rank_list(&vm.ranks),
            vm.cpus,
            if vm.cpus == 1 { "" } else { "s" },
            vm.mem_mib
        );
        if plan.vms.len() > 1 {
            s += &format!(", mac {}, ip {}/{}", vm.mac_string(), vm.ip, plan::IP_PREFIX);
        }
        s += "\n";
    }
    for r in 0..plan.world {
        let (vm, core) = plan.location(r).expect("every rank is placed");
        s += &format!("rank {r}: vm {vm} core {core}\n");
    }
    for vm in &plan.vms {
        s += &format!("command vm {}: {}\n", vm.index, display_command(&setup.qemu, &qemu_args(setup, plan, vm)));
    }
    s
}

/// The whole program; returns the exit code.
pub fn main_with(argv: Vec<String>) -> i32 {
    let cli = match Cli::try_parse_from(cli::rewrite_np(argv)) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("toro-mpirun: error: {first} (see --help)");
            return run::EXIT_BAD_INPUT;
        }
    };
    let p = match prepare(cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("toro-mpirun: error: {e}");
            return run::EXIT_BAD_INPUT;
        }
    };
    if p.opts.dry_run {
        let _ = std::io::stdout().write_all(describe(&p.plan, &p.setup, p.opts.net_hub).as_bytes());
        return 0;
    }
    match run::run(&p.plan, &p.setup, &p.opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("toro-mpirun: error: {e}");
            run::EXIT_BAD_INPUT
        }
    }
}
