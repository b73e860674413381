//! Time from `toro-mpirun` start to every rank in `main`, and to job exit,
//! for 1, 2 and 4 VMs (one rank and one vCPU each) under TCG and KVM,
//! beside `mpirun.openmpi -np 2 true` and bare QEMU (the same command line
//! the launcher gives VM 0 of a 1-VM job, without the launcher) — all
//! interleaved in one run so they see the same host load.
//!
//! ```text
//! cargo build --release -p toro-launcher --bin toro-mpirun --example boot_bench
//! target/release/examples/boot_bench [--runs 10] [--mpirun PATH] [--image IMAGE]
//! ```
//!
//! "In main" is when the launcher has printed every rank's first line: the
//! selftest app's `boot` scenario prints `selftest: in main` first thing.
//! The image is built (selftest app) unless `--image` is given.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use toro_launcher::plan::{MapBy, Plan, PlanInput};
use toro_launcher::qemu::{self, Accel, Machine, QemuSetup};

const MARK: &str = "selftest: in main";

struct Sample {
    main: Option<Duration>,
    exit: Duration,
}

enum Kind {
    Toro { vms: u32, accel: Accel },
    BareQemu { accel: Accel },
    OpenMpi,
}

struct Config {
    name: String,
    kind: Kind,
    samples: Vec<Sample>,
}

fn usage() -> ! {
    eprintln!("usage: boot_bench [--runs N] [--mpirun PATH-TO-toro-mpirun] [--image IMAGE.elf]");
    std::process::exit(2)
}

fn main() {
    let mut runs = 10usize;
    let mut mpirun: Option<PathBuf> = None;
    let mut image: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage()),
            "--mpirun" => mpirun = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--image" => image = Some(args.next().unwrap_or_else(|| usage()).into()),
            _ => usage(),
        }
    }
    // target/<profile>/examples/boot_bench -> target/<profile>/toro-mpirun
    let mpirun = mpirun.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current_exe");
        exe.parent().and_then(Path::parent).expect("target dir").join("toro-mpirun")
    });
    if !mpirun.exists() {
        eprintln!("{} missing: cargo build --release -p toro-launcher --bin toro-mpirun (or pass --mpirun)", mpirun.display());
        std::process::exit(2);
    }
    let image = image.unwrap_or_else(|| {
        let root = toro_image::build::default_root();
        let out = root.join("target/toro/bench-selftest.elf");
        let opts = toro_image::BuildOptions { root, package: "toro-selftest".into(), bin: Some("selftest".into()), output: Some(out) };
        toro_image::build_app(&opts).unwrap_or_else(|e| panic!("building the selftest image: {e}"))
    });
    toro_image::check_file(&image).unwrap_or_else(|e| panic!("{e}"));

    let mut accels = vec![Accel::Tcg];
    match qemu::kvm_usable() {
        Ok(()) => accels.push(Accel::Kvm),
        Err(e) => eprintln!("KVM not usable ({e}): TCG only"),
    }
    let openmpi = qemu::find_executable(Path::new("mpirun.openmpi"));
    let mut configs = Vec::new();
    for &accel in &accels {
        for vms in [1, 2, 4] {
            configs.push(Config { name: format!("toro-mpirun -np {vms} --vms {vms}, {}", accel.name()), kind: Kind::Toro { vms, accel }, samples: vec![] });
        }
        configs.push(Config { name: format!("bare QEMU, 1 VM, {}", accel.name()), kind: Kind::BareQemu { accel }, samples: vec![] });
    }
    match &openmpi {
        Some(_) => configs.push(Config { name: "mpirun.openmpi -np 2 true".into(), kind: Kind::OpenMpi, samples: vec![] }),
        None => eprintln!("mpirun.openmpi not found (apt-get install openmpi-bin): no Open MPI baseline"),
    }

    let load_before = loadavg();
    let started = Instant::now();
    for run in 0..runs {
        // Interleaved: every configuration once per round.
        for c in configs.iter_mut() {
            let s = match c.kind {
                Kind::Toro { vms, accel } => {
                    let mut cmd = Command::new(&mpirun);
                    cmd.args(["--accel", accel.name(), "-np", &vms.to_string(), "--vms", &vms.to_string()])
                        .arg(&image)
                        .arg("boot");
                    measure(cmd, vms as usize)
                }
                Kind::BareQemu { accel } => measure(bare_qemu(&image, accel), 1),
                Kind::OpenMpi => {
                    let mut cmd = Command::new(openmpi.as_ref().unwrap());
                    // SAFETY: geteuid has no preconditions.
                    #[allow(unsafe_code)]
                    if unsafe { libc::geteuid() } == 0 {
                        cmd.arg("--allow-run-as-root");
                    }
                    cmd.args(["--oversubscribe", "-np", "2", "true"]);
                    measure(cmd, 0)
                }
            };
            c.samples.push(s.unwrap_or_else(|e| panic!("{} (run {run}): {e}", c.name)));
        }
    }
    let took = started.elapsed();
    let load_after = loadavg();

    println!("{} runs per row, interleaved; {} host cores; load average before {load_before}, after {load_after}; {:.0} s in all",
             runs, std::thread::available_parallelism().map_or(0, |n| n.get()), took.as_secs_f64());
    println!();
    println!("| command | to every rank in main: median (min–max) | to exit: median (min–max) |");
    println!("|---|---|---|");
    for c in &configs {
        let mains: Vec<Duration> = c.samples.iter().filter_map(|s| s.main).collect();
        let exits: Vec<Duration> = c.samples.iter().map(|s| s.exit).collect();
        let main_col = if mains.is_empty() { "—".to_string() } else { stats(mains) };
        println!("| {} | {} | {} |", c.name, main_col, stats(exits));
    }
}

