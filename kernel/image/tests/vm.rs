//! VM tests of the kernel and the runtime: real QEMU, microvm (and q35
//! once), under TCG and, where /dev/kvm can run a VM, KVM.

use toro_image::vmtest::{accels, image, kernel_only, Accel, Vm};
use toro_abi::status;

fn hello() -> std::path::PathBuf {
    image("hello", "hello")
}

fn selftest() -> std::path::PathBuf {
    image("toro-selftest", "selftest")
}

#[test]
fn hello_runs_on_every_core() {
    for accel in accels() {
        for smp in [1, 2, 4] {
            let run = Vm::new(&hello(), accel).smp(smp).append(&format!("cpus={smp}")).run();
            run.assert_status(status::OK);
            for core in 0..smp {
                let line = run.assert_line(&format!("hello from core {core} of {smp}:"));
                assert!(line.ends_with("exact"), "{accel:?}: {line}");
            }
            eprintln!("{accel:?} smp={smp}: hello in {:?}", run.elapsed);
        }
    }
}

/// The same floating-point expressions the selftest app evaluates.
fn host_fp_bits() -> String {
    let dot: f64 = (1..=1000).map(|i| i as f64 / 7.0).map(|x| x * x).sum();
    let v = [libm::sqrt(2.0), dot, 1.0 / 3.0, libm::fma(0.1, 0.2, 0.3), libm::exp(1.0), libm::sin(1.0),
             libm::log(10.0), libm::pow(1.1, 2.5)];
    v.iter().map(|x| format!("{:016x}", x.to_bits())).collect::<Vec<_>>().join(" ")
}

#[test]
fn selftest_passes_on_1_2_4_cores() {
    let fp = host_fp_bits();
    for accel in accels() {
        for smp in [1, 2, 4] {
            let run = Vm::new(&selftest(), accel).smp(smp).append(&format!("cpus={smp}")).run();
            run.assert_status(status::OK);
            run.assert_line("selftest: all passed");
            for core in 0..smp {
                run.assert_line(&format!("core {core} reporting (asked for {core})"));
            }
            run.assert_line(&format!("fp bits {fp}"));
            run.assert_line("heap: 100000 cross-core alloc/free pairs, pools back to");
            let tour: Vec<String> = (0..smp).chain([0]).map(|c| c.to_string()).collect();
            run.assert_line(&format!("migrated through cores [{}]", tour.join(", ")));
            run.assert_line(&format!("block/wake: 2000 round trips core 0 <-> core {}", smp - 1));
            eprintln!("{accel:?} smp={smp}: selftest in {:?}", run.elapsed);
        }
    }
}

#[test]
fn q35_boots_without_a_cpu_count_hint() {
    // No cpus= on the command line: the kernel counts CPUs from the MADT.
    let run = Vm::new(&hello(), Accel::Tcg).machine("q35").smp(2).append("verbose").run();
    run.assert_status(status::OK);
    run.assert_line("toro: 2 cores");
    run.assert_line("hello from core 1 of 2:");
}

#[test]
fn microvm_counts_cpus_from_the_madt_too() {
    let run = Vm::new(&hello(), Accel::Tcg).smp(2).append("verbose").run();
    run.assert_status(status::OK);
    run.assert_line("toro: 2 cores");
    run.assert_line("console virtio");
    run.assert_line("hello from core 1 of 2:");
}

#[test]
fn without_a_virtio_console_output_goes_through_the_kernel() {
    for accel in accels() {
        let run = Vm::new(&selftest(), accel).smp(2).append("cpus=2 verbose").serial_console().run();
        run.assert_status(status::OK);
        run.assert_line("console serial");
        run.assert_line("selftest: all passed");
        let run = Vm::new(&selftest(), accel).smp(2).append("cpus=2 -- panic").serial_console().run();
        run.assert_status(status::PANIC);
        run.assert_line("deliberate panic from core 1");
    }
}

#[test]
fn a_panic_ends_the_vm_with_the_message() {
    for accel in accels() {
        let run = Vm::new(&selftest(), accel).smp(2).append("cpus=2 -- panic").run();
        run.assert_status(status::PANIC);
        let line = run.assert_line("toro: panic on core 1, rank 0, at kernel/selftest/src/main.rs:");
        assert!(line.ends_with(": deliberate panic from core 1"), "{line}");
    }
}

#[test]
fn a_null_write_is_a_page_fault_naming_core_and_address() {
    for accel in accels() {
        let run = Vm::new(&selftest(), accel).smp(2).append("cpus=2 -- null-write").run();
        run.assert_status(status::USER_FAULT);
        run.assert_line("toro: core 1: page fault (#PF) in the application (ring 3): write at address 0x0 (page not present), rip 0x4");
    }
}

#[test]
fn an_app_write_to_kernel_memory_is_refused() {
    for accel in accels() {
        let run = Vm::new(&selftest(), accel).smp(2).append("cpus=2 -- kernel-write").run();
        run.assert_status(status::USER_FAULT);
        run.assert_line("toro: core 1: page fault (#PF) in the application (ring 3): write at address 0x100000 (protection violation)");
    }
}

#[test]
fn a_stack_overflow_hits_the_guard_page() {
    let run = Vm::new(&selftest(), Accel::Tcg).smp(2).append("cpus=2 -- stack-overflow").run();
    run.assert_status(status::USER_FAULT);
    run.assert_line("(stack overflow: guard page of a thread stack)");
}

#[test]
fn the_app_status_is_the_vm_status() {
    let run = Vm::new(&selftest(), Accel::Tcg).append("-- exit-code 7").run();
    run.assert_status(7);
    run.assert_line("toro: rank 0 returned 7");
}

#[test]
fn several_ranks_share_the_cores() {
    // Four main instances on two vCPUs: two cooperative rank threads per core.
    let run = Vm::new(&hello(), Accel::Tcg).smp(2).append("cpus=2 ranks=0-3").run();
    run.assert_status(status::OK);
    for rank in 0..4 {
        run.assert_line(&format!("[rank {rank}] hello from core 1 of 2:"));
    }
}

#[test]
fn the_kernel_alone_is_not_an_app() {
    let run = Vm::new(&kernel_only(), Accel::Tcg).run();
    run.assert_status(status::BAD_IMAGE);
    run.assert_line("toro: boot failed: no Toro application header at 0x400000");
}

#[test]
fn too_little_memory_is_reported() {
    let run = Vm::new(&hello(), Accel::Tcg).mem("40M").run();
    run.assert_status(status::BAD_MACHINE);
    run.assert_line("toro: boot failed: RAM ends at");
}

#[test]
fn toro_build_check_rejects_what_is_not_an_image() {
    let dir = std::env::temp_dir().join(format!("toro-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.elf");
    std::fs::write(&junk, b"this is not an ELF file").unwrap();
    let cases = [(junk.clone(), "not an ELF file"), (kernel_only(), "not a Toro application image"),
                 (dir.join("missing.elf"), "cannot read")];
    for (path, want) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toro-build")).arg("--check").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(want), "{err}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_toro-build")).arg("--check").arg(hello()).output().unwrap();
    assert!(ok.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_acpi_the_cpus_are_found_by_broadcast() {
    // microvm with acpi=off has no MADT, and no cpus= hint is given.
    let run = Vm::new(&hello(), Accel::Tcg).machine("microvm,acpi=off").smp(4).append("verbose").run();
    run.assert_status(status::OK);
    run.assert_line("toro: 4 cores");
    run.assert_line("hello from core 3 of 4:");
}