/// The QEMU command the launcher would run for a 1-VM, 1-rank job.
fn bare_qemu(image: &Path, accel: Accel) -> Command {
    let input = PlanInput {
        np: 1,
        vms: None,
        ranks_per_vm: None,
        cpus_per_vm: None,
        map_by: MapBy::Block,
        host_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        mem_mib: toro_launcher::cli::DEFAULT_MEM_MIB,
        job_id: "bench".into(),
        spin_ns: None,
        env: vec![],
        args: vec!["boot".into()],
    };
    let plan = Plan::new(&input).expect("plan");
    let setup = QemuSetup { qemu: qemu::find_qemu(None).expect("qemu"), machine: Machine::Microvm, accel, image: image.into(), net: qemu::NetBackend::Dgram };
    let args: Vec<OsString> = qemu::qemu_args(&setup, &plan, &plan.vms[0]);
    let mut cmd = Command::new(&setup.qemu);
    cmd.args(args);
    cmd
}

/// Runs `cmd`, timing the `ranks`-th line containing [`MARK`] and the exit.
fn measure(mut cmd: Command, ranks: usize) -> Result<Sample, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().unwrap();
    let mut main = None;
    let mut seen = 0;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains(MARK) {
            seen += 1;
            if seen == ranks {
                main = Some(t0.elapsed());
            }
        }
        lines.push(line);
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    let exit = t0.elapsed();
    // toro-mpirun and Open MPI exit 0; bare QEMU exits 1 for guest status 0.
    let ok = st.success() || (st.code() == Some(1) && lines.iter().any(|l| l == "toro: exit 0"));
    if !ok || seen != ranks {
        return Err(format!("{st}, {seen}/{ranks} ranks in main; output:\n{}", lines.join("\n")));
    }
    Ok(Sample { main, exit })
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = if v.len() % 2 == 1 { ms(v[v.len() / 2]) } else { (ms(v[v.len() / 2 - 1]) + ms(v[v.len() / 2])) / 2.0 };
    format!("{median:.0} ms ({:.0}–{:.0})", ms(v[0]), ms(v[v.len() - 1]))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
